"""Concatenation of two audio encoders (`concat:A+B`), as FuseMix concatenates HTS-AT and Whisper latents.

Waveforms come at the first encoder's rate and are resampled for the second. Each part is L2-normalised before
concatenation so that neither dominates by scale (token latents: each token of each part).
"""

from __future__ import annotations

import numpy as np

from fusion.encoders.base import Encoder, check_tokens, check_waveforms, l2_normalize
from fusion.errors import InputError

PREFIX = "concat:"


class ConcatEncoder:
    """Two audio encoders side by side: dim = dim(A) + dim(B)."""

    modality = "audio"

    def __init__(self, name: str, first: Encoder, second: Encoder) -> None:
        for part in (first, second):
            if part.modality != "audio":
                raise InputError(f"{name}: concatenation takes audio encoders, {part.name!r} is {part.modality}")
        self.name = name
        self.parts = (first, second)
        self.sample_rate = first.sample_rate
        self.dim = first.dim + second.dim
        self.token_dim = first.token_dim + second.token_dim
        self.pooling = f"concat({first.pooling}, {second.pooling}), each l2"

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        """Both encoders' latents, each L2-normalised, concatenated along the last axis."""
        import librosa

        check_tokens(tokens)
        waves = check_waveforms(batch, self.name)
        first, second = self.parts
        a = first.encode(waves, tokens=tokens)
        if second.sample_rate != self.sample_rate:
            waves = [
                librosa.resample(w, orig_sr=self.sample_rate, target_sr=second.sample_rate).astype(np.float32)
                for w in waves
            ]
        b = second.encode(waves, tokens=tokens)
        return np.concatenate([l2_normalize(a), l2_normalize(b)], axis=-1).astype(np.float32)


def split_concat_name(name: str) -> tuple[str, str]:
    """`concat:A+B` -> (A, B); a ValueError naming the argument otherwise."""
    body = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    parts = [p.strip() for p in body.split("+")]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"encoder {name!r}: a concatenation is written 'concat:A+B' with two encoder names")
    return parts[0], parts[1]
