"""The on-disk latent cache: contiguous ``.npy`` shards plus a small ``manifest.json``.

Layout of a cache folder::

    manifest.json          # written last, atomically: encoder, modality, dim, dtype, pooling, tokens,
                           # count, ids, clip_ids, texts (captions only), shards [{file, count}]
    shard-00000.npy        # float array (n, dim) or (n, tokens, dim)
    progress.json          # during extraction only: shards finished so far (for resume); one file per part,
                           # progress-partIIIII-of-NNNNN.json, when several processes or machines share the work

Training opens the shards memory-mapped (``open_latents``) and gathers each batch by index (``LatentRows.take``),
so a cache larger than RAM trains in bounded memory; small jobs read whole arrays (``load_latents``).
"""

from __future__ import annotations

import json
import mmap
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusion.crash import maybe_crash
from fusion.errors import CheckpointError, FusemixError

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
PROGRESS_GLOB = "progress*.json"  # progress.json and the per-part progress-part*.json


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        maybe_crash("atomic.replace")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def remove_stale_temps(folder: Path, names: tuple[str, ...] = (), recursive: bool = False) -> int:
    """Delete the temp files (``.NAME.XXXXXXXX.tmp``) that ``atomic_write_bytes`` leaves when its process is killed
    mid-write: of the files ``names``, or of any file if none are given. Only where no other process writes now."""
    patterns = [f".{name}.*.tmp" for name in names] or [".*.tmp"]
    found = [p for pattern in patterns for p in (Path(folder).rglob if recursive else Path(folder).glob)(pattern)]
    for path in found:
        if path.is_file():
            path.unlink(missing_ok=True)
    return len(found)


def remove_progress(folder: Path) -> None:
    """Delete the progress files of a finished extraction (a run killed right after writing its manifest leaves them)."""
    for path in Path(folder).glob(PROGRESS_GLOB):
        path.unlink(missing_ok=True)


def shard_name(index: int) -> str:
    """File of shard ``index``, i.e. of items ``[index * shard_size, (index + 1) * shard_size)``: the name follows
    from the item range alone, so processes sharing one folder never pick the same name for different items."""
    return f"shard-{index:05d}.npy"


def progress_name(part: int = 0, parts: int = 1) -> str:
    """Progress file of one part of an extraction split ``parts`` ways (``progress.json`` when it is not split)."""
    return PROGRESS if parts == 1 else f"progress-part{part:05d}-of-{parts:05d}.json"


@dataclass
class Latents:
    """A loaded cache: ``array[i]`` is the latent of item ``ids[i]``, which belongs to clip ``clip_ids[i]``."""

    array: np.ndarray | LatentRows  # (n, dim) or (n, tokens, dim); LatentRows from open_latents
    ids: list[str]
    clip_ids: list[str]
    meta: dict = field(default_factory=dict)  # the rest of manifest.json (encoder, modality, dim, ...)
    texts: list[str] | None = None  # the captions, for text caches

    @property
    def dim(self) -> int:
        return int(self.array.shape[-1])

    def __len__(self) -> int:
        return len(self.ids)


def write_latents(
    out: Path, array: np.ndarray, ids: list[str], clip_ids: list[str], meta: dict, texts: list[str] | None = None
) -> Path:
    """Write a whole cache in one shard (tests, synthetic data, small jobs)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(array) != len(ids) or len(ids) != len(clip_ids):
        raise ValueError(f"array, ids and clip_ids must have one length, got {len(array)}, {len(ids)}, {len(clip_ids)}")
    atomic_save_npy(out / shard_name(0), array)
    manifest = dict(meta)
    manifest.update(
        dim=int(array.shape[-1]),
        dtype=str(array.dtype),
        count=len(ids),
        ids=list(ids),
        clip_ids=list(clip_ids),
        shards=[{"file": shard_name(0), "count": len(ids)}],
    )
    manifest.setdefault("tokens", int(array.shape[1]) if array.ndim == 3 else None)
    if texts is not None:
        manifest["texts"] = list(texts)
    atomic_write_json(out / MANIFEST, manifest)
    return out


def _read_manifest(folder: Path) -> dict:
    """The parsed ``manifest.json`` of a cache; one clear line if the cache is unfinished or torn."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        unfinished = any(folder.glob(PROGRESS_GLOB))
        hint = " (extraction unfinished: re-run fusemix extract to resume)" if unfinished else ""
        raise FusemixError(f"no latent cache at {folder}: {MANIFEST} missing{hint}")
    try:
        return json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"latent cache {manifest_path}: not valid JSON (truncated?): {err}") from None


