"""Sparse-pooling tower for token-level latents (the Sparse Fusion Transformers idea).

A mean over an encoder's frames blurs the few frames that carry the content. This tower keeps only ``keep`` of the
K tokens of a clip before anything costly runs on them, so its cost grows with ``keep``, not K:

1. add a learned position embedding to each of the K tokens (so the kept ones remember where they were);
2. ``topk``: a linear scorer rates every token, the ``keep`` best are kept (in their original order) and each is
   multiplied by ``sigmoid(score)``, which lets the loss reach the scorer even though top-k itself has no gradient;
   ``slots``: ``keep`` learned queries cross-attend to all K tokens instead (soft pooling into slots);
3. ``token_blocks`` pre-LN transformer blocks (self-attention + MLP) over the kept tokens (default 1);
4. mean over them, then the usual residual MLP blocks, LayerNorm and projection to the shared space.

``keep = K`` in ``topk`` mode keeps every token (gated, nothing dropped): the "no sparsification" control.

``parts = P``: each latent holds P encoders' token states side by side (a ``concat:A+B`` cache, (K, P*D)); the
tower lays them out as P*K tokens of width D (all of A's, then all of B's), so attention pairs a transcript word
with any stretch of sound rather than with the one that happens to share its index. ``part_dropout`` (one
probability per part, training only) blanks at most one part of an item, so each part must carry the item on its
own: without it the adapters leaned on Whisper's states of the training voices and ignored the transcript (README).

    tower = SparsePoolTower(in_dim=384, out_dim=384, num_tokens=32, keep=4)
    tower(x)                                   # x: (B, 32, 384) -> (B, 384)
    tower.select(x)                            # kept tokens (B, 4, 384), indices (B, 4), gates (B, 4)
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.blocks import TokenBlock, build_tower, num_heads_for

SPARSE_MODES = ("topk", "slots")  # how a sparse tower keeps `keep` of its tokens; see the module docstring


class SparsePoolTower(nn.Module):
    """(B, K, D) token latents -> (B, out_dim): keep ``keep`` tokens, mix them, pool, then the FuseMix tower.

    Build it through ``FuseMixAdapters`` (or check a ``fusion.adapters.TowerConfig`` first): it does not re-check
    its arguments beyond one assert.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_tokens: int,
        keep: int,
        mode: str = "topk",
        num_blocks: int = 2,
        expansion: int = 4,
        dropout: float = 0.0,
        token_blocks: int = 1,
        parts: int = 1,
        part_dropout: tuple[float, ...] = (),
    ) -> None:
        super().__init__()
        # the arguments are checked once, with messages naming the modality, by fusion.adapters.TowerConfig.check
        assert mode in SPARSE_MODES and 1 <= keep <= num_tokens * parts and token_blocks >= 1, "see TowerConfig.check"
        assert in_dim % parts == 0 and len(part_dropout) in (0, parts), "see FuseMixAdapters"
        self.num_tokens, self.keep, self.mode, self.parts = num_tokens, keep, mode, parts
        self.part_dropout = tuple(float(p) for p in part_dropout)
        in_dim //= parts
        num_tokens *= parts
        self.position = nn.Parameter(torch.zeros(num_tokens, in_dim))
        nn.init.normal_(self.position, std=0.02)
        if mode == "topk":
            self.scorer = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, 1))
        else:
            self.slots = nn.Parameter(torch.randn(keep, in_dim) * in_dim**-0.5)
            self.slot_norm = nn.LayerNorm(in_dim)
            self.slot_attn = nn.MultiheadAttention(in_dim, num_heads_for(in_dim), dropout=dropout, batch_first=True)
        self.blocks = nn.Sequential(*[TokenBlock(in_dim, expansion, dropout) for _ in range(token_blocks)])
        self.head = build_tower(in_dim, out_dim, num_blocks, expansion, dropout)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P*K) scorer logits of the position-tagged tokens (``topk`` mode)."""
        if self.mode != "topk":
            raise ValueError(f"scores() is for sparse_mode 'topk', this tower uses {self.mode!r}")
        return self.scorer(self.layout(x) + self.position).squeeze(-1)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, P*D) -> (B, P*K, D): each part's K tokens in turn (identity for one part); checks the shape."""
        if x.ndim != 3 or x.shape[1] != self.num_tokens:
            raise ValueError(
                f"sparse tower takes token latents (batch, {self.num_tokens}, dim), got shape {tuple(x.shape)}"
            )
        if self.parts == 1:
            return x
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.parts, -1).transpose(1, 2).reshape(batch, self.parts * tokens, -1)

    def drop_parts(self, x: torch.Tensor) -> torch.Tensor:
        """Training only: item i loses part p (its tokens zeroed) with probability part_dropout[p], at most one."""
        if not self.training or not any(self.part_dropout):
            return x
        bounds = torch.tensor((0.0, *self.part_dropout), device=x.device).cumsum(0)
        draw = torch.rand(len(x), 1, device=x.device)
        part = torch.arange(x.shape[1], device=x.device) // self.num_tokens  # (P*K,) part of each token
        drop = (draw >= bounds[part]) & (draw < bounds[part + 1])  # (B, P*K)
        return x.masked_fill(drop.unsqueeze(-1), 0.0)

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The ``keep`` tokens that go on: (kept tokens (B, keep, D), their indices, their gates); slots: no indices."""
        tokens = self.drop_parts(self.layout(x)) + self.position
        if self.mode == "slots":
            h = self.slot_norm(tokens)
            query = self.slots.expand(len(x), -1, -1)
            return self.slot_attn(query, h, h, need_weights=False)[0], None, None
        logits = self.scorer(tokens).squeeze(-1)  # (B, P*K)
        if self.keep == tokens.shape[1]:
            index = torch.arange(tokens.shape[1], device=x.device).expand(len(x), -1)
        else:
            ranking = logits.detach()
            if self.training:  # Gumbel-top-k: sample k tokens ~ softmax(logits), so unpromising ones get tried
                ranking = ranking - torch.log(-torch.log(torch.rand_like(ranking).clamp(1e-9, 1.0 - 1e-9)))
            index = ranking.topk(self.keep, dim=1).indices.sort(dim=1).values  # keep the original order
        gates = torch.sigmoid(logits.gather(1, index))
        kept = tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return kept * gates.unsqueeze(-1).to(kept.dtype), index, gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = self.select(x)[0]
        return self.head(self.blocks(kept).mean(dim=1))
