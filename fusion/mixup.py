"""FuseMix: mixup in latent space with one λ shared by both modalities, so mixed pairs stay pairs."""

from __future__ import annotations

import numpy as np
import torch


def sample_lambda(alpha: float, generator: torch.Generator) -> float:
    """One draw of λ ~ Beta(α, α), taken from ``generator`` (torch has no seeded Beta sampler)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def fusemix_mix(
    audio: torch.Tensor, text: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix the first half of the batch with the second: ``z = λ·z1 + (1-λ)·z2`` for both modalities, same λ.

    Works on (B, D) and token-level (B, K, D) latents alike. Returns B // 2 mixed pairs (an odd last row is
    dropped). Pairs stay aligned because row i of each output mixes rows i and i + B//2 of its input.
    """
    if len(audio) != len(text):
        raise ValueError(f"audio and text batches must have one length, got {len(audio)} and {len(text)}")
    half = len(audio) // 2
    if half == 0:
        raise ValueError(f"fusemix_mix needs a batch of at least 2 pairs, got {len(audio)}")
    lam = sample_lambda(alpha, generator)
    mixed_audio = lam * audio[:half] + (1.0 - lam) * audio[half : 2 * half]
    mixed_text = lam * text[:half] + (1.0 - lam) * text[half : 2 * half]
    return mixed_audio, mixed_text
