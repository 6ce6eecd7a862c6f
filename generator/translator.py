"""Translator: a point of the shared space -> the image model's conditioning (token states / prompt_embeds).

Trained on captions alone (see ``generator.train_translator``): input = caption through the text encoder and
the text adapter, target = the image model's own text encoding of the same caption. It also carries the image
model's encoding of the empty prompt, the negative condition for classifier-free guidance.

    tr = Translator(in_dim=384, num_tokens=16, token_dim=384)
    embeds = tr(shared_points)            # (B, 16, 384)
    Translator(in_dim=384, num_tokens=16, token_dim=384, arch="queries")   # learned per-token queries
    tr.save_pretrained("translator"); Translator.from_pretrained("translator")

``arch="mlp"`` (the default) is a residual MLP whose last layer writes all tokens at once; its blocks are as wide as
S, or ``width`` after one projection (so a wide S, e.g. several heads joined, need not make the translator wide).
``arch="queries"``: the point becomes ``memory_tokens`` tokens, and one learned query per output token reads them
through ``num_blocks`` transformer blocks (self-attention over queries and memory), so each token can pick what it
needs from S.
``arch="mixture"``: the residual MLP writes ``components`` candidate conditionings and a score for each, and the
output is the best-scored candidate. A regression to one answer draws the *mean* of the scenes a point may be
(two colour-swapped twins averaged give a field with no shape); trained winner-take-all
(``generator.train_translator``), each candidate stays one scene and the score picks the likelier.

``snap`` (with ``anchors``, the image model's conditionings of one caption per scene, written by the trainer's
``--snap``): at inference, an output farther than ``snap`` (L2 over all its numbers) from every anchor is replaced
by the nearest anchor. An image model draws what it was trained on; an output off that set (a clip heard between
two scenes, or spoken unlike any training voice) draws a blend, often a field with no shape. Outputs near an anchor,
and every output while training, pass unchanged.

``metric`` (with ``anchors``; used while ``snap`` > 0): a far output snaps to the anchor nearest under a
Mahalanobis metric instead of L2, the inverse covariance of the translator's errors on clips it never trained on
(``generator.snap_metric``). Far from every anchor, plain L2 weighs each direction of the conditioning alike; the
metric discounts the directions the translator gets wrong on unheard voices, so the scene is judged by the rest.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from fusion.adapters import ResidualMLPBlock
from fusion.blocks import TokenBlock

ARCHS = ("mlp", "queries", "mixture")


class Translator(ModelMixin, ConfigMixin):
    """S -> ``num_tokens x token_dim``, added to a learned mean condition (a residual MLP or learned queries)."""

    @register_to_config
    def __init__(
        self,
        in_dim: int,
        num_tokens: int,
        token_dim: int,
        num_blocks: int = 2,
        expansion: int = 4,
        dropout: float = 0.1,
        arch: str = "mlp",
        memory_tokens: int = 4,
        components: int = 1,
        anchors: int = 0,
        snap: float = 0.0,
        metric: bool = False,
        width: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("num_tokens", num_tokens), ("token_dim", token_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if arch not in ARCHS or memory_tokens < 1 or components < 1:
            raise ValueError(
                f"arch must be one of {ARCHS}, memory_tokens and components >= 1, got {arch!r}, {memory_tokens}, "
                f"{components}"
            )
        if anchors < 0 or snap < 0 or (snap > 0 and anchors == 0) or (metric and anchors == 0):
            raise ValueError(
                f"snap and metric need anchors, and both must be >= 0: got anchors={anchors}, snap={snap}, "
                f"metric={metric}"
            )
        if width is not None and (width < 1 or arch == "queries"):
            raise ValueError(f"width must be >= 1, and is for arch 'mlp' or 'mixture'; got {width} with {arch!r}")
        if arch != "queries":
            hidden = width or in_dim
            # a narrower hidden width costs one projection; absent (None), the blocks read S as it is
            self.inp = nn.Linear(in_dim, hidden) if hidden != in_dim else nn.Identity()
            self.blocks = nn.Sequential(*[ResidualMLPBlock(hidden, expansion, dropout) for _ in range(num_blocks)])
            self.norm = nn.LayerNorm(hidden)
            self.proj = nn.Linear(hidden, (components if arch == "mixture" else 1) * num_tokens * token_dim)
            if arch == "mixture":
                self.score = nn.Linear(hidden, components)
        else:
            self.memory = nn.Linear(in_dim, memory_tokens * token_dim)
            self.queries = nn.Parameter(torch.randn(num_tokens, token_dim) * 0.02)
            self.blocks = nn.Sequential(*[TokenBlock(token_dim, expansion, dropout) for _ in range(num_blocks)])
            self.norm = nn.LayerNorm(token_dim)
            self.proj = nn.Linear(token_dim, token_dim)
        self.mean = nn.Parameter(torch.zeros(num_tokens, token_dim))  # mean target, so the MLP learns the residual
        self.register_buffer("negative", torch.zeros(1, num_tokens, token_dim))  # image model's encoding of ""
        if anchors:  # one conditioning per scene, what far outputs snap to
            self.register_buffer("anchor_embeds", torch.zeros(anchors, num_tokens, token_dim))
        if metric:  # anchor i's score for output x is 2 x.metric_anchors[i] - metric_offsets[i] (snap_metric)
            self.register_buffer("metric_anchors", torch.zeros(anchors, num_tokens, token_dim))
            self.register_buffer("metric_offsets", torch.zeros(anchors))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        out = self.translate(points)
        return out if self.training or self.config.snap <= 0 else self.snapped(out)[0]

    def anchor_distance(self, out: torch.Tensor) -> torch.Tensor:
        """L2 distance (over all numbers) from each conditioning to its nearest anchor: how far off every scene."""
        return self.nearest_anchor(out).values

    def nearest_anchor(self, out: torch.Tensor):
        """(distance, index) of each conditioning's nearest anchor, one rule for the snap and the preset's handoff."""
        if not self.config.anchors:
            raise ValueError("anchors are needed (a translator trained with --snap)")
        return torch.cdist(out.flatten(1), self.anchor_embeds.to(out.dtype).flatten(1)).min(1)

    def snapped(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``out`` with each conditioning farther than ``snap`` from every anchor replaced by the nearest one, and
        a mask of the rows replaced."""
        anchors = self.anchor_embeds.to(out.dtype)
        distance, nearest = self.nearest_anchor(out)
        far = distance > self.config.snap
        if self.config.metric:  # the same far rows, judged by the metric
            nearest = self.metric_scores(out).argmax(1)
        return torch.where(far[:, None, None], anchors[nearest], out), far

    def metric_scores(self, out: torch.Tensor) -> torch.Tensor:
        """(rows, anchors) scores under the snap metric, higher = nearer: minus the squared Mahalanobis distance up to
        a per-row constant (``generator.snap_metric``); float32, the scores being large sums."""
        flat = out.flatten(1).float()
        return 2 * flat @ self.metric_anchors.float().flatten(1).T - self.metric_offsets.float()

    def translate(self, points: torch.Tensor) -> torch.Tensor:
        """The learned map alone, never snapped."""
        if points.ndim != 2 or points.shape[1] != self.config.in_dim:
            raise ValueError(f"points must have shape (batch, {self.config.in_dim}), got {tuple(points.shape)}")
        if self.config.arch == "mixture":
            candidates, scores = self.candidates(points)
            return candidates[torch.arange(len(points)), scores.argmax(1)]
        if self.config.arch == "mlp":
            out = self.proj(self.norm(self.blocks(self.inp(points))))
            return self.mean + out.view(-1, self.config.num_tokens, self.config.token_dim)
        memory = self.memory(points).view(len(points), self.config.memory_tokens, self.config.token_dim)
        tokens = torch.cat([memory, self.queries.expand(len(points), -1, -1)], dim=1)
        out = self.blocks(tokens)[:, self.config.memory_tokens :]
        return self.mean + self.proj(self.norm(out))

    def candidates(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``arch="mixture"``: every candidate, ``(batch, components, tokens, dim)``, and their scores (logits)."""
        if self.config.arch != "mixture":
            raise ValueError(f"candidates() needs arch='mixture', this translator is {self.config.arch!r}")
        hidden = self.norm(self.blocks(self.inp(points)))
        shape = (-1, self.config.components, self.config.num_tokens, self.config.token_dim)
        # the scores read the features without shaping them: the features serve the regression alone
        return self.mean + self.proj(hidden).view(shape), self.score(hidden.detach())

    def negative_embeds(self, batch: int = 1) -> torch.Tensor:
        return self.negative.expand(batch, -1, -1)
