"""Train the demo world's text-to-image UNet on freshly rendered scenes and training-template captions.

Scenes are drawn on the fly (the demo world is procedural), so the model never sees the held-out
val/test templates: prompting it with test-template captions measures generalisation honestly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from demoworld import scenes
from fusion.train_state import existing_dir, load_training_state, replace_dir, save_training_state
from generator.conditioning import MAX_TOKENS, TokenStateEncoder
from generator.demo_model import build_unet, sampling_scheduler, training_scheduler
from generator.demo_pipeline import DemoImagePipeline

logger = logging.getLogger(__name__)


@dataclass
class ImageModelConfig:
    out: str = "checkpoints/demo/image_model"  # pipeline folder written (EMA weights) + training_state/ for --resume
    steps: int = 6000  # optimisation steps in total (resume continues up to this)
    batch_size: int = 32  # scenes per step
    lr: float = 5e-4  # AdamW peak learning rate
    warmup_steps: int = 200  # linear warm-up, then cosine decay to lr/10
    weight_decay: float = 0.01
    resolution: int = 32  # image side in pixels (64 only on a GPU)
    widths: tuple[int, ...] = (32, 64, 96)  # UNet block widths
    cond_dropout: float = 0.1  # fraction of steps' conditions replaced by the empty prompt (classifier-free guidance)
    cond_noise: float = 0.1  # std of Gaussian noise added to token states, so translated (imperfect) states still work
    ema_decay: float = 0.999  # EMA of weights, saved as the model
    checkpoint_every: int = 250  # steps between atomic checkpoints
    seed: int = 0
    translator: str | None = None  # Translator folder: also train on its outputs, so translated prompts work
    adapters: str | None = None  # FuseMix adapters whose text tower gives the translator's inputs; None: locked MiniLM
    translated_fraction: float = 0.5  # share of each batch conditioned on translator(noisy caption point) instead
    translator_noise: float = 0.05  # noise on the caption's shared-space point before translating (as in training it)
    bf16: bool = True  # bf16 autocast on CPU (~1.2x faster)
    progress: bool = True
    device: str = "cpu"


def render_batch(combo_idx: np.ndarray, rng: np.random.Generator, resolution: int) -> torch.Tensor:
    """Render jittered scenes of the given combinations as a (B, 3, R, R) tensor in [-1, 1]."""
    combos = scenes.all_attribute_combinations()
    images = [scenes.render(scenes.jittered_scene(combos[int(ci)], rng), resolution) for ci in combo_idx]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def load_translated_inputs(folder: str, texts: list[str], device: str, adapters: str | None = None):
    """The translator and the shared-space point of every caption: through ``adapters``' text tower when given
    (token latents if it takes them), else MiniLM's pooled latents (the locked text space)."""
    from fusion.adapters import FuseMixAdapters
    from fusion.encoders import load_encoder
    from generator.translator import Translator

    translator = Translator.from_pretrained(folder).to(device).eval()
    text_encoder = load_encoder("all-MiniLM-L6-v2", device=device)
    if adapters is None:
        points = F.normalize(torch.from_numpy(text_encoder.encode(texts)).to(device), dim=-1)
    else:
        model = FuseMixAdapters.from_pretrained(adapters).to(device).eval()
        latents = text_encoder.encode(texts, tokens=model.tokens_for("text"))
        points = model.embed("text", torch.from_numpy(latents).to(device))
    if points.shape[1] != translator.config.in_dim:
        raise ValueError(
            f"translator {folder} takes dim {translator.config.in_dim}, captions give {points.shape[1]}"
            + ("" if adapters else "; pass the adapters it was trained with (--adapters)")
        )
    return translator, points


