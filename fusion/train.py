"""Train FuseMix adapters on cached latents, resumably, on one or several processes (``accelerate launch``).

Each epoch draws one caption per clip, shuffles the clips, and for each batch of ``batch_size`` pairs mixes its
two halves with one λ (FuseMix), so ``batch_size // 2`` mixed pairs enter the symmetric InfoNCE loss.

Randomness is a pure function of (seed, epoch): the data order, caption choice and λ come from a generator seeded
per epoch (the same on every process), and dropout from the global RNG reseeded per epoch and process. So a run
resumed from an epoch checkpoint repeats exactly what the uninterrupted run would have done; no RNG state is saved.

Several processes: the global batch is split evenly across them; every process gathers all features (with
gradient) and scores its own rows against the whole global batch, so the loss is the global-batch loss and the
negatives are the same as on one process. Only the mixing pairs differ (each process mixes its own halves).

Checkpoint (``OUT/checkpoint``, replaced atomically after every epoch): ``config.json`` +
``diffusion_pytorch_model.safetensors`` (the adapters), ``train_config.json``, ``optimizer.safetensors``
(AdamW moments) and ``trainer_state.json`` (epoch, step, scheduler, optimizer hyperparameters, history).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from fusion.adapters import ADAPTER_KINDS, FuseMixAdapters
from fusion.cache import atomic_write_json, load_latents
from fusion.errors import FusemixError
from fusion.evaluate import EvalPairs, evaluate
from fusion.loss import InfoNCELoss
from fusion.mixup import fusemix_mix
from fusion.pairs import Pairing, pair_by_clip
from fusion.sparse import SPARSE_MODES
from fusion.train_state import load_optimizer_tensors, optimizer_tensors, replace_dir

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "train_config.json"
# fields that may change between a run and its resumption
RESUMABLE_CHANGES = {"resume", "no_progress", "out", "audio_latents", "text_latents"}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``train_config.json`` next to the weights.

    Defaults suit small data (thousands of clips, CPU). The paper's image-text run: epochs 500, batch 40960,
    num_blocks 4, dropout 0.6, lr 1e-3 -> 1e-6 cosine, 100 warm-up steps, weight decay 0.1, alpha 1.
    """

    audio_latents: str  # folder of the audio latent cache (one row per clip)
    text_latents: str  # folder of the caption latent cache (one row per caption; clip_ids name the clip)
    out: str  # run folder; the checkpoint goes to OUT/checkpoint
    epochs: int = 100  # passes over the clips (one caption per clip per epoch)
    batch_size: int = 1024  # pairs per step before mixing, over all processes; halves are mixed
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW weight decay on matrices (not on biases, LayerNorm, temperature)
    alpha: float = 1.0  # FuseMix: λ ~ Beta(alpha, alpha)
    dropout: float = 0.3  # dropout inside the MLP blocks (paper 0.6 at 40k batch and millions of pairs)
    num_blocks: int = 2  # residual MLP blocks per tower (paper 4)
    expansion: int = 4  # hidden width of a block = expansion x input dim
    shared_dim: int | None = None  # width of the shared space; None: 512, or text_dim with lock_text
    lock_text: bool = False  # text tower = identity: audio learns to land in the text encoder's own space
    audio_adapter: str = "mlp"  # kind of audio tower (fusion.adapters.ADAPTER_KINDS)
    keep: int | None = None  # sparse adapter: tokens kept of the K in the cache (K keeps all); None for mlp
    text_adapter: str = "mlp"  # kind of text tower; "sparse" takes token latents (extract --tokens K)
    text_keep: int | None = None  # sparse text adapter: tokens kept of the K in the text cache
    sparse_mode: str = "topk"  # sparse adapter: "topk" (scored selection) or "slots" (keep learned query slots)
    token_blocks: int = 1  # sparse adapters: transformer blocks over the kept tokens
    val_fraction: float = 0.0  # share of clips held out to report validation retrieval after each epoch
    bf16: bool = False  # bf16 autocast (CPU or GPU); the loss stays float32
    seed: int = 0  # seeds model init, data order, captions, λ and dropout
    resume: bool = False  # continue from OUT/checkpoint
    no_progress: bool = False  # hide the progress bar

    def check(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "alpha": self.alpha,
            "expansion": self.expansion,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.batch_size < 2:
            raise ValueError(f"--batch-size must be >= 2 (halves are mixed), got {self.batch_size}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.min_lr < 0 or self.num_blocks < 0:
            raise ValueError("--warmup-steps, --weight-decay, --min-lr and --num-blocks must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        for modality, kind, keep, keep_flag in (
            ("audio", self.audio_adapter, self.keep, "--keep"),
            ("text", self.text_adapter, self.text_keep, "--text-keep"),
        ):
            if kind not in ADAPTER_KINDS:
                raise ValueError(f"--{modality}-adapter must be one of {ADAPTER_KINDS}, got {kind!r}")
            if kind == "sparse" and (keep is None or keep < 1):
                raise ValueError(f"--{modality}-adapter sparse needs {keep_flag} k >= 1, got {keep}")
            if kind != "sparse" and keep is not None:
                raise ValueError(f"{keep_flag} is for --{modality}-adapter sparse, got --{modality}-adapter {kind}")
        if self.lock_text and self.text_adapter != "mlp":
            raise ValueError("--lock-text keeps text latents as they are: it takes no --text-adapter sparse")
        if self.sparse_mode not in SPARSE_MODES:
            raise ValueError(f"--sparse-mode must be one of {SPARSE_MODES}, got {self.sparse_mode!r}")
        if self.token_blocks < 1:
            raise ValueError(f"--token-blocks must be >= 1, got {self.token_blocks}")


def lr_factor(step: int, warmup_steps: int, total_steps: int, lr: float, min_lr: float) -> float:
    """Multiplier of the peak lr: linear warm-up, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def find_checkpoint(path: str | Path) -> Path:
    """The model folder for a run folder (``OUT/checkpoint``) or a model folder itself."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT, path / f".{CHECKPOINT}.old"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"no FuseMix checkpoint at {path} (expected config.json there or in {path / CHECKPOINT})")


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> dict:
    """Optimizer tensors to safetensors; returns the JSON-able rest (hyperparameters, scalar state)."""
    tensors, meta = optimizer_tensors(optimizer)
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    return meta


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, saved: dict) -> None:
    load_optimizer_tensors(optimizer, load_file(str(folder / OPTIMIZER_FILE)), saved)


@dataclass
class TrainData:
    """Training tensors in memory; batches are gathered with index tensors."""

    audio: torch.Tensor  # (num_clips, ...) one row per training clip
    text: torch.Tensor  # (num_captions_total, dim) the whole caption cache
    pairing: Pairing  # captions grouped by training clip
    val: EvalPairs | None


def load_train_data(cfg: TrainConfig) -> TrainData:
    """Read both caches, pair them by clip id, and hold out ``val_fraction`` of clips (seeded)."""
    audio = load_latents(Path(cfg.audio_latents))
    text = load_latents(Path(cfg.text_latents))
    pairing = pair_by_clip(audio, text, audio_name=cfg.audio_latents, text_name=cfg.text_latents)
    audio_all = torch.from_numpy(np.asarray(audio.array, dtype=np.float32))
    text_all = torch.from_numpy(np.asarray(text.array, dtype=np.float32))
    clips = np.arange(pairing.num_clips)
    val = None
    num_val = int(round(cfg.val_fraction * pairing.num_clips))
    if num_val > 0:
        order = np.random.default_rng(cfg.seed).permutation(pairing.num_clips)
        val_clips, clips = np.sort(order[:num_val]), np.sort(order[num_val:])
        val = _subset_eval_pairs(audio_all, text_all, pairing, val_clips)
    if len(clips) < 2:
        raise FusemixError(f"need at least 2 training clips, got {len(clips)} (check the caches or --val-fraction)")
    train_pairing = _subset_pairing(pairing, clips)
    return TrainData(audio=audio_all[train_pairing.audio_rows], text=text_all, pairing=train_pairing, val=val)


def _subset_pairing(pairing: Pairing, clips: np.ndarray) -> Pairing:
    counts = pairing.counts[clips]
    starts_new = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # positions in caption_rows of the chosen clips' captions, grouped by clip
    positions = np.repeat(pairing.starts[clips] - starts_new, counts) + np.arange(int(counts.sum()))
    return Pairing(
        audio_rows=pairing.audio_rows[clips],
        caption_rows=pairing.caption_rows[positions],
        caption_clip=np.repeat(np.arange(len(clips)), counts),
        starts=starts_new,
        counts=counts,
    )


def _subset_eval_pairs(audio: torch.Tensor, text: torch.Tensor, pairing: Pairing, clips: np.ndarray) -> EvalPairs:
    sub = _subset_pairing(pairing, clips)
    return EvalPairs(
        audio=audio[sub.audio_rows],
        text=text[sub.caption_rows],
        caption_clip=torch.from_numpy(sub.caption_clip.astype(np.int64)),
        pairing=sub,
    )


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All processes' rows, concatenated in rank order; gradients flow back to each process's own rows."""
    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():  # deprecated in recent torch in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(x.float().contiguous()))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def _check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    current = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # runs saved before a field existed
    changed = [k for k in current if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != current[k]]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise FusemixError(f"--resume with a different configuration ({diffs}); use the saved values or a new --out")


def _check_shape(modality: str, kind: str, keep: int | None, latents: torch.Tensor, source: str) -> int | None:
    """K for a sparse tower (from the cache), None for mlp; a cache of the wrong kind is a clear error."""
    keep_flag = "--keep" if modality == "audio" else "--text-keep"
    if kind == "sparse":
        if latents.ndim != 3:
            raise FusemixError(
                f"--{modality}-adapter sparse needs token latents (items, K, dim) in {source}, got shape "
                f"{tuple(latents.shape)}; extract them with `fusemix extract --tokens K`"
            )
        if keep > latents.shape[1]:
            raise FusemixError(f"{keep_flag} {keep} exceeds the {latents.shape[1]} tokens per item in {source}")
        return int(latents.shape[1])
    if latents.ndim != 2:
        raise FusemixError(
            f"--{modality}-adapter {kind} needs pooled latents (items, dim) in {source}, got shape "
            f"{tuple(latents.shape)}; use --{modality}-adapter sparse {keep_flag} k for token latents"
        )
    return None


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the checkpoint folder."""
    from accelerate import Accelerator

    cfg.check()
    out = Path(cfg.out)
    ckpt_dir = out / CHECKPOINT
    # cpu=True on a machine without CUDA lets accelerate run several CPU processes (gloo) when launched by torchrun.
    # bf16 is our own autocast below: accelerate's mixed_precision is fixed once per process (train twice -> error).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    log = logger.info if accelerator.is_main_process else (lambda *args: None)
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the number of processes ({world})")

    existing = None
    for candidate in (ckpt_dir, out / f".{CHECKPOINT}.old"):
        if (candidate / STATE_FILE).is_file():
            existing = candidate
            break
    if existing is not None and not cfg.resume:
        raise FusemixError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    if cfg.resume and existing is None:
        raise FusemixError(f"--resume: no checkpoint in {out} to resume from")

    data = load_train_data(cfg)
    audio_dim, text_dim = data.audio.shape[-1], data.text.shape[-1]
    audio_tokens = _check_shape("audio", cfg.audio_adapter, cfg.keep, data.audio, cfg.audio_latents)
    text_tokens = _check_shape("text", cfg.text_adapter, cfg.text_keep, data.text, cfg.text_latents)
    num_clips = data.pairing.num_clips
    batch = min(cfg.batch_size, num_clips - num_clips % world)
    local = batch // world
    if local < 2:
        raise FusemixError(f"{num_clips} training clips over {world} processes leave fewer than 2 pairs each")
    steps_per_epoch = max(1, num_clips // batch)
    total_steps = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)
    if existing is not None:
        model = FuseMixAdapters.from_pretrained(existing)
        state = json.loads((existing / STATE_FILE).read_text())
        _check_resume_config(json.loads((existing / CONFIG_FILE).read_text()), cfg)
    else:
        model = FuseMixAdapters(
            audio_dim=audio_dim,
            text_dim=text_dim,
            shared_dim=cfg.shared_dim,
            num_blocks=cfg.num_blocks,
            expansion=cfg.expansion,
            dropout=cfg.dropout,
            lock_text=cfg.lock_text,
            audio_adapter=cfg.audio_adapter,
            audio_tokens=audio_tokens,
            keep=cfg.keep,
            sparse_mode=cfg.sparse_mode,
            text_adapter=cfg.text_adapter,
            text_tokens=text_tokens,
            text_keep=cfg.text_keep,
            token_blocks=cfg.token_blocks,
        )
        state = {"epoch": 0, "step": 0, "history": []}
    if (model.config.audio_dim, model.config.text_dim) != (audio_dim, text_dim):
        raise FusemixError(
            f"checkpoint expects audio/text dims {model.config.audio_dim}/{model.config.text_dim}, "
            f"the caches have {audio_dim}/{text_dim}"
        )
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.lr, cfg.min_lr)
    )
    if existing is not None:  # after the scheduler's constructor, which sets the lr of step 0
        _load_optimizer(optimizer, existing, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = InfoNCELoss()
    device = accelerator.device
    start_epoch, step = state["epoch"], state["step"]
    state.update(train_clips=num_clips, batch_pairs=batch, steps_per_epoch=steps_per_epoch, num_processes=world)
    if start_epoch >= cfg.epochs:
        log("%s already trained for %d epochs; nothing to do", out, start_epoch)
        return ckpt_dir
    log(
        "training on %d clips (%d captions), %d steps/epoch of %d pairs on %d process(es)",
        num_clips,
        data.pairing.num_captions,
        steps_per_epoch,
        batch,
        world,
    )

    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=cfg.no_progress or not accelerator.is_main_process,
        desc="fusemix train",
        unit="step",
    )
    for epoch in range(start_epoch, cfg.epochs):
        gen = _epoch_generator(cfg.seed, epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank + 1)  # dropout
        perm = torch.randperm(num_clips, generator=gen)
        caption_rows = torch.from_numpy(
            data.pairing.sample_captions(u=torch.rand(num_clips, generator=gen, dtype=torch.float64).numpy())
        )
        model.train()
        started, losses = time.perf_counter(), []
        for i in range(steps_per_epoch):
            idx = perm[i * batch + rank * local : i * batch + (rank + 1) * local]
            audio = data.audio[idx].to(device, non_blocking=True)
            text = data.text[caption_rows[idx]].to(device, non_blocking=True)
            audio, text = fusemix_mix(audio, text, cfg.alpha, gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                fa, ft, scale = model(audio, text)
            if world > 1:
                all_a, all_t = _gather_with_grad(fa), _gather_with_grad(ft)
                loss = loss_fn(fa, ft, scale, all_a, all_t, offset=rank * len(fa))
            else:
                loss = loss_fn(fa, ft, scale)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.detach())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
        epoch_loss = float(accelerator.reduce(torch.stack(losses).mean(), reduction="mean"))
        record = {
            "epoch": epoch + 1,
            "step": step,
            "loss": epoch_loss,
            "seconds": round(time.perf_counter() - started, 3),
            "temperature": float(accelerator.unwrap_model(model).temperature.detach()),
        }
        if data.val is not None and accelerator.is_main_process:
            metrics = evaluate(accelerator.unwrap_model(model), data.val)
            record["val"] = metrics
            log("epoch %d: loss %.4f, val text->audio R@1 %.3f", epoch + 1, epoch_loss, metrics["text_to_audio"]["R@1"])
        else:
            log("epoch %d: loss %.4f", epoch + 1, epoch_loss)
        state["history"].append(record)
        state.update(epoch=epoch + 1, step=step)
        if accelerator.is_main_process:
            _save_checkpoint(accelerator.unwrap_model(model), optimizer, scheduler, state, cfg, out)
        accelerator.wait_for_everyone()
    bar.close()
    return ckpt_dir


def _save_checkpoint(model: FuseMixAdapters, optimizer, scheduler, state: dict, cfg: TrainConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CHECKPOINT}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    full = dict(state)
    full["optimizer"] = _save_optimizer(optimizer, tmp)
    full["scheduler"] = scheduler.state_dict()
    atomic_write_json(tmp / STATE_FILE, full)
    atomic_write_json(tmp / CONFIG_FILE, dataclasses.asdict(cfg))
    replace_dir(tmp, out / CHECKPOINT)
