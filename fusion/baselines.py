"""Baselines for the retrieval table, each with ``encode({"audio": ..., "text": ...})`` like FuseMixAdapters.

- ``linear``: least-squares (lightly ridge-regularised) affine map audio -> text space; text stays as it is.
- ``procrustes``: orthogonal map audio -> text space after centring (audio zero-padded, or PCA-projected, to the
  text width when the widths differ).
- ``random``: FuseMix adapters with random initial weights (what training adds).
- ``asr-cascade``: what a user would do without FuseMix: Whisper tiny.en transcribes each clip (beam 5), the text
  encoder (MiniLM) embeds transcript and captions, and captions are ranked by cosine (``asr_cascade_similarity``).
  It reads the audio files, not the latents, and is not fitted.
The latent baselines are fitted on training pairs: every caption with its clip's audio latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fusion.adapters import FuseMixAdapters

METHODS = ("fusemix", "linear", "procrustes", "random", "asr-cascade")
CASCADE_TEXT_ENCODER = "all-MiniLM-L6-v2"


def _pooled(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"the {name} baseline takes pooled latents (rows, dim), got shape {tuple(x.shape)}")
    return x.double()


class MappedAudio(nn.Module):
    """Audio mapped by ``(x - audio_mean) @ weight + bias``; text centred by ``text_mean``; both L2-normalised."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, audio_mean: torch.Tensor, text_mean: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("audio_mean", audio_mean.float())
        self.register_buffer("text_mean", text_mean.float())

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        if "audio" in inputs:
            mapped = (inputs["audio"].float() - self.audio_mean) @ self.weight + self.bias
            out["audio"] = nn.functional.normalize(mapped, dim=-1)
        if "text" in inputs:
            out["text"] = nn.functional.normalize(inputs["text"].float() - self.text_mean, dim=-1)
        return out


def fit_linear(audio: torch.Tensor, text: torch.Tensor, ridge: float = 1e-4) -> MappedAudio:
    """Least squares ``text ≈ (audio - mean) W + b`` over paired rows; ``ridge`` x mean variance keeps it stable."""
    a, t = _pooled(audio, "linear"), _pooled(text, "linear")
    a_mean, t_mean = a.mean(0), t.mean(0)
    ac, tc = a - a_mean, t - t_mean
    gram = ac.T @ ac
    reg = ridge * gram.diagonal().mean().clamp(min=1e-12) * torch.eye(len(gram), dtype=gram.dtype)
    weight = torch.linalg.solve(gram + reg, ac.T @ tc)
    return MappedAudio(weight, torch.zeros(t.shape[1], dtype=t.dtype), a_mean, t_mean)


def fit_procrustes(audio: torch.Tensor, text: torch.Tensor) -> MappedAudio:
    """Orthogonal ``R`` minimising ``|A R - T|`` on centred, unit-scale latents; widths reconciled first."""
    a, t = _pooled(audio, "procrustes"), _pooled(text, "procrustes")
    a_mean, t_mean = a.mean(0), t.mean(0)
    ac, tc = a - a_mean, t - t_mean
    da, dt = a.shape[1], t.shape[1]
    if da > dt:  # project audio onto its top principal directions
        basis = torch.linalg.svd(ac, full_matrices=False).Vh[:dt].T  # (da, dt)
    else:  # zero-pad audio to the text width
        basis = torch.eye(da, dt, dtype=a.dtype)
    ap = ac @ basis
    ap = ap / ap.norm(dim=1).mean().clamp(min=1e-12)
    tc = tc / tc.norm(dim=1).mean().clamp(min=1e-12)
    u, _, vh = torch.linalg.svd(ap.T @ tc)
    weight = basis @ (u @ vh)
    return MappedAudio(weight, torch.zeros(dt, dtype=a.dtype), a_mean, t_mean)


def random_adapters(audio_dim: int, text_dim: int, seed: int = 0, **config) -> FuseMixAdapters:
    """Untrained adapters (same architecture as the trained ones when ``config`` is theirs)."""
    torch.manual_seed(seed)
    return FuseMixAdapters(audio_dim=audio_dim, text_dim=text_dim, **config).eval()


def asr_cascade_similarity(
    audio_paths: Sequence[str | Path],
    captions: Sequence[str],
    settings=None,
    text_encoder: str = CASCADE_TEXT_ENCODER,
    transcripts_cache: str | Path | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[str]]:
    """(num_captions, num_clips) cosines between captions and clip transcripts, and the transcripts.

    ``settings`` is a ``fusion.asr.AsrSettings`` (default: Whisper tiny.en, beam 5, 0.5 s padding); transcripts are
    reused from and saved to ``transcripts_cache`` (a JSON file) when given.
    """
    from fusion.asr import cascade_similarity, transcribe
    from fusion.encoders import load_encoder

    transcripts = transcribe(audio_paths, settings=settings, cache=transcripts_cache, progress=progress)
    sim = cascade_similarity(transcripts, captions, load_encoder(text_encoder))  # (clips, captions)
    return torch.from_numpy(sim.T.copy()), transcripts
