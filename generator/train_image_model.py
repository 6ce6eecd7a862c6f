"""Train the demo world's text-to-image UNet on freshly rendered scenes and training-template captions.

Scenes are drawn on the fly (the demo world is procedural), so the model never sees the held-out
val/test templates: prompting it with test-template captions measures generalisation honestly.

Layout of ``out``: the pipeline users load (``unet/`` with the EMA weights, ``scheduler/``, ``model_index.json``,
``train_config.json``) and ``training_state/``, the checkpoint ``resume=True`` continues from
(``fusion.training.CheckpointManager``: raw UNet and EMA weights in ``extra.safetensors``, the optimizer,
``trainer_state.json``, ``train_config.json``). Every draw of step ``s`` comes from generators seeded by
``derive_seed(seed, ..., s)``, so a resumed run repeats exactly what the uninterrupted run would have done.

A resumed run may raise ``steps`` and add a translator (``RESUMABLE_CHANGES``): that is how the shipped image
model is fine-tuned on its translator's outputs after training on captions alone.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from demoworld import scenes
from fusion.cache import atomic_write_json
from fusion.errors import CheckpointError
from fusion.training import (
    Checkpoint,
    CheckpointManager,
    WarmupCosine,
    numpy_generator,
    replace_dir,
    reseed_global,
    restore_optimizer,
)
from generator.conditioning import MAX_TOKENS, TokenStateEncoder
from generator.demo_model import build_unet, sampling_scheduler, training_scheduler
from generator.demo_pipeline import DemoImagePipeline

logger = logging.getLogger(__name__)

STATE_DIR = "training_state"  # the checkpoint inside the output folder
PIPELINE_PARTS = ("unet", "scheduler", "model_index.json", "train_config.json")
# fields a resumed run may set differently: where and how it runs, and a second stage that trains longer on
# translator outputs as well (the schedule is then the cosine over the new number of steps)
RESUMABLE_CHANGES = frozenset(
    {"out", "progress", "device", "checkpoint_every", "steps", "translator", "adapters", "translated_fraction"}
    | {"translator_noise"}
)
LOSS_WINDOW = 50  # steps in the reported running mean of the loss


@dataclass
class ImageModelConfig:
    """Everything an image-model run depends on; saved with the pipeline and checked when the run is resumed."""

    out: str = "runs/image_model"  # pipeline folder written (EMA weights) + training_state/ for resume
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

    translator = Translator.from_pretrained(folder, use_safetensors=True).to(device).eval()
    text_encoder = load_encoder("all-MiniLM-L6-v2", device=device)
    if adapters is None:
        points = F.normalize(torch.from_numpy(text_encoder.encode(texts)).to(device), dim=-1)
    else:
        model = FuseMixAdapters.from_pretrained(adapters, use_safetensors=True).to(device).eval()
        latents = text_encoder.encode(texts, tokens=model.tokens_for("text"))
        points = model.embed("text", torch.from_numpy(latents).to(device))
    if points.shape[1] != translator.config.in_dim:
        raise CheckpointError(
            f"translator {folder} takes dim {translator.config.in_dim}, captions give {points.shape[1]}"
            + ("" if adapters else "; pass the adapters it was trained with (--adapters)")
        )
    return translator, points


@dataclass
class _Conditions:
    """What each batch's conditioning is drawn from."""

    bank: torch.Tensor  # (captions, tokens, dim) token states of every training caption
    null: torch.Tensor  # (1, tokens, dim) the empty prompt (classifier-free guidance)
    combo_of: np.ndarray  # scene combination of each caption
    translator: torch.nn.Module | None = None  # with ``points``: conditions translated from the shared space
    points: torch.Tensor | None = None  # (captions, shared dim) each caption's point in the shared space


@dataclass
class _Model:
    """The trained state: UNet, its EMA, optimizer, noise schedule, and where the run stands."""

    unet: torch.nn.Module
    ema: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    noise_schedule: object  # diffusers DDPMScheduler
    state: dict  # step, seconds, recent losses (saved as trainer_state.json)


