"""The demo image model's own text encoder: all-MiniLM-L6-v2 token states.

Plays the role CLIP's text encoder plays for Stable Diffusion: the UNet is conditioned on its
token states, and the translator learns to produce the same states from the shared space.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fusion.errors import ModelUnavailableError
from fusion.offline import minilm_l6_v2

logger = logging.getLogger(__name__)

MAX_TOKENS = 16  # demo-world captions are at most 14 word pieces with [CLS]/[SEP]


class TokenStateEncoder:
    """Tokenizer + BERT-style encoder returning (B, max_tokens, dim) last hidden states, padded to a fixed length."""

    def __init__(self, folder: str | Path | None = None, max_tokens: int = MAX_TOKENS, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder) if folder is not None else minilm_l6_v2()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder), use_safetensors=True).to(device).eval()
        except OSError as err:
            raise ModelUnavailableError(f"cannot load the image model's text encoder from {folder}: {err}") from err
        self.max_tokens = max_tokens
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, got a single string")
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[i : i + batch_size],
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            out.append(self.model(**enc).last_hidden_state.float())
        if not out:
            return torch.zeros(0, self.max_tokens, self.dim)
        return torch.cat(out)
