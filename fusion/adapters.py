"""FuseMix adapters: one small residual MLP tower per modality into a shared space S.

The towers are the only trained part of FuseMix; the encoders stay frozen and their latents come from the cache.

    model = FuseMixAdapters(audio_dim=384, text_dim=384, shared_dim=512)
    out = model.encode({"audio": a, "text": t})   # L2-normalised (B, shared_dim) each
    model.save_pretrained("ckpt"); FuseMixAdapters.from_pretrained("ckpt")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from fusion.blocks import ResidualMLPBlock, build_tower  # noqa: F401 (ResidualMLPBlock: re-exported for old imports)
from fusion.errors import InputError
from fusion.sparse import SPARSE_MODES, SparsePoolTower

MODALITIES = ("audio", "text")
TEMPERATURE_INIT = 0.07
TEMPERATURE_RANGE = (0.001, 0.5)  # the paper's clamp; logit scale = 1 / temperature
ADAPTER_KINDS = ("mlp", "sparse")  # kinds of tower: pooled latents (mlp) or token latents (sparse); see build_tower_for
AUDIO_ADAPTERS = ADAPTER_KINDS  # the CLI's --audio-adapter choices
TEXT_ADAPTERS = ADAPTER_KINDS  # the CLI's --text-adapter choices


class TowerConfigError(ValueError):
    """A tower argument is out of range; ``modality`` and ``fields`` let a caller name its own flags for them."""

    def __init__(self, modality: str, fields: tuple[str, ...], message: str) -> None:
        super().__init__(f"{modality} tower: {message}")
        self.modality, self.fields = modality, fields


@dataclass(frozen=True)
class TowerConfig:
    """One modality's tower: its kind and, for a token tower, how many tokens it takes and keeps.

    ``token_blocks`` and ``sparse_mode`` only shape sparse towers; config.json holds one value of each for both.
    """

    kind: str = "mlp"  # "mlp": pooled latents (B, D); "sparse": token latents (B, tokens, D), see fusion.sparse
    tokens: int | None = None  # sparse: K token latents per item (what the encoder is asked for); None for mlp
    keep: int | None = None  # sparse: tokens kept of the K (keep = tokens keeps all); None for mlp
    token_blocks: int = 1  # sparse: transformer blocks over the kept tokens
    sparse_mode: str = "topk"  # sparse: "topk" (scored selection) or "slots" (learned query slots)
    parts: int = 1  # sparse: encoders side by side in each latent (concat:A+B -> 2), laid out as parts x tokens
    part_dropout: tuple[float, ...] = ()  # sparse, training: chance of blanking each part of an item (at most one)

    def check(self, modality: str, *, tokens_known: bool = True) -> None:
        """Every rule on a tower's arguments, in one place; ``tokens_known=False`` before K is read from a cache."""

        def fail(message: str, *fields: str) -> NoReturn:
            raise TowerConfigError(modality, fields, message)

        if self.kind not in ADAPTER_KINDS:
            fail(f"kind must be one of {ADAPTER_KINDS}, got {self.kind!r}", "kind")
        if self.sparse_mode not in SPARSE_MODES:
            fail(f"sparse_mode must be one of {SPARSE_MODES}, got {self.sparse_mode!r}", "sparse_mode")
        if self.token_blocks < 1:
            fail(f"token_blocks must be >= 1, got {self.token_blocks}", "token_blocks")
        if self.kind == "mlp":
            parts = (self.parts, list(self.part_dropout)) if self.parts != 1 or self.part_dropout else None
            for field, value in (("keep", self.keep), ("tokens", self.tokens), ("parts", parts)):
                if value is not None:
                    fail(
                        f"{field} is only for kind 'sparse' (kind 'mlp' takes pooled latents), got {value}",
                        field,
                        "kind",
                    )
            return
        if self.keep is None or self.keep < 1:
            fail(f"kind 'sparse' needs keep >= 1, got {self.keep}", "keep", "kind")
        if self.parts < 1:
            fail(f"parts must be >= 1, got {self.parts}", "parts")
        if self.part_dropout and (
            len(self.part_dropout) != self.parts or min(self.part_dropout) < 0 or sum(self.part_dropout) >= 1
        ):
            fail(
                f"part_dropout needs one probability >= 0 per part ({self.parts}) summing below 1, "
                f"got {list(self.part_dropout)}",
                "part_dropout",
            )
        if not tokens_known:
            return
        if self.tokens is None or self.tokens < 1:
            fail(f"kind 'sparse' needs tokens >= 1 (token latents per item), got {self.tokens}", "tokens", "kind")
        if self.keep > self.tokens * self.parts:
            most = f"tokens={self.tokens}" if self.parts == 1 else f"tokens x parts={self.tokens * self.parts}"
            fail(f"keep must be in [1, {most}], got {self.keep}", "keep")