def checkpoint_manager(cfg: ImageModelConfig) -> CheckpointManager:
    """The run's checkpoint, ``OUT/training_state``; a resumed run may change only ``RESUMABLE_CHANGES``."""
    return CheckpointManager(
        Path(cfg.out) / STATE_DIR, asdict(cfg), may_change=RESUMABLE_CHANGES, run_name=str(cfg.out)
    )


def discard(out: str | Path) -> None:
    """Remove what a run wrote into ``out`` (pipeline and training state), so a fresh run may start there."""
    out = Path(out)
    for name in (*PIPELINE_PARTS, STATE_DIR, f".{STATE_DIR}.old", f".{STATE_DIR}.tmp"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def train_image_model(
    cfg: ImageModelConfig, resume: bool = False, encoder: Callable[[list[str]], torch.Tensor] | None = None
) -> Path:
    """Train (or, with ``resume``, continue) and write a loadable pipeline folder at ``cfg.out``.

    A run folder that already holds a model is refused unless ``resume``; ``encoder`` maps captions to token
    states (default: MiniLM, the demo image model's text encoder).
    """
    out = Path(cfg.out)
    manager = checkpoint_manager(cfg)
    resumed = manager.start(resume, outputs=[out / "model_index.json"])
    conds = _load_conditions(cfg, encoder)
    model = _build_model(cfg, conds.bank.shape[-1], resumed)
    schedule = WarmupCosine(cfg.lr, cfg.steps, cfg.warmup_steps, cfg.lr * 0.1)
    step = model.state["step"]
    if step >= cfg.steps:
        logger.info("%s already trained for %d steps; nothing to do", out, step)
        return out
    if resumed is not None:
        logger.info("resuming from step %d", step)
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, desc="image model", unit="step")
    started, seconds = time.perf_counter(), model.state["seconds"]
    while step < cfg.steps:
        loss = _train_step(cfg, model, conds, schedule, step)
        step += 1
        losses = (model.state["losses"] + [loss])[-LOSS_WINDOW:]
        model.state.update(step=step, losses=losses, seconds=seconds + time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save(cfg, manager, model)
    bar.close()
    return out


def _load_conditions(cfg: ImageModelConfig, encoder) -> _Conditions:
    """Token states of every training caption and of the empty prompt; the translator and points if asked."""
    if encoder is None:
        encoder = TokenStateEncoder(max_tokens=MAX_TOKENS, device=cfg.device)
    bank_items = scenes.training_captions()
    texts = [text for text, _ in bank_items]
    logger.info("encoding %d training captions", len(texts))
    conds = _Conditions(
        bank=encoder(texts).to(cfg.device),
        null=encoder([""]).to(cfg.device),
        combo_of=np.asarray([index for _, index in bank_items]),
    )
    if cfg.translator:
        conds.translator, conds.points = load_translated_inputs(cfg.translator, texts, cfg.device, cfg.adapters)
    return conds


def _build_model(cfg: ImageModelConfig, cond_dim: int, resumed: Checkpoint | None) -> _Model:
    """A fresh UNet (seeded) with its EMA and optimizer, or all of them read back from the checkpoint."""
    reseed_global(cfg.seed, "init")
    unet = build_unet(cfg.resolution, cond_dim, tuple(cfg.widths)).to(cfg.device)
    ema = [p.detach().clone() for p in unet.parameters()]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    if resumed is not None:
        extra = resumed.extra
        unet.load_state_dict({k[len("unet.") :]: v for k, v in extra.items() if k.startswith("unet.")}, strict=True)
        ema = [extra[f"ema.{i}"].to(cfg.device) for i in range(len(ema))]
        restore_optimizer(optimizer, resumed)
        state.update({k: resumed.state[k] for k in state if k in resumed.state})
    return _Model(unet, ema, optimizer, training_scheduler(), state)


def _draw_batch(cfg: ImageModelConfig, conds: _Conditions, rng: np.random.Generator):
    """Rendered scenes in [-1, 1] and their conditions: noisy caption states, some translated, some empty."""
    pick = rng.integers(len(conds.bank), size=cfg.batch_size)
    x0 = render_batch(conds.combo_of[pick], rng, cfg.resolution).to(cfg.device)
    cond = conds.bank[pick]
    if cfg.cond_noise > 0:
        cond = cond + cfg.cond_noise * torch.randn_like(cond)
    if conds.translator is not None:
        use = torch.from_numpy(rng.random(cfg.batch_size) < cfg.translated_fraction).to(cfg.device)
        with torch.no_grad():
            points = conds.points[pick]
            translated = conds.translator(F.normalize(points + cfg.translator_noise * torch.randn_like(points), dim=-1))
        cond = torch.where(use[:, None, None], translated, cond)
    drop = torch.from_numpy(rng.random(cfg.batch_size) < cfg.cond_dropout).to(cfg.device)
    return x0, torch.where(drop[:, None, None], conds.null.expand_as(cond), cond)


def _train_step(cfg: ImageModelConfig, model: _Model, conds: _Conditions, schedule: WarmupCosine, step: int) -> float:
    """One v-prediction step on a fresh batch, then the EMA update; every draw is seeded by (seed, step)."""
    reseed_global(cfg.seed, "noise", step)
    x0, cond = _draw_batch(cfg, conds, numpy_generator(cfg.seed, "batch", step))
    noise = torch.randn_like(x0)
    t = torch.randint(0, model.noise_schedule.config.num_train_timesteps, (cfg.batch_size,), device=cfg.device)
    alphas = model.noise_schedule.alphas_cumprod.to(cfg.device)[t]
    a, s = alphas.sqrt()[:, None, None, None], (1 - alphas).sqrt()[:, None, None, None]
    target = a * noise - s * x0  # v-prediction
    schedule.apply(model.optimizer, step)
    with torch.autocast(device_type=cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16):
        pred = model.unet(a * x0 + s * noise, t, encoder_hidden_states=cond).sample
    loss = F.mse_loss(pred.float(), target)
    model.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
    model.optimizer.step()
    with torch.no_grad():
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(model.ema, [p.detach() for p in model.unet.parameters()], 1 - decay)
    return loss.item()


def _save(cfg: ImageModelConfig, manager: CheckpointManager, model: _Model) -> None:
    """Write the EMA pipeline (what users load), then the training state (what resume loads), each atomically."""
    step, loss = model.state["step"], float(np.mean(model.state["losses"]))
    save_pipeline(
        Path(cfg.out), model.unet, model.ema, model.noise_schedule, {**asdict(cfg), "step": step, "loss": loss}
    )
    extra = {f"unet.{k}": v for k, v in model.unet.state_dict().items()}
    extra.update({f"ema.{i}": e for i, e in enumerate(model.ema)})
    manager.save({**model.state, "loss": loss}, optimizer=model.optimizer, extra=extra)
    logger.info("checkpoint at step %d (loss %.4f)", step, loss)


def save_pipeline(out: Path, unet, ema: list[torch.Tensor], noise_schedule, record: dict) -> None:
    """The EMA weights as a loadable pipeline in ``out``, each part swapped in atomically; ``record`` as its config."""
    out.mkdir(parents=True, exist_ok=True)
    ema_unet = build_unet(
        unet.config.sample_size, unet.config.cross_attention_dim, tuple(unet.config.block_out_channels)
    )
    with torch.no_grad():
        for p, e in zip(ema_unet.parameters(), ema, strict=True):
            p.copy_(e)
    tmp = out / ".pipeline.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    DemoImagePipeline(ema_unet, sampling_scheduler(noise_schedule)).save_pretrained(str(tmp))
    atomic_write_json(tmp / "train_config.json", record)
    for name in PIPELINE_PARTS:
        if (tmp / name).is_dir():
            replace_dir(tmp / name, out / name)
        else:
            (tmp / name).replace(out / name)
    tmp.rmdir()
