"""Save and restore training state without pickle: tensors in safetensors, scalars in JSON, directories swapped atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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


def save_training_state(
    folder: Path, optimizer: torch.optim.Optimizer, extra_tensors: dict[str, torch.Tensor], info: dict
) -> None:
    """Write optimizer.safetensors, extra.safetensors and state.json into ``folder`` (which must be a fresh temp dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = optimizer_tensors(optimizer)
    save_file(tensors, str(folder / "optimizer.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()}, str(folder / "extra.safetensors"))
    (folder / "state.json").write_text(json.dumps({"optimizer": meta, **info}, indent=1))


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the optimizer; return (extra tensors, info dict)."""
    info = json.loads((folder / "state.json").read_text())
    load_optimizer_tensors(optimizer, load_file(str(folder / "optimizer.safetensors")), info.pop("optimizer"))
    return load_file(str(folder / "extra.safetensors")), info


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written ``tmp`` directory into ``final``; a crash leaves ``final`` or ``.final.old`` intact."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def existing_dir(final: Path) -> Path | None:
    """The last complete checkpoint directory: ``final``, or ``.final.old`` after a crash mid-swap."""
    old = final.with_name(f".{final.name}.old")
    if final.is_dir():
        return final
    return old if old.is_dir() else None
