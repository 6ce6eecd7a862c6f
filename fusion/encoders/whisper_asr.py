"""Whisper speech recognition through CTranslate2: the decoder the transcript encoder and the ASR cascade share.

``Transcriber`` loads a CTranslate2 Whisper (the offline tiny.en by default) once and turns 16 kHz clips into text;
``AsrSettings`` are the decoding settings (every one that changes a transcript is part of a cache key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fusion.errors import InputError, MissingModelError

SAMPLE_RATE = 16_000
# <|startoftranscript|><|notimestamps|>: the decoding prompt of the English-only Whisper models.
ENGLISH_ONLY_PROMPT: tuple[int, ...] = (50257, 50362)


@dataclass(frozen=True)
class AsrSettings:
    """How clips are transcribed; every field is part of the transcript cache key."""

    model: str = "whisper-tiny.en"  # the offline CTranslate2 tiny.en, or a CTranslate2 Whisper folder
    beam_size: int = 5  # beam search width (1 = greedy)
    pad_seconds: float = 0.5  # silence added at both ends: roughly halves Whisper's WER on short synthetic clips
    max_length: int = 96  # most tokens per transcript (captions are far shorter; stops runaway loops)
    no_repeat_ngram_size: int = 3  # forbids the repetition loops Whisper falls into on unclear speech
    compute_type: str = "int8"  # CTranslate2 weights type on CPU
    batch_size: int = 8  # clips per decoding call
    # clips that fit (padded) are decoded over this window instead of 30 s: ~3x faster on CPU and a lower WER on the
    # demo world's test clips (BENCHMARKS.md); None: always 30 s
    short_window_s: float | None = 10.0

    def key(self) -> dict:
        """The settings that change a transcript (batch size does not)."""
        out = asdict(self)
        out.pop("batch_size")
        return out


def _model_folder(model: str) -> Path:
    if model == "whisper-tiny.en":
        from fusion.offline import whisper_tiny_en_ct2

        return whisper_tiny_en_ct2()
    folder = Path(model)
    if not (folder / "model.bin").is_file() or not (folder / "tokenizer.json").is_file():
        raise MissingModelError(
            f"ASR model {model!r}: expected 'whisper-tiny.en' or a CTranslate2 Whisper folder with "
            "model.bin and tokenizer.json"
        )
    return folder


class Transcriber:
    """A CTranslate2 Whisper model with its tokenizer and feature extractor, loaded once."""

    def __init__(self, settings: AsrSettings | None = None, device: str = "cpu") -> None:
        import ctranslate2
        from tokenizers import Tokenizer
        from transformers import WhisperFeatureExtractor

        self.settings = settings or AsrSettings()
        if self.settings.beam_size < 1:
            raise InputError(f"beam_size must be >= 1, got {self.settings.beam_size}")
        folder = _model_folder(self.settings.model)
        ct2_device = "cuda" if device.startswith("cuda") else "cpu"
        compute = self.settings.compute_type if ct2_device == "cpu" else "float16"
        try:
            self.model = ctranslate2.models.Whisper(str(folder), device=ct2_device, compute_type=compute)
        except (RuntimeError, ValueError, OSError) as err:
            raise MissingModelError(f"cannot load ASR model {self.settings.model!r} from {folder}: {err}") from err
        self.ctranslate2 = ctranslate2
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        n_mels = int(getattr(self.model, "n_mels", 80))
        self.features = WhisperFeatureExtractor(feature_size=n_mels)
        if not self.model.is_multilingual:
            self.prompt = list(ENGLISH_ONLY_PROMPT)
        else:  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
            self.prompt = [self.tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                                    "<|notimestamps|>")]  # fmt: skip

    def transcribe_waves(self, waves: Sequence[np.ndarray]) -> list[str]:
        """Transcripts of 16 kHz mono float32 clips (each padded with silence first).

        With ``short_window_s`` a clip that fits in it is decoded over that window instead of Whisper's 30 s (the
        encoder's positional table is cut, as ``whisper-tiny.en-10s`` does); the window depends on the clip alone,
        so a transcript does not depend on the batch it came in.
        """
        if not waves:
            return []
        pad = np.zeros(int(round(self.settings.pad_seconds * SAMPLE_RATE)), np.float32)
        padded = [np.concatenate([pad, np.asarray(w, np.float32).ravel(), pad]) for w in waves]
        features = self.features(padded, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        short = self.settings.short_window_s
        frames = features.shape[-1]
        if short is not None:  # 100 mel frames per second
            frames_of = [int(short * 100) if len(p) <= short * SAMPLE_RATE else frames for p in padded]
        else:
            frames_of = [frames] * len(padded)
        texts: list[str] = [""] * len(padded)
        for window in sorted(set(frames_of)):
            rows = [i for i, f in enumerate(frames_of) if f == window]
            for i, text in zip(rows, self._decode(features[rows, :, :window]), strict=True):
                texts[i] = text
        return texts

    def _decode(self, features: np.ndarray) -> list[str]:
        results = self.model.generate(
            self.ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
            [self.prompt] * len(features),
            beam_size=self.settings.beam_size,
            max_length=self.settings.max_length,
            no_repeat_ngram_size=self.settings.no_repeat_ngram_size,
        )
        return [self.tokenizer.decode(r.sequences_ids[0]).strip() for r in results]