def lr_at(step: int, cfg: ImageModelConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_image_model(cfg: ImageModelConfig) -> Path:
    """Train (or resume) and write a loadable pipeline folder at ``cfg.out``."""
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    encoder = TokenStateEncoder(max_tokens=MAX_TOKENS, device=cfg.device)
    bank_items = scenes.training_captions()
    texts = [text for text, _ in bank_items]
    combo_of = np.asarray([index for _, index in bank_items])
    logger.info("encoding %d training captions", len(texts))
    bank = encoder(texts).to(cfg.device)
    null = encoder([""]).to(cfg.device)

    translator, points = None, None
    if cfg.translator:
        translator, points = load_translated_inputs(cfg.translator, texts, cfg.device, cfg.adapters)

    unet = build_unet(cfg.resolution, encoder.dim, tuple(cfg.widths)).to(cfg.device)
    ema = [p.detach().clone() for p in unet.parameters()]
    sched = training_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    state_dir = existing_dir(out / "training_state")
    if state_dir is not None:
        extra, info = load_training_state(state_dir, opt)
        unet.load_state_dict({k[len("unet.") :]: v for k, v in extra.items() if k.startswith("unet.")}, strict=True)
        ema = [extra[f"ema.{i}"].to(cfg.device) for i in range(len(ema))]
        step = int(info["step"])
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(step,)))
        torch.manual_seed(cfg.seed + step)
        logger.info("resuming from step %d", step)

    alphas = sched.alphas_cumprod.to(cfg.device)
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, desc="image model", unit="step")
    t0, losses = time.time(), []
    while step < cfg.steps:
        pick = rng.integers(len(texts), size=cfg.batch_size)
        x0 = render_batch(combo_of[pick], rng, cfg.resolution).to(cfg.device)
        cond = bank[pick]
        if cfg.cond_noise > 0:
            cond = cond + cfg.cond_noise * torch.randn_like(cond)
        if translator is not None:
            use = torch.from_numpy(rng.random(cfg.batch_size) < cfg.translated_fraction).to(cfg.device)
            with torch.no_grad():
                noisy_points = F.normalize(points[pick] + cfg.translator_noise * torch.randn_like(points[pick]), dim=-1)
                translated = translator(noisy_points)
            cond = torch.where(use[:, None, None], translated, cond)
        drop = torch.from_numpy(rng.random(cfg.batch_size) < cfg.cond_dropout).to(cfg.device)
        cond = torch.where(drop[:, None, None], null.expand_as(cond), cond)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), device=cfg.device)
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        xt = a * x0 + s * noise
        target = a * noise - s * x0  # v-prediction
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast(device_type=cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 1 - decay)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(out, unet, ema, opt, sched, step, cfg, float(np.mean(losses[-50:])), time.time() - t0)
    bar.close()
    return out


def save_checkpoint(
    out: Path, unet, ema: list[torch.Tensor], opt, sched, step: int, cfg: ImageModelConfig, loss: float, seconds: float
) -> None:
    """Atomically write the EMA pipeline (what users load) and the training state (what --resume loads)."""
    out.mkdir(parents=True, exist_ok=True)
    ema_unet = build_unet(cfg.resolution, unet.config.cross_attention_dim, tuple(cfg.widths))
    with torch.no_grad():
        for p, e in zip(ema_unet.parameters(), ema, strict=True):
            p.copy_(e)
    tmp = out / f".pipeline-{step}.tmp"
    pipe = DemoImagePipeline(ema_unet, sampling_scheduler(sched))
    pipe.save_pretrained(str(tmp))
    (tmp / "train_config.json").write_text(json.dumps({**asdict(cfg), "step": step, "loss": loss}, indent=1))
    for name in ("unet", "scheduler", "model_index.json", "train_config.json"):
        target = out / name
        if (tmp / name).is_dir():
            replace_dir(tmp / name, target)
        else:
            (tmp / name).replace(target)
    tmp.rmdir()
    state_tmp = out / f".training_state-{step}.tmp"
    extra = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    extra.update({f"ema.{i}": e for i, e in enumerate(ema)})
    save_training_state(state_tmp, opt, extra, {"step": step, "loss": loss, "seconds": seconds})
    replace_dir(state_tmp, out / "training_state")
    logger.info("checkpoint at step %d (loss %.4f)", step, loss)