def _open_shards(folder: Path, meta: dict, mmap: bool) -> list[np.ndarray]:
    """Every shard of the cache, read whole or memory-mapped (``mmap``), each checked against the manifest."""
    parts = []
    for shard in meta["shards"]:
        path = folder / shard["file"]
        if not path.is_file():
            raise CheckpointError(f"latent cache {folder} is missing shard {shard['file']}")
        try:
            part = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise CheckpointError(f"latent cache {path}: not a readable .npy shard (truncated?): {err}") from None
        if len(part) != shard["count"]:
            raise CheckpointError(
                f"latent cache {folder}: {shard['file']} holds {len(part)} rows, manifest says {shard['count']}"
            )
        if parts and part.shape[1:] != parts[0].shape[1:]:
            raise CheckpointError(f"latent cache {folder}: {shard['file']} rows have shape {part.shape[1:]}")
        parts.append(part)
    return parts


def _latents(folder: Path, meta: dict, array) -> Latents:
    ids, clip_ids, texts = meta.pop("ids"), meta.pop("clip_ids"), meta.pop("texts", None)
    if len(ids) != len(array):
        raise CheckpointError(f"latent cache {folder}: {len(array)} rows but {len(ids)} ids")
    if meta.get("dim") is not None and int(meta["dim"]) != array.shape[-1]:
        raise CheckpointError(
            f"latent cache {folder}: shards hold dim {array.shape[-1]}, {MANIFEST} says {meta['dim']}"
        )
    return Latents(array=array, ids=ids, clip_ids=clip_ids, meta=meta, texts=texts)


def load_latents(folder: Path, mmap: bool = False) -> Latents:
    """Read a cache written by ``fusemix extract`` or ``write_latents``; fails with one clear line if incomplete.

    ``mmap`` maps a one-shard cache without reading it; several shards are joined in memory (for a cache larger
    than RAM use ``open_latents``, which never joins them).
    """
    folder = Path(folder)
    meta = _read_manifest(folder)
    parts = _open_shards(folder, meta, mmap)
    array = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return _latents(folder, meta, array)


def open_latents(folder: Path, mmap: bool = True) -> Latents:
    """A cache whose ``array`` is a ``LatentRows``: shards stay on disk (memory-mapped), rows are read per batch.

    The trainer's way in: memory holds the ids and one batch, not the cache, however large it grows.
    ``mmap=False`` reads the shards into memory instead (same interface, same values).
    """
    folder = Path(folder)
    meta = _read_manifest(folder)
    return _latents(folder, meta, LatentRows(_open_shards(folder, meta, mmap)))


