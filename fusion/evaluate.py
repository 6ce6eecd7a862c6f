"""Retrieval evaluation of anything with ``encode({"audio": ..., "text": ...})``: FuseMix or a baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.cache import load_latents
from fusion.metrics import recall_curve, retrieval_metrics
from fusion.pairs import Pairing, pair_by_clip


@dataclass
class EvalPairs:
    """Evaluation data: one audio row per clip, all captions, and each caption's clip index."""

    audio: torch.Tensor  # (num_clips, ...) float32
    text: torch.Tensor  # (num_captions, dim) float32
    caption_clip: torch.Tensor  # (num_captions,) long
    pairing: Pairing


def load_pairs(audio_dir: str | Path, text_dir: str | Path) -> EvalPairs:
    """Load two caches and pair them by clip id (errors name the folders)."""
    audio = load_latents(Path(audio_dir))
    text = load_latents(Path(text_dir))
    pairing = pair_by_clip(audio, text, audio_name=str(audio_dir), text_name=str(text_dir))
    return EvalPairs(
        audio=torch.from_numpy(np.asarray(audio.array[pairing.audio_rows], dtype=np.float32)),
        text=torch.from_numpy(np.asarray(text.array[pairing.caption_rows], dtype=np.float32)),
        caption_clip=torch.from_numpy(pairing.caption_clip.astype(np.int64)),
        pairing=pairing,
    )


@torch.no_grad()
def encode_in_batches(model, modality: str, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Embed a whole array with ``model.encode`` a batch at a time, in eval mode, on the model's device."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device if hasattr(model, "parameters") else "cpu"
    parts = [
        model.encode({modality: x[i : i + batch_size].to(device)})[modality].float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    if was_training:
        model.train()
    return torch.cat(parts)


def similarity(model, pairs: EvalPairs) -> torch.Tensor:
    """(num_captions, num_clips) cosine similarities in the model's shared space."""
    audio = encode_in_batches(model, "audio", pairs.audio)
    text = encode_in_batches(model, "text", pairs.text)
    return text @ audio.T


def evaluate(model, pairs: EvalPairs, curve: bool = False) -> dict:
    """Metrics dict (see fusion.metrics); with ``curve`` also R@k for k = 1..50 under key ``"curve"``."""
    sim = similarity(model, pairs)
    out = retrieval_metrics(sim, pairs.caption_clip)
    if curve:
        out["curve"] = recall_curve(sim, pairs.caption_clip)
    return out


def plot_recall_curves(curves: dict[str, dict], path: str | Path) -> Path:
    """Write a PNG of R@k (k = 1..50) per method, text->audio and audio->text side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction in zip(axes, ("text_to_audio", "audio_to_text"), strict=True):
        for name, curve in curves.items():
            ax.plot(curve["k"], [100 * v for v in curve[direction]], label=name)
        ax.set_title(direction.replace("_", " "))
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("R@k (%)")
    axes[1].legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
