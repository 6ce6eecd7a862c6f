"""Train the translator on captions alone: text latent -> text adapter -> S (+ noise) -> image-model conditioning.

The Gaussian noise on the inputs (TR0N's trick) makes the translator tolerant of the gap between where audio
and text land in S, so audio steers the image model although no audio is seen here.

The output folder is the translator (``config.json`` + weights, ``translator_config.json``) and its checkpoint
(``fusion.training.CheckpointManager``: ``optimizer.safetensors``, ``trainer_state.json``, ``train_config.json``),
rewritten atomically after every epoch; ``resume=True`` continues an interrupted run. The order and noise of
epoch ``e`` come from generators seeded by ``derive_seed(seed, ..., e)``, so a resumed run repeats exactly what
the uninterrupted run would have done.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fusion.adapters import FuseMixAdapters
from fusion.cache import load_latents
from fusion.crash import maybe_crash
from fusion.errors import FusemixError
from fusion.training import (
    Checkpoint,
    CheckpointManager,
    WarmupCosine,
    reseed_global,
    restore_optimizer,
    torch_generator,
)
from generator.image_text import image_text_encoder
from generator.translator import Translator

logger = logging.getLogger(__name__)

REPORT_FILE = "translator_config.json"  # the configuration, the number of captions and (at the end) the fit
RESUMABLE_CHANGES = frozenset({"out", "progress", "device"})  # fields a resumed run may set differently


@dataclass
class TranslatorConfig:
    adapters: str  # FuseMixAdapters folder; its text tower maps caption latents into S
    text_latents: str  # caption latent cache (fusemix extract with the adapters' text encoder); holds the texts
    out: str  # translator folder to write
    kind: str = "demo"  # image model kind: "demo" or "stable-diffusion"
    image_model: str | None = None  # SD pipeline folder or id (its CLIP text encoder gives the targets)
    epochs: int = 60  # passes over the captions
    batch_size: int = 256
    lr: float = 1e-3  # AdamW, cosine decay to lr/100
    weight_decay: float = 0.01
    noise: float = 0.05  # std of Gaussian noise added per dimension to the unit-norm S inputs (then renormalised)
    num_blocks: int = 2  # residual blocks of the translator
    dropout: float = 0.1
    seed: int = 0
    progress: bool = True
    device: str = "cpu"


def noisy(points: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Unit-norm points jittered by isotropic Gaussian noise, back on the sphere."""
    if std <= 0:
        return points
    noise = torch.randn(points.shape, generator=generator, device=points.device) * std
    return F.normalize(points + noise, dim=-1)


@dataclass
class _Data:
    """Each unique caption's point in S (inputs) and the image model's encoding of it (targets)."""

    texts: list[str]
    points: torch.Tensor  # (captions, shared dim)
    targets: torch.Tensor  # (captions, tokens, token dim)
    negative: torch.Tensor  # (1, tokens, token dim) the empty prompt's encoding


def checkpoint_manager(cfg: TranslatorConfig) -> CheckpointManager:
    """The translator folder is its own checkpoint; a resumed run may change only ``RESUMABLE_CHANGES``."""
    return CheckpointManager(Path(cfg.out), asdict(cfg), may_change=RESUMABLE_CHANGES)


def train_translator(cfg: TranslatorConfig, resume: bool = False) -> Path:
    """Train (or, with ``resume``, continue) and return the translator folder; an existing one needs ``resume``."""
    manager = checkpoint_manager(cfg)
    resumed = manager.start(resume)
    data = _load_data(cfg)
    model, opt, state = _build(cfg, data, resumed)
    steps_per_epoch = math.ceil(len(data.texts) / cfg.batch_size)
    schedule = WarmupCosine(cfg.lr, cfg.epochs * steps_per_epoch, 0, cfg.lr * 0.01)
    if state["epoch"] >= cfg.epochs:
        logger.info("%s already trained for %d epochs; nothing to do", cfg.out, state["epoch"])
        return manager.folder
    scale = data.targets.pow(2).mean().item()  # report loss relative to the targets' power
    report = {**asdict(cfg), "num_captions": len(data.texts)}
    bar = tqdm(range(state["epoch"], cfg.epochs), disable=not cfg.progress, desc="translator", unit="epoch")
    for epoch in bar:
        loss = _run_epoch(cfg, model, opt, schedule, data, epoch)
        bar.set_postfix(rel_mse=f"{loss / scale:.4f}")
        state["history"].append({"epoch": epoch + 1, "relative_mse": loss / scale})
        state.update(epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch)
        if epoch + 1 == cfg.epochs:
            report["relative_mse"] = _clean_error(model, data) / scale
            logger.info(
                "translator: relative MSE %.4f on %d training captions", report["relative_mse"], len(data.texts)
            )
        manager.save(state, optimizer=opt, model=model, files={REPORT_FILE: report})
    return manager.folder


