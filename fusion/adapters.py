"""FuseMix adapters: one small residual MLP tower per modality into a shared space S.

The towers are the only trained part of FuseMix; the encoders stay frozen and their latents come from the cache.

    model = FuseMixAdapters(audio_dim=384, text_dim=384, shared_dim=512)
    out = model.encode({"audio": a, "text": t})   # L2-normalised (B, shared_dim) each
    model.save_pretrained("ckpt"); FuseMixAdapters.from_pretrained("ckpt")
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from fusion.sparse import SPARSE_MODES, SparsePoolTower

MODALITIES = ("audio", "text")
TEMPERATURE_INIT = 0.07
TEMPERATURE_RANGE = (0.001, 0.5)  # the paper's clamp; logit scale = 1 / temperature
ADAPTER_KINDS = ("mlp", "sparse")  # kinds of tower: pooled latents (mlp) or token latents (sparse); see build_tower_for
AUDIO_ADAPTERS = ADAPTER_KINDS  # the CLI's --audio-adapter choices
TEXT_ADAPTERS = ADAPTER_KINDS  # the CLI's --text-adapter choices


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


def build_tower_for(
    modality: str,
    kind: str,
    in_dim: int,
    out_dim: int,
    num_blocks: int,
    expansion: int,
    dropout: float,
    tokens: int | None = None,
    keep: int | None = None,
    sparse_mode: str = "topk",
    token_blocks: int = 1,
) -> nn.Module:
    """The ``modality`` tower for adapter ``kind``; one branch per kind, so a new kind is one ``if``."""
    if kind == "mlp":  # pooled latents (B, D)
        if tokens is not None or keep is not None:
            raise ValueError(
                f"{modality}_adapter 'mlp' takes pooled latents: {modality}_tokens and its keep must be unset, "
                f"got tokens={tokens}, keep={keep}"
            )
        return build_tower(in_dim, out_dim, num_blocks, expansion, dropout)
    if kind == "sparse":  # token latents (B, K, D); see fusion.sparse
        if tokens is None or keep is None:
            raise ValueError(
                f"{modality}_adapter 'sparse' needs {modality}_tokens (K) and keep (k), got tokens={tokens}, keep={keep}"
            )
        return SparsePoolTower(in_dim, out_dim, tokens, keep, sparse_mode, num_blocks, expansion, dropout, token_blocks)
    raise ValueError(f"{modality}_adapter must be one of {ADAPTER_KINDS}, got {kind!r}")


def resolve_shared_dim(shared_dim: int | None, text_dim: int, lock_text: bool) -> int:
    """With a locked text tower S *is* the text space, so its width is ``text_dim``; otherwise default 512."""
    if lock_text:
        if shared_dim is not None and shared_dim != text_dim:
            raise ValueError(
                f"lock_text keeps text latents as they are, so shared_dim must equal text_dim ({text_dim}); "
                f"got shared_dim={shared_dim} (leave it unset)"
            )
        return text_dim
    return 512 if shared_dim is None else shared_dim


class FuseMixAdapters(ModelMixin, ConfigMixin):
    """Audio and text adapter towers (``self.towers["audio"|"text"]``) and a learnable temperature.

    ``audio_adapter="sparse"`` takes token latents (B, audio_tokens, D) and keeps ``keep`` of them (fusion.sparse);
    ``audio_tokens`` in config.json tells the generator how many tokens to ask the audio encoder for (None: pooled).
    ``text_adapter="sparse"`` does the same for text (B, text_tokens, D) with ``text_keep``: token states keep
    which colour goes with which word, which a mean-pooled sentence vector blurs. ``token_blocks`` sets how many
    transformer blocks a sparse tower runs over its kept tokens.
    """

    @register_to_config
    def __init__(
        self,
        audio_dim: int,
        text_dim: int,
        shared_dim: int | None = None,
        num_blocks: int = 4,
        expansion: int = 4,
        dropout: float = 0.6,
        lock_text: bool = False,
        audio_adapter: str = "mlp",
        audio_tokens: int | None = None,
        keep: int | None = None,
        sparse_mode: str = "topk",
        text_adapter: str = "mlp",
        text_tokens: int | None = None,
        text_keep: int | None = None,
        token_blocks: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("audio_dim", audio_dim), ("text_dim", text_dim), ("expansion", expansion)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        shared = resolve_shared_dim(shared_dim, text_dim, lock_text)
        self.register_to_config(shared_dim=shared)  # the resolved width, so config.json tells it plainly
        if sparse_mode not in SPARSE_MODES:
            raise ValueError(f"sparse_mode must be one of {SPARSE_MODES}, got {sparse_mode!r}")
        if lock_text and text_adapter != "mlp":
            raise ValueError(
                f"lock_text keeps text latents as they are: text_adapter must be 'mlp', got {text_adapter!r}"
            )
        text_tower = (
            nn.Identity()
            if lock_text
            else build_tower_for(
                "text",
                text_adapter,
                text_dim,
                shared,
                num_blocks,
                expansion,
                dropout,
                text_tokens,
                text_keep,
                sparse_mode,
                token_blocks,
            )
        )
        audio_tower = build_tower_for(
            "audio",
            audio_adapter,
            audio_dim,
            shared,
            num_blocks,
            expansion,
            dropout,
            audio_tokens,
            keep,
            sparse_mode,
            token_blocks,
        )
        self.towers = nn.ModuleDict({"audio": audio_tower, "text": text_tower})
        self.temperature = nn.Parameter(torch.tensor(TEMPERATURE_INIT))

    @property
    def shared_dim(self) -> int:
        return int(self.config.shared_dim)

    def logit_scale(self) -> torch.Tensor:
        """``1 / temperature`` with the temperature clamped to [0.001, 0.5] (gradient stops at the bounds)."""
        return 1.0 / self.temperature.clamp(*TEMPERATURE_RANGE)

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map each given modality's latents to L2-normalised points of the shared space."""
        out = {}
        for modality, x in inputs.items():
            if modality not in self.towers:
                raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
            expected = self.config.audio_dim if modality == "audio" else self.config.text_dim
            if x.shape[-1] != expected:
                raise ValueError(f"{modality} latents have dim {x.shape[-1]}, the adapter expects {expected}")
            self.check_shape(modality, x)
            out[modality] = nn.functional.normalize(self.towers[modality](x), dim=-1)
        return out

    @torch.no_grad()
    def embed(self, modality: str, latents: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """``encode`` of one modality in chunks, without gradients: for banks of thousands of captions."""
        if len(latents) == 0:
            return torch.zeros(0, self.shared_dim)
        parts = [
            self.encode({modality: latents[i : i + batch_size]})[modality] for i in range(0, len(latents), batch_size)
        ]
        return torch.cat(parts)

    def tokens_for(self, modality: str) -> int | None:
        """K token latents per item that ``modality``'s tower takes, or None for pooled latents."""
        return self.config.get(f"{modality}_tokens")

    def check_shape(self, modality: str, x: torch.Tensor) -> None:
        """One clear line when pooled latents meet a token tower or the other way round."""
        tokens = self.tokens_for(modality)
        if tokens is None and x.ndim != 2:
            raise ValueError(
                f"{modality}_adapter 'mlp' takes pooled latents (batch, dim), got shape {tuple(x.shape)}; "
                "use a pooled cache"
            )
        if tokens is not None and x.ndim != 3:
            raise ValueError(
                f"{modality}_adapter 'sparse' takes token latents (batch, {tokens}, dim), got shape "
                f"{tuple(x.shape)}; use a cache written with --tokens {tokens}"
            )

    def forward(self, audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio features, text features, logit scale): what the loss takes."""
        out = self.encode({"audio": audio, "text": text})
        return out["audio"], out["text"], self.logit_scale()