# config.json keeps the flat names it has always had; which flat key holds each TowerConfig field of each tower
FLAT_KEYS = {
    "audio": {
        "kind": "audio_adapter",
        "tokens": "audio_tokens",
        "keep": "keep",
        "token_blocks": "token_blocks",
        "sparse_mode": "sparse_mode",
        "parts": "audio_parts",
        "part_dropout": "audio_part_dropout",
    },
    "text": {
        "kind": "text_adapter",
        "tokens": "text_tokens",
        "keep": "text_keep",
        "token_blocks": "token_blocks",
        "sparse_mode": "sparse_mode",
        "parts": "text_parts",
        "part_dropout": "text_part_dropout",
    },
}
# fields an mlp tower does not use
SPARSE_ONLY = ("tokens", "keep", "token_blocks", "sparse_mode", "parts", "part_dropout")


def tower_configs(flat: Mapping[str, Any]) -> dict[str, TowerConfig]:
    """The towers described by flat config names (config.json, TrainConfig); absent keys take the defaults."""
    defaults = TowerConfig()
    towers = {}
    for modality, keys in FLAT_KEYS.items():
        fields = {f: flat.get(key, getattr(defaults, f)) for f, key in keys.items()}
        fields["part_dropout"] = tuple(fields["part_dropout"] or ())  # a JSON list, or None from a TrainConfig
        towers[modality] = TowerConfig(**fields)
    return towers


def flat_tower_args(towers: Mapping[str, TowerConfig]) -> dict[str, Any]:
    """The flat config names for typed towers; sparse towers must agree on the fields config.json shares."""
    flat: dict[str, Any] = {}
    for modality in MODALITIES:
        tower = towers.get(modality, TowerConfig())
        tower.check(modality)
        for field, key in FLAT_KEYS[modality].items():
            value = (list(tower.part_dropout) or None) if field == "part_dropout" else getattr(tower, field)
            if tower.kind == "mlp" and field in SPARSE_ONLY:
                continue
            if key in flat and flat[key] != value:
                raise TowerConfigError(
                    modality,
                    (field,),
                    f"{field} is shared by both towers in config.json: got {flat[key]!r} and {value!r}",
                )
            flat[key] = value
    return flat


def check_towers(towers: Mapping[str, TowerConfig], lock_text: bool = False, *, tokens_known: bool = True) -> None:
    """The one check of both towers' arguments (FuseMixAdapters, and TrainConfig before the caches are read)."""
    for modality in MODALITIES:
        towers[modality].check(modality, tokens_known=tokens_known)
    if lock_text and towers["text"].kind != "mlp":
        raise TowerConfigError(
            "text",
            ("lock_text", "kind"),
            f"lock_text keeps text latents as they are, so kind must be 'mlp', got {towers['text'].kind!r}",
        )


def build_tower_for(
    tower: TowerConfig, in_dim: int, out_dim: int, num_blocks: int, expansion: int, dropout: float
) -> nn.Module:
    """The module for a checked ``tower``; one branch per kind, so a new kind is one ``if`` (and one rule in check)."""
    if tower.kind == "mlp":  # pooled latents (B, D)
        return build_tower(in_dim, out_dim, num_blocks, expansion, dropout)
    # token latents (B, K, D); see fusion.sparse
    if in_dim % tower.parts:
        raise ValueError(f"latent width {in_dim} does not split into {tower.parts} equal parts")
    return SparsePoolTower(
        in_dim, out_dim, tower.tokens, tower.keep, tower.sparse_mode, num_blocks, expansion, dropout, tower.token_blocks,
        tower.parts, tower.part_dropout,
    )  # fmt: skip


