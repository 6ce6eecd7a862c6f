"""A bank of captions with their points in the shared space: "what the model heard" and retrieve mode's prompts.

Stored as ``captions.json`` (list of strings) + ``points.safetensors`` (``{"points": (N, shared_dim)}``, unit
norm, float16). The points come from the preset's own text adapter, so a bank belongs to one adapters checkpoint
and is rebuilt with it; storing points rather than encoder latents keeps the bank small when the text tower
takes token latents (16 x 384 numbers per caption instead of 512).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fusion.cache import atomic_write_json
from fusion.errors import CheckpointError, MissingModelError

POINTS_FILE = "points.safetensors"


def save_caption_bank(folder: Path, captions: list[str], points: torch.Tensor) -> Path:
    """Write captions and their (unit-norm) shared-space points; see ``FuseMixAdapters.embed``."""
    if points.ndim != 2 or len(captions) != len(points):
        raise ValueError(
            f"need one point (row) per caption: got {len(captions)} captions, points {tuple(points.shape)}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{POINTS_FILE}.tmp"
    save_file({"points": points.detach().to(torch.float16).contiguous()}, str(tmp))
    tmp.replace(folder / POINTS_FILE)
    atomic_write_json(folder / "captions.json", list(captions))
    return folder


def load_caption_bank(folder: str | Path) -> tuple[list[str], torch.Tensor]:
    """Captions and their unit-norm points; a missing or damaged file is a one-line error naming it."""
    from generator.preset_parts import check_caption_bank

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingModelError(f"no caption bank at {folder} (captions.json + {POINTS_FILE})")
    captions = check_caption_bank(folder)
    try:
        points = load_file(str(folder / POINTS_FILE))["points"].float()
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{folder / POINTS_FILE}: not readable ({err})") from None
    return captions, torch.nn.functional.normalize(points, dim=-1)


def nearest(points: torch.Tensor, bank: torch.Tensor, captions: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Top-k captions by cosine similarity for each (L2-normalised) point; ``bank`` is normalised too."""
    k = min(k, len(captions))
    scores, idx = (points @ bank.T).topk(k, dim=1)
    return [
        [(captions[j], round(float(s), 4)) for s, j in zip(row_s, row_i, strict=True)]
        for row_s, row_i in zip(scores.tolist(), idx.tolist(), strict=True)
    ]


def group_heads(texts: Sequence[str], groups: Sequence[str]) -> dict[str, str]:
    """Each group's first caption, groups in order of first appearance: a grouped caption cache's canonical
    phrasing of each scene (the anchors of `train-translator --canonical-bank`)."""
    heads: dict[str, str] = {}
    for text, group in zip(texts, groups, strict=True):
        heads.setdefault(group, text)
    return heads
