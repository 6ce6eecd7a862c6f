"""What every encoder promises, and the pooling arithmetic they share.

Pooling lives here, in small pure numpy functions, so that every encoder pools the same way and the tests can check
the arithmetic against a plain reference.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

from fusion.errors import InputError


@runtime_checkable
class Encoder(Protocol):
    """A frozen unimodal encoder: a batch of waveforms or strings in, float32 latents out."""

    name: str  # the name it was loaded by (a key of ENCODERS, a hub id or a folder)
    modality: str  # "audio" or "text"
    dim: int  # size of the pooled latent
    token_dim: int  # size of each token-level latent (`tokens=K`); differs from `dim` when a projection follows pooling
    sample_rate: int | None  # audio: the rate waveforms must have; None for text
    pooling: str  # how the pooled latent is made, e.g. "mean-over-sound-frames", "cls", "mean"

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        """Latents of a batch: (B, dim) pooled, or (B, tokens, token_dim) when `tokens` is given."""
        ...


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit vectors along `axis`; an all-zero vector stays zero instead of becoming NaN."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def check_tokens(tokens: int | None) -> None:
    """Refuse a token count that is not a positive integer."""
    if tokens is None:
        return
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise InputError(f"tokens must be a positive integer or None, got {tokens!r}")


def check_waveforms(batch: list, encoder_name: str) -> list[np.ndarray]:
    """1-D finite float32 arrays, or an InputError naming the encoder and the bad item."""
    if not isinstance(batch, (list, tuple)):
        raise InputError(f"{encoder_name}: batch must be a list of 1-D waveforms, got {type(batch).__name__}")
    out = []
    for i, wave in enumerate(batch):
        arr = np.asarray(wave, dtype=np.float32)
        if arr.ndim != 1:
            raise InputError(f"{encoder_name}: waveform {i} must be 1-D mono, got shape {arr.shape}")
        if arr.size == 0:
            raise InputError(f"{encoder_name}: waveform {i} has 0 samples")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{encoder_name}: waveform {i} holds NaN or inf")
        out.append(arr)
    return out


def check_texts(batch: list, encoder_name: str) -> list[str]:
    """A list of strings, or an InputError naming the encoder and the bad item."""
    if not isinstance(batch, (list, tuple)):
        raise InputError(f"{encoder_name}: batch must be a list of strings, got {type(batch).__name__}")
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise InputError(f"{encoder_name}: item {i} must be a string, got {type(text).__name__}")
    return list(batch)


def sound_frames(n_samples: int, sample_rate: int, frames_per_second: float, max_frames: int) -> int:
    """How many encoder frames hold a clip of `n_samples` (at least 1, at most the encoder's window)."""
    return int(min(max_frames, max(1, math.ceil(n_samples / sample_rate * frames_per_second - 1e-9))))


def segment_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """Split `n` frames into `k` contiguous, evenly sized, never-empty segments (frames repeat when n < k)."""
    edges = np.linspace(0.0, float(n), k + 1)
    bounds = []
    for i in range(k):
        start = min(int(math.floor(edges[i])), n - 1)
        stop = max(int(math.ceil(edges[i + 1])), start + 1)
        bounds.append((start, min(stop, n)))
    return bounds


def pool_frames(frames: np.ndarray, n: int, tokens: int | None) -> np.ndarray:
    """Pool the first `n` frames of one clip (T, D): their mean (D,), or `tokens` evenly spaced segment means (K, D)."""
    held = frames[:n]
    if tokens is None:
        return held.mean(axis=0).astype(np.float32)
    return np.stack([held[a:b].mean(axis=0) for a, b in segment_bounds(n, tokens)]).astype(np.float32)


def masked_mean(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of token states (B, T, D) over the positions where `mask` (B, T) is 1."""
    m = mask.astype(np.float32)[..., None]
    return ((states * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)).astype(np.float32)


def first_tokens(states: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """The first `k` token states (B, k, D) with padding positions and missing positions set to zero."""
    b, t, d = states.shape
    out = np.zeros((b, k, d), dtype=np.float32)
    keep = min(k, t)
    out[:, :keep] = states[:, :keep] * mask[:, :keep, None].astype(np.float32)
    return out