class JoinedTowers(nn.Module):
    """``heads`` towers of one modality side by side: each head's L2-normalised output, concatenated and scaled by
    1/sqrt(heads), so the joined point is unit-norm and its cosine with another is the mean of the heads' cosines
    (an ensemble of shared spaces in one space: retrieval, the translator and the bank read it unchanged)."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [nn.functional.normalize(head(x), dim=-1) for head in self.heads]
        return torch.cat(parts, dim=-1) / len(parts) ** 0.5


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

    Each tower is described by a ``TowerConfig`` (``self.tower_configs[modality]``), checked once here. config.json
    keeps flat names (see ``FLAT_KEYS``), so configs saved by earlier versions load unchanged:
    ``audio_adapter="sparse"`` takes token latents (B, audio_tokens, D) and keeps ``keep`` of them (fusion.sparse);
    ``audio_tokens`` tells the generator how many tokens to ask the audio encoder for (None: pooled).
    ``text_adapter="sparse"`` does the same for text (B, text_tokens, D) with ``text_keep``: token states keep
    which colour goes with which word, which a mean-pooled sentence vector blurs. ``token_blocks`` sets how many
    transformer blocks a sparse tower runs over its kept tokens. ``audio_parts``/``audio_part_dropout`` (and the
    text ones) read a ``concat:A+B`` cache as A's tokens then B's and blank one part now and then in training (see
    fusion.sparse). ``from_towers`` builds one from typed configs. ``heads`` K > 1: K towers per modality side by
    side (``JoinedTowers``, made by ``join_adapters`` from K trained runs), S is ``K x shared_dim`` wide.
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
        audio_parts: int = 1,
        audio_part_dropout: list[float] | None = None,
        text_parts: int = 1,
        text_part_dropout: list[float] | None = None,
        heads: int = 1,
    ) -> None:
        super().__init__()
        if heads < 1 or (heads > 1 and lock_text):
            raise ValueError(f"heads must be >= 1 (1 with lock_text: one identity text tower), got {heads}")
        for name, value in (("audio_dim", audio_dim), ("text_dim", text_dim), ("expansion", expansion)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        shared = resolve_shared_dim(shared_dim, text_dim, lock_text)
        self.register_to_config(shared_dim=shared)  # the resolved width, so config.json tells it plainly
        flat = dict(audio_adapter=audio_adapter, audio_tokens=audio_tokens, keep=keep, sparse_mode=sparse_mode)
        flat.update(text_adapter=text_adapter, text_tokens=text_tokens, text_keep=text_keep, token_blocks=token_blocks)
        flat.update(audio_parts=audio_parts, audio_part_dropout=audio_part_dropout)
        flat.update(text_parts=text_parts, text_part_dropout=text_part_dropout)
        self.tower_configs = tower_configs(flat)
        check_towers(self.tower_configs, lock_text)
        block_args = (num_blocks, expansion, dropout)
        dims = {"audio": audio_dim, "text": text_dim}
        built: dict[str, list[nn.Module]] = {"text": [], "audio": []}
        for _ in range(heads):
            for modality in ("text", "audio"):  # text first: the order the random init has always drawn in
                tower = self.tower_configs[modality]
                locked = modality == "text" and lock_text
                one = nn.Identity() if locked else build_tower_for(tower, dims[modality], shared, *block_args)
                built[modality].append(one)
        built = {m: towers[0] if heads == 1 else JoinedTowers(towers) for m, towers in built.items()}
        self.towers = nn.ModuleDict({"audio": built["audio"], "text": built["text"]})
        self.temperature = nn.Parameter(torch.tensor(TEMPERATURE_INIT))

    @classmethod
    def from_towers(
        cls,
        audio_dim: int,
        text_dim: int,
        audio: TowerConfig | None = None,
        text: TowerConfig | None = None,
        **kwargs: Any,
    ) -> FuseMixAdapters:
        """Build from typed tower configs (default: mlp); ``kwargs`` are the other arguments of ``__init__``."""
        towers = {"audio": audio or TowerConfig(), "text": text or TowerConfig()}
        return cls(audio_dim=audio_dim, text_dim=text_dim, **flat_tower_args(towers), **kwargs)

    @property
    def shared_dim(self) -> int:
        """Width of S: the heads' widths side by side."""
        return int(self.config.shared_dim) * self.heads

    @property
    def heads(self) -> int:
        return int(self.config.heads)

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
                raise InputError(f"{modality} latents have dim {x.shape[-1]}, the adapter expects {expected}")
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
        return self.tower_configs[modality].tokens

    def check_shape(self, modality: str, x: torch.Tensor) -> None:
        """One clear line when pooled latents meet a token tower, the other way round, or K differs."""
        tokens = self.tokens_for(modality)
        if tokens is None and x.ndim != 2:
            raise ValueError(
                f"{modality} tower (kind 'mlp') takes pooled latents (batch, dim), got shape {tuple(x.shape)}"
            )
        if tokens is not None and (x.ndim != 3 or x.shape[1] != tokens):
            raise ValueError(
                f"{modality} tower (kind 'sparse') takes token latents (batch, {tokens}, dim), "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, audio: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio features, text features, logit scale): what the loss takes."""
        out = self.encode({"audio": audio, "text": text})
        return out["audio"], out["text"], self.logit_scale()


def join_adapters(members: list[FuseMixAdapters]) -> FuseMixAdapters:
    """One model whose heads are ``members`` (single-head adapters trained alike, e.g. with other seeds): S becomes
    their spaces side by side, cosine the mean of theirs; the temperature is their mean (it only scales training)."""
    if not members or any(m.heads != 1 for m in members):
        raise ValueError("join_adapters takes one or more single-head adapters")
    config = {k: v for k, v in members[0].config.items() if not k.startswith("_")}
    for i, member in enumerate(members[1:], 1):
        other = {k: v for k, v in member.config.items() if not k.startswith("_")}
        if other != config:
            differ = sorted(k for k in config.keys() | other.keys() if config.get(k) != other.get(k))
            raise ValueError(f"adapters 0 and {i} differ in {', '.join(differ)}: only alike adapters join")
    joined = FuseMixAdapters(**{**config, "heads": len(members)})
    state = {"temperature": torch.stack([m.temperature.detach() for m in members]).mean()}
    for k, member in enumerate(members):
        for key, value in member.state_dict().items():
            if key.startswith("towers."):
                modality, rest = key[len("towers.") :].split(".", 1)
                state[f"towers.{modality}.heads.{k}.{rest}"] = value
    joined.load_state_dict(state, strict=True)
    return joined.eval()