class LatentRows:
    """The rows of a cache's shards as one indexable sequence, without joining them: ``take(rows)`` gathers a batch.

    Rows are read in sorted order (shard by shard, ascending) and put back in the order asked, so the batch equals
    ``concatenate(shards)[rows]``. From a memory-mapped shard they are read with ``pread`` at their file offsets,
    never through the mapping: a page fault on a file mapping maps its neighbours too (Linux "fault-around", 64 KiB
    by default, regardless of ``MADV_RANDOM``), so indexing 1,024 random rows of a mapped shard put up to 64 MiB of
    it in the resident set per batch, which grew with the cache (``bench/memory.py --caches``). Read by offset,
    the process holds the batch only; the file's pages stay in the OS page cache. ``release()`` still drops the
    pages of anyone who indexes ``shards`` directly.
    """

    def __init__(self, shards: list[np.ndarray]) -> None:
        if not shards:
            raise ValueError("LatentRows needs at least one shard")
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.shape = (int(self.offsets[-1]), *shards[0].shape[1:])
        self.dtype = shards[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """``concatenate(shards)[rows]`` as a new ``dtype`` array, reading each shard's rows in ascending order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must be in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        bounds = np.searchsorted(ascending, self.offsets)
        for shard, offset, lo, hi in zip(self.shards, self.offsets, bounds[:-1], bounds[1:], strict=False):
            if hi > lo:
                local = ascending[lo:hi] - offset
                out[order[lo:hi]] = _pread_rows(shard, local) if _on_disk(shard) else shard[local]
        return out

    def release(self) -> None:
        """Unmap the pages read so far from this process (no-op for shards held in memory)."""
        for shard in self.shards:
            mapping = getattr(shard, "_mmap", None)
            if mapping is not None and hasattr(mapping, "madvise"):
                mapping.madvise(mmap.MADV_DONTNEED)


def _on_disk(shard: np.ndarray) -> bool:
    """Whether ``shard`` is a whole C-ordered ``.npy`` mapping (``np.load(mmap_mode=...)``), readable by offset."""
    return (
        hasattr(os, "preadv")  # POSIX; elsewhere the mapping is indexed
        and isinstance(shard, np.memmap)
        and isinstance(shard.base, mmap.mmap)  # the mapping itself, not a view into it
        and shard.flags.c_contiguous
        and bool(shard.filename)
    )


def _pread_rows(shard: np.memmap, rows: np.ndarray) -> np.ndarray:
    """``shard[rows]`` for ascending ``rows`` (repeats allowed), read from its file with ``pread``: one read per run
    of consecutive rows, into a fresh array, so no page of the mapping becomes resident."""
    first = np.concatenate([[True], rows[1:] != rows[:-1]])
    unique = rows[first]
    buf = np.empty((len(unique), *shard.shape[1:]), dtype=shard.dtype)
    row_bytes = shard.dtype.itemsize * int(np.prod(shard.shape[1:], dtype=np.int64))
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    starts, ends = np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [len(unique)]]).tolist()
    view = memoryview(buf).cast("B")
    with open(shard.filename, "rb", buffering=0) as f:
        for lo, hi in zip(starts, ends, strict=True):
            _pread_into(f.fileno(), view[lo * row_bytes : hi * row_bytes], shard.offset + int(unique[lo]) * row_bytes)
    return buf if len(unique) == len(rows) else buf[np.cumsum(first) - 1]


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``fd`` at ``offset`` (pread may return less than asked for large reads)."""
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise CheckpointError(f"latent shard ended early at byte {offset} (truncated?)")
        view, offset = view[n:], offset + n


def concat_latents(sources: list[tuple[str, Path]], out: Path) -> Path:
    """One cache from several (e.g. two datasets, or two builds of the demo world) as ``(prefix, folder)`` pairs.

    Ids and clip ids get ``prefix`` in front, so clips from different sources never share an id; the caches must
    agree on encoder, modality and shape. Written whole, atomically, like ``write_latents``.
    """
    if not sources:
        raise ValueError("concat_latents needs at least one source cache")
    parts = [(prefix, load_latents(Path(folder))) for prefix, folder in sources]
    first = parts[0][1]
    for (_, folder), (_, cache) in zip(sources, parts, strict=True):
        for key in ("encoder", "modality"):
            if cache.meta.get(key) != first.meta.get(key):
                raise FusemixError(
                    f"cannot join {folder}: its {key} is {cache.meta.get(key)!r}, not {first.meta.get(key)!r}"
                )
        if cache.array.shape[1:] != first.array.shape[1:]:
            raise FusemixError(
                f"cannot join {folder}: rows of shape {cache.array.shape[1:]}, not {first.array.shape[1:]}"
            )
    has_texts = all(cache.texts is not None for _, cache in parts)
    meta = {
        k: v for k, v in first.meta.items() if k not in ("shards", "count", "dim", "dtype", "failed", "fingerprint")
    }
    meta["sources"] = [str(folder) for _, folder in sources]
    return write_latents(
        out,
        np.concatenate([np.asarray(cache.array) for _, cache in parts]),
        [prefix + i for prefix, cache in parts for i in cache.ids],
        [prefix + c for prefix, cache in parts for c in cache.clip_ids],
        meta,
        texts=[t for _, cache in parts for t in cache.texts] if has_texts else None,
    )
