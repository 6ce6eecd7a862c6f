"""Building blocks shared by the adapter towers (fusion.adapters), the sparse token tower (fusion.sparse) and the
translator (generator.translator).

They live apart so that those modules import them without importing each other.

    tower = build_tower(in_dim=384, out_dim=512, num_blocks=2, expansion=4, dropout=0.2)   # (B, 384) -> (B, 512)
    block = TokenBlock(dim=384, expansion=4, dropout=0.0)                                    # (B, k, 384) -> same
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLPBlock(nn.Module):
    """Pre-LN residual block ``x + W2·drop(GELU(W1·LN(x)))``."""

    def __init__(self, dim: int, expansion: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * expansion)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim * expansion, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


def build_tower(in_dim: int, out_dim: int, num_blocks: int, expansion: int, dropout: float) -> nn.Sequential:
    """N residual blocks at the input width, then LayerNorm and a linear projection to ``out_dim``."""
    blocks = [ResidualMLPBlock(in_dim, expansion, dropout) for _ in range(num_blocks)]
    return nn.Sequential(*blocks, nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))


def num_heads_for(dim: int, head_dim: int = 64) -> int:
    """Heads of ``head_dim`` channels when ``dim`` splits evenly into them, else one head."""
    return dim // head_dim if dim % head_dim == 0 and dim >= head_dim else 1


class TokenBlock(nn.Module):
    """Pre-LN transformer block over a small token set: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads_for(dim), dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * expansion), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * expansion, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))
