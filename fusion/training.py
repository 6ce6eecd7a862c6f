"""What every trainer shares: the warmup-cosine schedule, seeds derived in one place, and the checkpoint manager.

The adapters (``fusion.train``), the demo image model (``generator.train_image_model``) and the translator
(``generator.train_translator``) all use these, so a run of any of them resumes the same way and a resumed run
repeats exactly what the uninterrupted run would have done.

Checkpoint layout (one folder, written to ``.NAME.tmp`` and swapped in atomically; a crash mid-swap leaves
``.NAME.old``, which is read back as the last complete checkpoint)::

    config.json + weights      the model's own ``save_pretrained``, when the trainer keeps its model there
    optimizer.safetensors      optimizer tensors (AdamW moments); its scalars and hyperparameters are in the state
    extra.safetensors          other tensors needed to continue (e.g. EMA weights), when the trainer has any
    trainer_state.json         step / epoch, history, optimizer scalars: everything else needed to continue
    train_config.json          the run's configuration; a resumed run must match it (but for the keys it may change)

No RNG state is saved: every random draw comes from a generator seeded by ``derive_seed(seed, ...)`` with the
step or epoch among its parts, so randomness is a pure function of the configuration and the position in the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fusion.crash import maybe_crash
from fusion.errors import CheckpointError, InputError

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.safetensors"
EXTRA_FILE = "extra.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "train_config.json"


# ---------------------------------------------------------------- schedule


def lr_factor(step: int, warmup_steps: int, total_steps: int, lr: float, min_lr: float) -> float:
    """Multiplier of the peak ``lr`` at ``step``: linear warm-up, then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class WarmupCosine:
    """The one learning-rate schedule of every trainer: a pure function of the step, so resuming needs no state."""

    lr: float  # peak learning rate, reached at the end of the warm-up
    total_steps: int  # step at which the cosine reaches ``min_lr`` (stays there after)
    warmup_steps: int = 0  # linear warm-up steps (0: start at the peak)
    min_lr: float = 0.0  # learning rate at the end of the decay

    def __call__(self, step: int) -> float:
        return self.lr * lr_factor(step, self.warmup_steps, self.total_steps, self.lr, self.min_lr)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's learning rate for ``step`` (call before ``optimizer.step()``)."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


# ---------------------------------------------------------------- seeds


