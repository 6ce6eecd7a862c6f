"""CLAP audio tower (HTS-AT) from transformers: any `laion/clap-htsat-*` id or a folder holding a CLAP checkpoint.

Only the audio tower and its projection are loaded (the text tower of a full ClapModel checkpoint is skipped). The
pooled latent is CLAP's own L2-normalised audio embedding, the one it compares with text. Token latents are the last
HTS-AT feature map averaged over frequency and pooled evenly along time. CLAP's feature extractor repeat-pads short
clips (no silence to exclude) and picks random chunks of clips longer than its 10 s window; that choice is seeded
so the same clip always gives the same latent.
"""

from __future__ import annotations

import numpy as np

from fusion.encoders.base import check_tokens, check_waveforms, l2_normalize, pool_frames
from fusion.encoders.hub import from_pretrained, from_pretrained_strict


class ClapAudioEncoder:
    """HTS-AT audio embeddings at 48 kHz."""

    modality = "audio"
    pooling = "htsat-avgpool+projection+l2"
    batch_size = 8

    def __init__(self, name: str, device: str = "cpu") -> None:
        import torch
        from transformers import ClapAudioModelWithProjection, ClapFeatureExtractor

        self.name = name
        self.torch = torch
        self.device = device
        self.model = from_pretrained_strict(ClapAudioModelWithProjection, name).to(device).eval()
        self.feature_extractor = from_pretrained(ClapFeatureExtractor, name)
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.dim = int(self.model.config.projection_dim)
        self.token_dim = int(self.model.audio_model.audio_encoder.num_features)
        # A fused model reads 4 mel views of a long clip; an unfused one reads one (random, seeded) 10 s crop.
        self.truncation = "fusion" if self.model.config.enable_fusion else "rand_trunc"

    def _features(self, waves: list[np.ndarray]) -> dict:
        # The extractor draws random chunks of long clips from numpy's global RNG: seed it, then put it back.
        state = np.random.get_state()
        try:
            np.random.seed(0)
            feats = self.feature_extractor(
                waves, sampling_rate=self.sample_rate, truncation=self.truncation, return_tensors="pt"
            )
        finally:
            np.random.set_state(state)
        return {k: v.to(self.device) for k, v in feats.items() if k in ("input_features", "is_longer")}

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        """(B, dim) unit-norm CLAP audio embeddings, or (B, tokens, token_dim) time-pooled HTS-AT features."""
        check_tokens(tokens)
        waves = check_waveforms(batch, self.name)
        if not waves:
            return np.zeros((0, self.dim) if tokens is None else (0, tokens, self.token_dim), np.float32)
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(waves), self.batch_size):
                inputs = self._features(waves[start : start + self.batch_size])
                result = self.model(**inputs)
                if tokens is None:
                    out.append(l2_normalize(result.audio_embeds.float().cpu().numpy()))
                    continue
                fmap = result.last_hidden_state.float().cpu().numpy()  # (B, C, F, T)
                seq = fmap.mean(axis=2).transpose(0, 2, 1)  # (B, T, C)
                out.append(np.stack([pool_frames(s, s.shape[0], tokens) for s in seq]))
        return np.concatenate(out).astype(np.float32)


def load_clap(name: str, device: str = "cpu") -> ClapAudioEncoder:
    """A CLAP audio tower by hub id or folder."""
    return ClapAudioEncoder(name, device=device)
