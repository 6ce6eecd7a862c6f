"""Read the saved parts of a preset, or fail with one line naming the file and what is wrong with it.

Every file of a preset (``preset.json``, the adapters' and translator's ``config.json`` and safetensors, the
caption bank's ``captions.json`` and points, the image model's folders) is read through this module, so a
damaged part never surfaces as a chained traceback from safetensors, json or diffusers, and the CLI and the UI
report it the same way::

    checkpoints/x/adapters/diffusion_pytorch_model.safetensors: not a safetensors file (truncated?)

Weights are safetensors only: a folder holding only a pickle (``.bin``, ``.pt``, ``.ckpt``) is refused before
anything is unpickled, and ``from_pretrained`` is always called with ``use_safetensors=True``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from fusion.errors import CheckpointError, MissingModelError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON file ``path`` (``what`` says which part it is, for the message)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON (truncated?): {err.msg} at line {err.lineno}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a JSON text file ({what})") from None


def safetensors_shapes(path: str | Path) -> dict[str, list[int]]:
    """The tensor shapes a safetensors file announces, after checking its header and length agree."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (truncated?)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header)")
    shapes, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            count = _SAFETENSORS_DTYPE_BYTES[info["dtype"]]
            for dim in info["shape"]:
                count *= int(dim)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: not a safetensors file (bad entry {name!r} in its header)") from None
        if stop - start != count:
            raise CheckpointError(f"{path}: tensor {name!r} announces {count} bytes but holds {stop - start}")
        shapes[name], end = list(info["shape"]), max(end, stop)
    if 8 + length + end != size:
        raise CheckpointError(f"{path}: truncated ({size} bytes, its header announces {8 + length + end})")
    return shapes


def check_weights_folder(folder: str | Path, what: str) -> None:
    """A saved model folder: readable ``config.json`` and at least one sound safetensors file, no pickle only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingModelError(f"{folder}: no such folder ({what})")
    config = read_json(folder / "config.json", f"{what} config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object ({what} config)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{folder}: holds only pickle weights ({', '.join(pickles)}); FuseMix loads safetensors only "
                "(re-save it with save_pretrained(..., safe_serialization=True))"
            )
        raise CheckpointError(f"{folder}: no .safetensors weights ({what})")
    for path in weights:
        safetensors_shapes(path)


def load_model_part(cls: Any, folder: str | Path, what: str) -> Any:
    """``cls.from_pretrained(folder, use_safetensors=True)`` after checking the folder's files."""
    check_weights_folder(folder, what)
    try:
        return cls.from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{folder}: the {what} does not load ({reason})") from err


def check_pipeline_folder(folder: str | Path, what: str = "image model") -> None:
    """A diffusers pipeline folder: ``model_index.json`` and, per component folder, its JSON and weights."""
    folder = Path(folder)
    index = read_json(folder / "model_index.json", f"{what} index")
    if not isinstance(index, dict):
        raise CheckpointError(f"{folder / 'model_index.json'}: expected a JSON object ({what} index)")
    for name in index:
        part = folder / name
        if name.startswith("_") or not part.is_dir():
            continue
        for path in sorted(part.glob("*.json")):
            read_json(path, f"{what} {name}")
        if (part / "config.json").is_file() and any(p.suffix in PICKLE_SUFFIXES for p in part.iterdir()):
            check_weights_folder(part, f"{what} {name}")
        for path in sorted(part.glob("*.safetensors")):
            safetensors_shapes(path)


def part_dim(folder: str | Path, key: str, what: str) -> int | None:
    """An integer field of a saved model's ``config.json`` (e.g. the adapters' ``shared_dim``), None if absent."""
    path = Path(folder) / "config.json"
    config = read_json(path, f"{what} config")
    value = config.get(key) if isinstance(config, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise CheckpointError(f"{path}: {key} must be an integer, got {value!r}")
    return value


def is_local(path: str | None) -> bool:
    """True when a preset entry names an existing file or folder (not a hub id or a registered encoder name)."""
    return path is not None and Path(path).exists()


def check_preset_parts(preset: Any) -> None:
    """Check every saved part of a resolved ``Preset`` before any model loads; one line per problem found."""
    where = Path(preset.folder) / "preset.json" if preset.folder else "the preset"
    for name in ("adapters", "translator", "caption_bank"):
        value = getattr(preset, name)
        if value is not None and not is_local(value):
            raise MissingModelError(f"{where}: {name} {value!r} is not a folder")
    check_weights_folder(preset.adapters, "adapters")
    check_weights_folder(preset.translator, "translator")
    shared = part_dim(preset.adapters, "shared_dim", "adapters")
    if shared is not None:  # S is the heads' widths side by side (fusion.adapters.JoinedTowers)
        shared *= part_dim(preset.adapters, "heads", "adapters") or 1
    takes = part_dim(preset.translator, "in_dim", "translator")
    if shared is not None and takes is not None and shared != takes:
        raise CheckpointError(
            f"{Path(preset.translator) / 'config.json'}: the translator takes dim {takes} but the adapters "
            f"({Path(preset.adapters) / 'config.json'}) give {shared}"
        )
    if preset.caption_bank is not None:
        check_caption_bank(preset.caption_bank, shared)
    if is_local(preset.image_model) and Path(preset.image_model).is_dir():
        check_pipeline_folder(preset.image_model)


def check_caption_bank(folder: str | Path, shared_dim: int | None = None) -> list[str]:
    """The bank's captions, after checking ``captions.json`` and the points' file, count and width."""
    folder = Path(folder)
    captions = read_json(folder / "captions.json", "caption bank captions")
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise CheckpointError(f"{folder / 'captions.json'}: expected a JSON list of strings")
    points = folder / "points.safetensors"
    if not points.is_file():
        raise CheckpointError(f"{points}: missing (caption bank points)")
    shape = safetensors_shapes(points).get("points")
    if shape is None or len(shape) != 2:
        raise CheckpointError(f"{points}: expected one 2-D tensor 'points', got {shape}")
    if shape[0] != len(captions):
        raise CheckpointError(f"{points}: {shape[0]} points but captions.json lists {len(captions)} captions")
    if shared_dim is not None and shape[1] != shared_dim:
        raise CheckpointError(
            f"{points}: points of dim {shape[1]} but the adapters map into dim {shared_dim}: rebuild the bank"
        )
    return captions