def derive_seed(base: int, *parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``(base, *parts)``: the one rule every trainer seeds from.

    Parts name what the randomness is for and where in the run it is (e.g. ``("order", epoch)``), so two uses
    never share a stream and a resumed run draws what the uninterrupted run drew.
    """
    if base < 0:
        raise ValueError(f"seed must be >= 0, got {base}")
    words = [base]
    for part in parts:
        if isinstance(part, str):
            words.append(zlib.crc32(part.encode()))
        elif part >= 0:
            words.append(int(part))
        else:
            raise ValueError(f"seed parts must be >= 0 or strings, got {part}")
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def torch_generator(base: int, *parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded by ``derive_seed(base, *parts)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(base, *parts))


def numpy_generator(base: int, *parts: int | str) -> np.random.Generator:
    """A numpy generator seeded by ``derive_seed(base, *parts)``."""
    return np.random.default_rng(derive_seed(base, *parts))


def reseed_global(base: int, *parts: int | str) -> None:
    """Reseed torch's global RNG (model init, dropout, ``randn_like``) with ``derive_seed(base, *parts)``."""
    torch.manual_seed(derive_seed(base, *parts))


# ---------------------------------------------------------------- atomic folders


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written ``tmp`` directory into ``final``; a crash leaves ``final`` or ``.final.old`` intact."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    maybe_crash("checkpoint.swap")  # the old checkpoint is aside, the new one not yet in place
    os.replace(tmp, final)
    maybe_crash("checkpoint.swapped")  # the new checkpoint is in, the old one not yet removed
    if old.exists():
        shutil.rmtree(old)


def existing_dir(final: Path) -> Path | None:
    """The last complete directory: ``final``, or ``.final.old`` after a crash mid-swap."""
    old = final.with_name(f".{final.name}.old")
    if final.is_dir():
        return final
    return old if old.is_dir() else None


def fresh_tmp_dir(final: Path) -> Path:
    """An empty ``.final.tmp`` next to ``final``; a leftover from an interrupted save is discarded."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


# ---------------------------------------------------------------- optimizer state without pickle


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into flat tensors (for safetensors) and JSON-able scalars."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of ``optimizer_tensors``."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------- checkpoint manager


@dataclass
class Checkpoint:
    """A checkpoint read back: its folder (the model's own files are there), the state and the extra tensors."""

    folder: Path
    state: dict
    extra: dict[str, torch.Tensor]


@dataclass
class CheckpointManager:
    """Writes and reads one run's checkpoint folder; refuses to overwrite a run unless asked to resume it.

    ``config`` is the run's configuration (JSON-able); ``may_change`` the keys a resumed run may set differently
    (output paths, progress bars, a longer schedule where the trainer allows it); ``defaults`` fill keys that
    checkpoints saved before a field existed lack.
    """

    folder: Path  # the checkpoint folder
    config: dict  # this run's configuration, saved as train_config.json
    may_change: frozenset[str] = frozenset()
    defaults: dict = field(default_factory=dict)
    run_name: str = ""  # how messages name the run (default: the checkpoint folder)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.run_name = self.run_name or str(self.folder)

    def latest(self) -> Path | None:
        """The last complete checkpoint (the folder, or ``.NAME.old`` after a crash mid-swap), if any."""
        for candidate in (self.folder, self.folder.with_name(f".{self.folder.name}.old")):
            if (candidate / STATE_FILE).is_file():
                return candidate
        return None

    def start(self, resume: bool, outputs: Iterable[Path] = ()) -> Checkpoint | None:
        """Check the run may start here and return the checkpoint to resume (None for a fresh run).

        ``outputs``: other files or folders this run writes; finding one without ``resume`` also means the run
        would overwrite something, and is refused.
        """
        found = self.latest()
        old = self.folder.with_name(f".{self.folder.name}.old")
        if found == self.folder and old.is_dir():
            shutil.rmtree(old)  # left by a run killed right after swapping in its last checkpoint
        taken = [p for p in outputs if Path(p).exists()]
        if found is None and self.folder.is_dir() and any(self.folder.iterdir()):
            taken.insert(0, self.folder)
        if not resume:
            if found is not None:
                raise InputError(
                    f"{self.run_name} already holds a checkpoint; pass --resume to continue it or choose another --out"
                )
            if taken:
                raise InputError(f"{taken[0]} already exists; choose another --out or remove it first")
            return None
        if found is None:
            raise InputError(f"--resume: no checkpoint in {self.run_name} to resume from")
        self.check_config(json.loads((found / CONFIG_FILE).read_text()))
        return self.load(found)

    def check_config(self, saved: dict) -> None:
        """Raise a one-line ``CheckpointError`` naming every key whose value differs from the saved run's."""
        changed = [
            k
            for k, value in self.config.items()
            if k not in self.may_change and _plain(saved.get(k, self.defaults.get(k))) != _plain(value)
        ]
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k, self.defaults.get(k))!r} -> {self.config[k]!r}" for k in changed)
            raise CheckpointError(
                f"--resume with a different configuration ({diffs}); use the saved values or a new --out"
            )

    def save(
        self,
        state: dict,
        optimizer: torch.optim.Optimizer | None = None,
        model=None,
        extra: dict[str, torch.Tensor] | None = None,
        files: dict[str, dict] | None = None,
    ) -> Path:
        """Write a complete checkpoint to a temporary folder, then swap it in.

        ``model``: anything with ``save_pretrained(folder)``; ``extra``: more tensors; ``files``: more JSON files.
        """
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = fresh_tmp_dir(self.folder)
        if model is not None:
            model.save_pretrained(tmp)
        full = dict(state)
        if optimizer is not None:
            tensors, full["optimizer"] = optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
        if extra:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(tmp / EXTRA_FILE))
        # plain writes: the folder as a whole is swapped in only once every file is complete
        for name, obj in {**(files or {}), STATE_FILE: full, CONFIG_FILE: self.config}.items():
            (tmp / name).write_text(json.dumps(obj, indent=1))
        maybe_crash("checkpoint.write")
        replace_dir(tmp, self.folder)
        return self.folder

    @staticmethod
    def load(folder: Path) -> Checkpoint:
        """Read a checkpoint folder (the optimizer is restored separately, with ``restore_optimizer``)."""
        state = json.loads((folder / STATE_FILE).read_text())
        extra = load_file(str(folder / EXTRA_FILE)) if (folder / EXTRA_FILE).is_file() else {}
        return Checkpoint(folder=folder, state=state, extra=extra)


def restore_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Load a checkpoint's optimizer tensors and scalars into ``optimizer`` (built over the same parameters)."""
    load_optimizer_tensors(optimizer, load_file(str(checkpoint.folder / OPTIMIZER_FILE)), checkpoint.state["optimizer"])


def _plain(value):
    """JSON's view of a value, so a tuple in the config equals the list it was saved as."""
    return json.loads(json.dumps(value))
