"""Train the translator on captions alone: text latent -> text adapter -> S (+ noise) -> image-model conditioning.

The Gaussian noise on the inputs (TR0N's trick) makes the translator tolerant of the gap between where audio
and text land in S, so audio steers the image model although no audio is seen here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fusion.adapters import FuseMixAdapters
from fusion.cache import load_latents
from fusion.errors import FusemixError
from fusion.train_state import replace_dir
from generator.image_text import image_text_encoder
from generator.translator import Translator

logger = logging.getLogger(__name__)


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


def train_translator(cfg: TranslatorConfig) -> Path:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    cache = load_latents(Path(cfg.text_latents))
    if not cache.texts:
        raise FusemixError(f"{cfg.text_latents} holds no caption texts: extract it with a text encoder")
    adapters = FuseMixAdapters.from_pretrained(cfg.adapters).eval()
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

    model = Translator(points.shape[1], targets.shape[1], targets.shape[2], cfg.num_blocks, dropout=cfg.dropout)
    with torch.no_grad():
        model.mean.copy_(targets.mean(0))
        model.negative.copy_(negative)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))
    )
    scale = targets.pow(2).mean()  # report loss relative to the targets' power
    bar = tqdm(range(cfg.epochs), disable=not cfg.progress, desc="translator", unit="epoch")
    model.train()
    for _ in bar:
        order = torch.randperm(len(texts), generator=gen)
        total_loss = 0.0
        for i in range(0, len(texts), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            pred = model(noisy(points[idx], cfg.noise, gen))
            loss = F.mse_loss(pred, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        bar.set_postfix(rel_mse=f"{total_loss / len(texts) / scale:.4f}")
    model.eval()
    with torch.no_grad():
        clean = F.mse_loss(model(points), targets).item() / scale.item()
    out = Path(cfg.out)
    tmp = out.with_name(f".{out.name}.tmp")
    model.save_pretrained(str(tmp))
    (tmp / "translator_config.json").write_text(
        json.dumps({**asdict(cfg), "num_captions": len(texts), "relative_mse": clean}, indent=1)
    )
    replace_dir(tmp, out)
    logger.info("translator: relative MSE %.4f on %d training captions", clean, len(texts))
    return out
