"""A bank of captions with their text latents: "what the model heard" and the prompts of retrieve mode.

Stored as ``captions.json`` (list of strings) + ``latents.safetensors`` (``{"latents": (N, text_dim)}``), the
pooled text-encoder latents; they are mapped into the shared space by the text adapter at load time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fusion.cache import atomic_write_json
from fusion.errors import ModelUnavailableError


def save_caption_bank(folder: Path, captions: list[str], latents: torch.Tensor) -> Path:
    if len(captions) != len(latents):
        raise ValueError(f"got {len(captions)} captions but {len(latents)} latents")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.detach().to(torch.float16).contiguous()}, str(folder / "latents.safetensors"))
    atomic_write_json(folder / "captions.json", list(captions))
    return folder


def load_caption_bank(folder: str | Path) -> tuple[list[str], torch.Tensor]:
    folder = Path(folder)
    if not (folder / "captions.json").is_file() or not (folder / "latents.safetensors").is_file():
        raise ModelUnavailableError(f"no caption bank at {folder} (captions.json + latents.safetensors)")
    captions = json.loads((folder / "captions.json").read_text())
    latents = load_file(str(folder / "latents.safetensors"))["latents"].float()
    if len(captions) != len(latents):
        raise ModelUnavailableError(f"caption bank {folder}: {len(captions)} captions but {len(latents)} latents")
    return captions, latents


def nearest(points: torch.Tensor, bank: torch.Tensor, captions: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Top-k captions by cosine similarity for each (L2-normalised) point; ``bank`` is normalised too."""
    k = min(k, len(captions))
    scores, idx = (points @ bank.T).topk(k, dim=1)
    return [
        [(captions[j], round(float(s), 4)) for s, j in zip(row_s, row_i, strict=True)]
        for row_s, row_i in zip(scores.tolist(), idx.tolist(), strict=True)
    ]
