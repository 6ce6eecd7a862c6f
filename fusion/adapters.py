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
AUDIO_ADAPTERS = ("mlp", "sparse")  # kinds of audio tower; see build_audio_tower


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


def build_audio_tower(
    kind: str,
    in_dim: int,
    out_dim: int,
    num_blocks: int,
    expansion: int,
    dropout: float,
    audio_tokens: int | None = None,
    keep: int | None = None,
    sparse_mode: str = "topk",
) -> nn.Module:
    """The audio tower for ``audio_adapter=kind``; one branch per kind, so a new kind is one ``if``."""
    if kind == "mlp":  # pooled latents (B, D)
        if audio_tokens is not None or keep is not None:
            raise ValueError(
                f"audio_adapter 'mlp' takes pooled latents: audio_tokens and keep must be unset, "
                f"got audio_tokens={audio_tokens}, keep={keep}"
            )
        return build_tower(in_dim, out_dim, num_blocks, expansion, dropout)
    if kind == "sparse":  # token latents (B, K, D); see fusion.sparse
        if audio_tokens is None or keep is None:
            raise ValueError(
                f"audio_adapter 'sparse' needs audio_tokens (K) and keep (k), got audio_tokens={audio_tokens}, "
                f"keep={keep}"
            )
        return SparsePoolTower(in_dim, out_dim, audio_tokens, keep, sparse_mode, num_blocks, expansion, dropout)
    raise ValueError(f"audio_adapter must be one of {AUDIO_ADAPTERS}, got {kind!r}")


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
        text_tower = nn.Identity() if lock_text else build_tower(text_dim, shared, num_blocks, expansion, dropout)
        if sparse_mode not in SPARSE_MODES:
            raise ValueError(f"sparse_mode must be one of {SPARSE_MODES}, got {sparse_mode!r}")
        audio_tower = build_audio_tower(
            audio_adapter, audio_dim, shared, num_blocks, expansion, dropout, audio_tokens, keep, sparse_mode
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
            if modality == "audio" and self.config.audio_adapter == "mlp" and x.ndim != 2:
                raise ValueError(
                    f"audio_adapter 'mlp' takes pooled latents (batch, dim), got shape {tuple(x.shape)}; "
                    "use a pooled cache"
                )
            if modality == "audio" and self.config.audio_adapter == "sparse" and x.ndim != 3:
                raise ValueError(
                    f"audio_adapter 'sparse' takes token latents (batch, {self.config.audio_tokens}, dim), got shape "
                    f"{tuple(x.shape)}; use a cache written with --tokens {self.config.audio_tokens}"
                )
            out[modality] = nn.functional.normalize(self.towers[modality](x), dim=-1)
        return out

    def forward(self, audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio features, text features, logit scale): what the loss takes."""
        out = self.encode({"audio": audio, "text": text})
        return out["audio"], out["text"], self.logit_scale()
