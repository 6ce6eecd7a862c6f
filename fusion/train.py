"""Train FuseMix adapters on cached latents, resumably, on one or several processes (``accelerate launch``).

Each epoch draws one caption per clip, shuffles the clips, and for each batch of ``batch_size`` pairs mixes its
two halves with one λ (FuseMix), so ``batch_size // 2`` mixed pairs enter the symmetric InfoNCE loss.

Randomness is a pure function of (seed, epoch) (``fusion.training.derive_seed``): the data order, caption choice
and λ come from a generator seeded per epoch (the same on every process), and dropout from the global RNG reseeded
per epoch and process. So a run resumed from an epoch checkpoint repeats exactly what the uninterrupted run would
have done; no RNG state is saved.

Several processes: the global batch is split evenly across them; every process gathers all features (with
gradient) and scores its own rows against the whole global batch, so the loss is the global-batch loss and the
negatives are the same as on one process. Only the mixing pairs differ (each process mixes its own halves).

Checkpoint (``OUT/checkpoint``, replaced atomically after every epoch by ``fusion.training.CheckpointManager``):
``config.json`` + ``diffusion_pytorch_model.safetensors`` (the adapters), ``train_config.json``,
``optimizer.safetensors`` (AdamW moments) and ``trainer_state.json`` (epoch, step, optimizer scalars, history).
With ``heads`` K > 1, K such runs (seeds seed .. seed + K - 1) live in ``OUT/head-k/checkpoint`` and
``OUT/checkpoint`` holds their join (``fusion.adapters.join_adapters``), written once every head has finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fusion.adapters import (
    FuseMixAdapters,
    TowerConfig,
    TowerConfigError,
    check_towers,
    join_adapters,
    tower_configs,
)
from fusion.cache import LatentRows, open_latents
from fusion.crash import maybe_crash
from fusion.errors import FusemixError, InputError, MissingFileError
from fusion.evaluate import EvalPairs, evaluate
from fusion.hard_negatives import HardNegatives, encode_with_negatives, fusemix_mix_with_negatives, load_hard_negatives
from fusion.loss import InfoNCELoss
from fusion.mixup import fusemix_mix
from fusion.pairs import Pairing, pair_by_clip, regroup
from fusion.training import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    Checkpoint,
    CheckpointManager,
    WarmupCosine,
    lr_factor,
    numpy_generator,
    reseed_global,
    restore_optimizer,
    torch_generator,
)

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "OPTIMIZER_FILE", "STATE_FILE", "TrainConfig", "find_checkpoint", "lr_factor", "train"]

CHECKPOINT = "checkpoint"
LOG_EVERY = 50  # steps between progress-bar loss updates (each reads the loss back from the device)
# fields that may change between a run and its resumption
RESUMABLE_CHANGES = {"resume", "no_progress", "out", "audio_latents", "text_latents"}
# values of fields added after runs were first recorded: what those runs did (a recipe records them only when set
# otherwise, so its earlier work folders still match)
ADDED_DEFAULTS = {"heads": 1}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``train_config.json`` next to the weights.

    Defaults are the demo recipe's (``generator.recipe.DEFAULT``: thousands of clips, CPU); `fusemix train` also picks
    its towers from the caches (sparse on token latents). The paper's image-text run: epochs 500, batch 40960,
    num_blocks 4, dropout 0.6, lr 1e-3 -> 1e-6 cosine, 100 warm-up steps, weight decay 0.1, alpha 1.
    """

    audio_latents: str  # folder of the audio latent cache (one row per clip)
    text_latents: str  # folder of the caption latent cache (one row per caption; clip_ids name the clip)
    out: str  # run folder; the checkpoint goes to OUT/checkpoint
    epochs: int = 60  # passes over the clips (one caption per clip per epoch); the recipe's, for ~6k clips (~3k: 120)
    batch_size: int = 512  # pairs per step before mixing, over all processes; halves are mixed
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW weight decay on matrices (not on biases, LayerNorm, temperature)
    alpha: float = 0.2  # FuseMix: λ ~ Beta(alpha, alpha); 0.2 mixes token sequences less (paper: 1 on pooled)
    # cache of the captions' swapped versions (`fusemix hard-negatives` + `fusemix extract`, ids <caption id>#swapK):
    # extra negatives in each audio's audio->text softmax (NegCLIP); None: none
    hard_negatives: str | None = None
    hard_negative_limit: int = 2  # hard negatives per caption, at most (its first swaps)
    dropout: float = 0.2  # dropout inside the MLP blocks (paper 0.6 at 40k batch and millions of pairs)
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
    audio_parts: int = 1  # sparse audio adapter: encoders side by side in each latent (2 for a concat:A+B cache)
    audio_part_dropout: list[float] | None = None  # per part: chance an item's part is blanked in training
    val_fraction: float = 0.0  # share of clips held out to report validation retrieval after each epoch
    bf16: bool = False  # bf16 autocast (CPU or GPU); the loss stays float32
    seed: int = 0  # seeds model init, data order, captions, λ and dropout
    # independent runs alike but for the seed (seed, seed + 1, ...) in OUT/head-K, joined into one model whose S is
    # their spaces side by side (fusion.adapters.join_adapters): an ensemble read as one space; 1: one run
    heads: int = 1
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
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.batch_size < 2:
            raise InputError(f"--batch-size must be >= 2 (halves are mixed), got {self.batch_size}")
        if self.heads < 1 or (self.heads > 1 and self.lock_text):
            raise InputError(f"--heads must be >= 1 (and 1 with --lock-text), got {self.heads}")
        if self.hard_negative_limit < 1:
            raise InputError(f"--hard-negative-limit must be >= 1, got {self.hard_negative_limit}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.min_lr < 0 or self.num_blocks < 0:
            raise InputError("--warmup-steps, --weight-decay, --min-lr and --num-blocks must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        try:  # the model's one check of the tower arguments; K (tokens) is read from the caches later
            check_towers(tower_configs(dataclasses.asdict(self)), self.lock_text, tokens_known=False)
        except TowerConfigError as err:
            raise InputError(f"{err} ({tower_flags(err)})") from err


# the command-line flags of TowerConfig fields, for messages (the library names fields, the CLI adds its flags)
TOWER_FLAGS = {
    ("audio", "kind"): "--audio-adapter",
    ("audio", "keep"): "--keep",
    ("text", "kind"): "--text-adapter",
    ("text", "keep"): "--text-keep",
    ("audio", "parts"): "--audio-parts",
    ("audio", "part_dropout"): "--audio-part-dropout",
}
SHARED_TOWER_FLAGS = {
    "sparse_mode": "--sparse-mode",
    "token_blocks": "--token-blocks",
    "lock_text": "--lock-text",
    "tokens": "`fusemix extract --tokens K`",
}


def tower_flags(err: TowerConfigError) -> str:
    """The flags behind the fields a tower error names, e.g. ``--text-keep, --text-adapter``."""
    return ", ".join(TOWER_FLAGS.get((err.modality, f)) or SHARED_TOWER_FLAGS.get(f, f) for f in err.fields)


def find_checkpoint(path: str | Path) -> Path:
    """The model folder for a run folder (``OUT/checkpoint``) or a model folder itself."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT, path / f".{CHECKPOINT}.old"):
        if (candidate / "config.json").is_file():
            return candidate
    raise MissingFileError(f"no FuseMix checkpoint at {path} (expected config.json there or in {path / CHECKPOINT})")


@dataclass
class TrainData:
    """The caches' rows, left on disk (memory-mapped shards), and the pairing; each step gathers its batch by index.

    Memory holds the index arrays and one batch, not the caches: a cache larger than RAM trains in bounded memory.
    The held-out pairs (``val``) are gathered once into memory.
    """

    audio: LatentRows  # the whole audio cache; training clip c is row pairing.audio_rows[c] (and its views)
    text: LatentRows  # the whole caption cache
    pairing: Pairing  # captions grouped by training clip
    val: EvalPairs | None
    hard: HardNegatives | None = None  # the captions' hard negatives (--hard-negatives)

    def batch(self, audio_rows: np.ndarray, captions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 audio cache rows ``audio_rows`` (``Pairing.sample_audio``) and text rows ``captions``, in order."""
        audio = torch.from_numpy(self.audio.take(audio_rows))
        return audio, torch.from_numpy(self.text.take(captions))


def load_train_data(cfg: TrainConfig, mmap: bool = True) -> TrainData:
    """Open both caches (memory-mapped unless ``mmap`` is False), pair them by clip id, hold out ``val_fraction``."""
    audio = open_latents(Path(cfg.audio_latents), mmap=mmap)
    text = open_latents(Path(cfg.text_latents), mmap=mmap)
    pairing = pair_by_clip(audio, text, audio_name=cfg.audio_latents, text_name=cfg.text_latents)
    clips = np.arange(pairing.num_clips)
    val = None
    num_val = int(round(cfg.val_fraction * pairing.num_clips))
    if num_val > 0:
        order = numpy_generator(cfg.seed, "val-split").permutation(pairing.num_clips)
        val_clips, clips = np.sort(order[:num_val]), np.sort(order[num_val:])
        val = _subset_eval_pairs(audio.array, text.array, pairing, val_clips)
    if len(clips) < 2:
        raise FusemixError(f"need at least 2 training clips, got {len(clips)} (check the caches or --val-fraction)")
    train_pairing = _subset_pairing(pairing, clips)
    hard = None
    if cfg.hard_negatives is not None:
        hard = load_hard_negatives(cfg.hard_negatives, text, cfg.hard_negative_limit, train_pairing.caption_rows, mmap)
    return TrainData(audio=audio.array, text=text.array, pairing=train_pairing, val=val, hard=hard)


def _subset_pairing(pairing: Pairing, clips: np.ndarray) -> Pairing:
    positions, starts_new, counts = regroup(pairing.starts, pairing.counts, clips)  # the clips' captions
    return Pairing(
        audio_rows=pairing.audio_rows[clips],
        caption_rows=pairing.caption_rows[positions],
        caption_clip=np.repeat(np.arange(len(clips)), counts),
        starts=starts_new,
        counts=counts,
        **pairing.views_of(clips),
    )


def _subset_eval_pairs(audio: LatentRows, text: LatentRows, pairing: Pairing, clips: np.ndarray) -> EvalPairs:
    sub = _subset_pairing(pairing, clips)
    return EvalPairs(
        audio=torch.from_numpy(audio.take(sub.audio_rows)),
        text=torch.from_numpy(text.take(sub.caption_rows)),
        caption_clip=torch.from_numpy(sub.caption_clip.astype(np.int64)),
        pairing=sub,
    )


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All processes' rows, concatenated in rank order; gradients flow back to each process's own rows."""
    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():  # deprecated in recent torch in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(x.float().contiguous()))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def _adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """Fused AdamW (one kernel over all parameters: ~3x faster steps than foreach on CPU), foreach where unsupported."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch or a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def _check_shape(
    modality: str, kind: str, keep: int | None, latents: LatentRows, source: str, parts: int = 1
) -> int | None:
    """K for a sparse tower (from the cache), None for mlp; a cache of the wrong kind is a clear error."""
    keep_flag = "--keep" if modality == "audio" else "--text-keep"
    if kind == "sparse":
        if latents.ndim != 3:
            raise FusemixError(
                f"--{modality}-adapter sparse needs token latents (items, K, dim) in {source}, got shape "
                f"{tuple(latents.shape)}; extract them with `fusemix extract --tokens K`"
            )
        tokens = int(latents.shape[1])
        try:
            TowerConfig(kind, tokens, keep, parts=parts).check(modality)
        except TowerConfigError as err:
            raise InputError(f"{err}: {source} holds {tokens} tokens per item ({tower_flags(err)})") from err
        return tokens
    if latents.ndim != 2:
        raise FusemixError(
            f"--{modality}-adapter {kind} needs pooled latents (items, dim) in {source}, got shape "
            f"{tuple(latents.shape)}; use --{modality}-adapter sparse {keep_flag} k for token latents"
        )
    return None


@dataclass
class _Run:
    """What the steps of one training run share."""

    cfg: TrainConfig
    accelerator: object  # accelerate.Accelerator
    data: TrainData
    manager: CheckpointManager
    model: torch.nn.Module  # prepared by accelerate
    optimizer: torch.optim.Optimizer  # prepared by accelerate
    schedule: WarmupCosine
    state: dict  # epoch, step, history, and the batch layout: saved as trainer_state.json
    batch: int  # pairs per step over all processes
    local: int  # pairs per step on this process

    def log(self, *args) -> None:
        if self.accelerator.is_main_process:
            logger.info(*args)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the checkpoint folder."""
    cfg.check()
    if cfg.heads > 1:
        return _train_heads(cfg)
    accelerator = _accelerator(cfg)
    manager = checkpoint_manager(cfg)
    resumed = manager.start(cfg.resume)
    run = _prepare_run(cfg, accelerator, load_train_data(cfg), manager, resumed)
    start_epoch = run.state["epoch"]
    if start_epoch >= cfg.epochs:
        run.log("%s already trained for %d epochs; nothing to do", cfg.out, start_epoch)
        return manager.folder
    run.log(
        "training on %d clips (%d captions), %d steps/epoch of %d pairs on %d process(es)",
        run.data.pairing.num_clips,
        run.data.pairing.num_captions,
        run.state["steps_per_epoch"],
        run.batch,
        accelerator.num_processes,
    )
    bar = tqdm(
        total=run.schedule.total_steps,
        initial=run.state["step"],
        disable=cfg.no_progress or not accelerator.is_main_process,
        desc="fusemix train",
        unit="step",
    )
    for epoch in range(start_epoch, cfg.epochs):
        record = _run_epoch(run, epoch, bar)
        _finish_epoch(run, record)
    bar.close()
    return manager.folder


def _train_heads(cfg: TrainConfig) -> Path:
    """Each head a run of its own (OUT/head-K, resumed on its own with ``resume``), then their join at OUT/checkpoint,
    whose trainer_state.json is head 0's record (counts and layout) with each head's last epoch."""
    manager = checkpoint_manager(cfg)
    if not cfg.resume:
        manager.start(False)  # refuses to overwrite a finished join
    elif manager.latest() is not None:
        manager.check_config(json.loads((manager.latest() / CONFIG_FILE).read_text()))
    folders = []
    for head in _heads(cfg):
        resume = cfg.resume and checkpoint_manager(head).latest() is not None
        folders.append(train(dataclasses.replace(head, resume=resume)))
    from accelerate import PartialState  # the state the heads' runs set up

    process = PartialState()
    if process.is_main_process:
        states = [json.loads((folder / STATE_FILE).read_text()) for folder in folders]
        state = {k: v for k, v in states[0].items() if k not in ("history", "optimizer")}
        state["heads"] = [s["history"][-1] for s in states]
        members = [FuseMixAdapters.from_pretrained(folder, use_safetensors=True) for folder in folders]
        manager.save(state, model=join_adapters(members))
        logger.info("joined %d heads into %s", cfg.heads, manager.folder)
    process.wait_for_everyone()
    return manager.folder


def _heads(cfg: TrainConfig) -> list[TrainConfig]:
    """The heads' runs: ``cfg`` with one head, seed + K, in OUT/head-K."""
    return [
        dataclasses.replace(cfg, heads=1, seed=cfg.seed + k, out=str(Path(cfg.out) / f"head-{k}"))
        for k in range(cfg.heads)
    ]


def resumable(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s run has work to continue: its checkpoint or, with heads, any head's."""
    runs = [cfg, *_heads(cfg)] if cfg.heads > 1 else [cfg]
    return any(checkpoint_manager(run).latest() is not None for run in runs)


def checkpoint_manager(cfg: TrainConfig) -> CheckpointManager:
    """The run's checkpoint (``OUT/checkpoint``); a resumed run may change only ``RESUMABLE_CHANGES``."""
    return CheckpointManager(
        Path(cfg.out) / CHECKPOINT,
        dataclasses.asdict(cfg),
        may_change=frozenset(RESUMABLE_CHANGES),
        defaults={f.name: f.default for f in dataclasses.fields(TrainConfig)},  # runs saved before a field existed
        run_name=str(cfg.out),
    )


def _accelerator(cfg: TrainConfig):
    """One accelerate process of the run; the global batch must split evenly over the processes."""
    from accelerate import Accelerator

    # cpu=True on a machine without CUDA lets accelerate run several CPU processes (gloo) when launched by torchrun.
    # bf16 is our own autocast below: accelerate's mixed_precision is fixed once per process (train twice -> error).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if cfg.batch_size % accelerator.num_processes:
        raise InputError(
            f"--batch-size {cfg.batch_size} must be divisible by the number of processes ({accelerator.num_processes})"
        )
    return accelerator


def _prepare_run(cfg: TrainConfig, accelerator, data: TrainData, manager, resumed: Checkpoint | None) -> _Run:
    """Batch layout, model (fresh or resumed), optimizer and schedule, prepared for the processes."""
    world = accelerator.num_processes
    num_clips = data.pairing.num_clips
    batch = min(cfg.batch_size, num_clips - num_clips % world)
    if batch // world < 2:
        raise FusemixError(f"{num_clips} training clips over {world} processes leave fewer than 2 pairs each")
    steps_per_epoch = max(1, num_clips // batch)
    model = _build_model(cfg, data, resumed)
    optimizer = _adamw(_param_groups(model, cfg.weight_decay), cfg.lr)
    if resumed is not None:
        restore_optimizer(optimizer, resumed)
    state = resumed.state if resumed is not None else {"epoch": 0, "step": 0, "history": []}
    state.pop("scheduler", None)  # saved by earlier versions; the schedule is a function of the step
    state.update(train_clips=num_clips, batch_pairs=batch, steps_per_epoch=steps_per_epoch, num_processes=world)
    if data.hard is not None:  # what the negatives were, beside the cache's path: one swap, or a swap and a size
        present = data.hard.index[data.pairing.caption_rows] >= 0
        state["hard_negatives_per_caption"] = round(float(present.sum(1).mean()), 3)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule = WarmupCosine(cfg.lr, steps_per_epoch * cfg.epochs, cfg.warmup_steps, cfg.min_lr)
    return _Run(cfg, accelerator, data, manager, model, optimizer, schedule, state, batch, batch // world)


def _build_model(cfg: TrainConfig, data: TrainData, resumed: Checkpoint | None) -> FuseMixAdapters:
    """The adapters to train: read back from the checkpoint, or built from the config and the caches' shapes."""
    audio_dim, text_dim = data.audio.shape[-1], data.text.shape[-1]
    audio_tokens = _check_shape("audio", cfg.audio_adapter, cfg.keep, data.audio, cfg.audio_latents, cfg.audio_parts)
    text_tokens = _check_shape("text", cfg.text_adapter, cfg.text_keep, data.text, cfg.text_latents)
    reseed_global(cfg.seed, "init")
    if resumed is not None:  # copied into a fresh model: same memory layout, so the same arithmetic as before
        saved = FuseMixAdapters.from_pretrained(resumed.folder, use_safetensors=True)
        model = FuseMixAdapters.from_config(saved.config)
        model.load_state_dict(saved.state_dict(), strict=True)
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
            audio_parts=cfg.audio_parts,
            audio_part_dropout=cfg.audio_part_dropout,
        )
    if (model.config.audio_dim, model.config.text_dim) != (audio_dim, text_dim):
        raise FusemixError(
            f"checkpoint expects audio/text dims {model.config.audio_dim}/{model.config.text_dim}, "
            f"the caches have {audio_dim}/{text_dim}"
        )
    return model


def _run_epoch(run: _Run, epoch: int, bar) -> dict:
    """One pass over the clips with the order, captions and λ of (seed, epoch); returns the epoch's record."""
    cfg, rank, num_clips = run.cfg, run.accelerator.process_index, run.data.pairing.num_clips
    gen = torch_generator(cfg.seed, "epoch", epoch)  # the same on every process
    reseed_global(cfg.seed, "dropout", epoch, rank)
    perm = torch.randperm(num_clips, generator=gen).numpy()
    u = torch.rand(num_clips, generator=gen, dtype=torch.float64).numpy()
    caption_rows = run.data.pairing.sample_captions(u=u)
    # one audio row per clip (own or augmented view) from a stream of its own: order, captions and λ stay as without
    audio_rows = run.data.pairing.sample_audio(numpy_generator(cfg.seed, "audio-view", epoch))
    run.model.train()
    steps = run.state["steps_per_epoch"]
    started, loss_sum = time.perf_counter(), torch.zeros((), device=run.accelerator.device)
    for i in range(steps):
        idx = perm[i * run.batch + rank * run.local : i * run.batch + (rank + 1) * run.local]
        loss = _train_step(run, audio_rows[idx], caption_rows[idx], gen)
        maybe_crash("train.step")
        loss_sum += loss.detach()  # summed on the device: no host sync per step
        bar.update(1)
        if (i + 1) % LOG_EVERY == 0 or i + 1 == steps:  # one host sync per LOG_EVERY steps, for the bar
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
    return {
        "epoch": epoch + 1,
        "step": run.state["step"],
        "loss": float(run.accelerator.reduce(loss_sum / steps, reduction="mean")),
        "seconds": round(time.perf_counter() - started, 3),
        "temperature": float(run.accelerator.unwrap_model(run.model).temperature.detach()),
    }


def _train_step(run: _Run, audio_rows: np.ndarray, captions: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """Mix this process's pairs, score them against the global batch, and take one optimizer step."""
    accelerator, device = run.accelerator, run.accelerator.device
    audio, text = run.data.batch(audio_rows, captions)
    if device.type == "cuda":  # pinned, so the copies overlap the previous step's kernels
        audio, text = audio.pin_memory(), text.pin_memory()
    audio, text = audio.to(device, non_blocking=True), text.to(device, non_blocking=True)
    fa, ft, scale, hard = _mix_and_encode(run, audio, text, captions, gen)
    if accelerator.num_processes > 1:  # each process adds only its own rows' hard negatives: nothing more to gather
        all_a, all_t = _gather_with_grad(fa), _gather_with_grad(ft)
        loss = _LOSSES[run.cfg.bf16](fa, ft, scale, all_a, all_t, offset=accelerator.process_index * len(fa), **hard)
    else:
        loss = _LOSSES[run.cfg.bf16](fa, ft, scale, **hard)
    run.schedule.apply(run.optimizer, run.state["step"])
    run.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    run.optimizer.step()
    run.state["step"] += 1
    return loss


_LOSSES = {False: InfoNCELoss(), True: InfoNCELoss(logits_dtype=torch.bfloat16)}  # by cfg.bf16


def _mix_and_encode(
    run: _Run, audio: torch.Tensor, text: torch.Tensor, captions: np.ndarray, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Mix the pairs (and their hard negatives, same λ and partner) and encode them: features, scale, and the
    loss's hard-negative arguments (none without ``--hard-negatives``)."""
    autocast = torch.autocast(audio.device.type, dtype=torch.bfloat16, enabled=run.cfg.bf16)
    if run.data.hard is None:
        audio, text = fusemix_mix(audio, text, run.cfg.alpha, gen)
        with autocast:
            fa, ft, scale = run.model(audio, text)
        return fa, ft, scale, {}
    hard, mask = (x.to(audio.device, non_blocking=True) for x in run.data.hard.take(captions))
    audio, text, hard, mask = fusemix_mix_with_negatives(audio, text, hard, mask, run.cfg.alpha, gen)
    with autocast:
        fa, ft, scale, hard_features = encode_with_negatives(run.model, audio, text, hard, mask)
    return fa, ft, scale, {"hard_text": hard_features, "hard_mask": mask}


def _finish_epoch(run: _Run, record: dict) -> None:
    """Evaluate on the held-out clips (if any), log, and save the checkpoint."""
    accelerator = run.accelerator
    if run.data.val is not None and accelerator.is_main_process:
        record["val"] = evaluate(accelerator.unwrap_model(run.model), run.data.val)
        r1 = record["val"]["text_to_audio"]["R@1"]
        run.log("epoch %d: loss %.4f, val text->audio R@1 %.3f", record["epoch"], record["loss"], r1)
    else:
        run.log("epoch %d: loss %.4f", record["epoch"], record["loss"])
    run.state["history"].append(record)
    run.state.update(epoch=record["epoch"], step=record["step"])
    if accelerator.is_main_process:
        run.manager.save(run.state, optimizer=run.optimizer, model=accelerator.unwrap_model(run.model))
    accelerator.wait_for_everyone()