def _load_data(cfg: TranslatorConfig) -> _Data:
    """Unique captions of the cache, their points through the adapters' text tower, and their targets."""
    cache = load_latents(Path(cfg.text_latents))
    if not cache.texts:
        raise FusemixError(f"{cfg.text_latents} holds no caption texts: extract it with a text encoder")
    adapters = FuseMixAdapters.from_pretrained(cfg.adapters, use_safetensors=True).eval()
    tokens = adapters.tokens_for("text")
    if (cache.array.ndim == 3) != (tokens is not None):
        want = f"token latents (extract --tokens {tokens})" if tokens else "pooled caption latents"
        raise FusemixError(f"{cfg.text_latents} has shape {cache.array.shape}; the adapters' text tower takes {want}")
    texts = list(dict.fromkeys(cache.texts))  # unique captions, first-seen order
    first = {t: i for i, t in reversed(list(enumerate(cache.texts)))}
    latents = torch.from_numpy(cache.array[[first[t] for t in texts]].astype("float32"))
    points = adapters.embed("text", latents)
    logger.info("encoding %d captions with the image model's text encoder", len(texts))
    encode = image_text_encoder(cfg.kind, cfg.image_model, cfg.device)
    targets = encode(texts).cpu()
    negative = encode([""]).cpu()
    return _Data(texts, points.detach(), targets, negative)


def _build(cfg: TranslatorConfig, data: _Data, resumed: Checkpoint | None):
    """A fresh translator (seeded; its mean and negative from the targets) and optimizer, or both read back."""
    reseed_global(cfg.seed, "init")
    model = Translator(
        data.points.shape[1], data.targets.shape[1], data.targets.shape[2], cfg.num_blocks, dropout=cfg.dropout
    )
    with torch.no_grad():
        model.mean.copy_(data.targets.mean(0))
        model.negative.copy_(data.negative)
    if resumed is not None:  # copied into the fresh model: same memory layout, so the same arithmetic as before
        model.load_state_dict(
            Translator.from_pretrained(str(resumed.folder), use_safetensors=True).state_dict(), strict=True
        )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "step": 0, "history": []}
    if resumed is not None:
        restore_optimizer(opt, resumed)
        state = resumed.state
    return model, opt, state


def _run_epoch(cfg: TranslatorConfig, model: Translator, opt, schedule: WarmupCosine, data: _Data, epoch: int) -> float:
    """One pass over the captions in the order and with the noise of (seed, epoch); returns the mean loss."""
    gen = torch_generator(cfg.seed, "epoch", epoch)
    reseed_global(cfg.seed, "dropout", epoch)
    steps_per_epoch = math.ceil(len(data.texts) / cfg.batch_size)
    order = torch.randperm(len(data.texts), generator=gen)
    model.train()
    total = 0.0
    for i in range(steps_per_epoch):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        pred = model(noisy(data.points[idx], cfg.noise, gen))
        loss = F.mse_loss(pred, data.targets[idx])
        schedule.apply(opt, epoch * steps_per_epoch + i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        maybe_crash("translator.step")
        total += loss.item() * len(idx)
    return total / len(data.texts)


@torch.no_grad()
def _clean_error(model: Translator, data: _Data) -> float:
    """Mean squared error on the captions without input noise or dropout."""
    model.eval()
    return F.mse_loss(model(data.points), data.targets).item()
