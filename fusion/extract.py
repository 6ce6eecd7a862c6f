"""Encode a manifest's audio or captions once with a frozen encoder and cache the latents on disk, resumably.

The item list is cut into fixed shards of ``shard_size`` items; shard ``k`` holds items ``[k * shard_size,
(k + 1) * shard_size)`` and is saved atomically as ``shard-<k>.npy``, then recorded in a progress file. A re-run
with the same arguments skips recorded shards, so ``kill -9`` loses at most the shard in flight. ``manifest.json``
(the format of ``fusion.cache``) is written last, and the progress files removed, once every shard is done. Audio
files that cannot be decoded are skipped and listed in ``failures.json`` unless ``strict`` is set.

Scaling out: the shard plan is split into contiguous parts, one per process. ``num_shards``/``shard_index`` pick
a part for one job of a cluster job array; under ``torchrun`` or ``accelerate launch`` (RANK/WORLD_SIZE in the
environment) each process further takes its rank's slice, on its own device. Every part writes its shards into the
same folder (names follow the item ranges, so they never collide) and its own ``progress-partI-of-N.json``.
Under a launcher, rank 0 writes the manifest after a barrier; across a job array, the part that finishes last does
(or ``finalize``, i.e. ``fusemix extract --finalize``). Parts that disagree (encoder, tokens, dim, dtype, manifest)
are refused with one line. The merged cache equals a one-process run: same ids in the same order, same arrays.

Items: an audio encoder gives one latent per clip (id = clip id); a text encoder gives one per caption
(id = ``<clip id>#<k>``, with the clip id and the caption text kept alongside). With ``augment`` K > 0 (audio only)
each clip's row is followed by K rows of augmented views (id = ``<clip id>#aug<k>``, k = 1..K, clip id = the
clip's; ``fusion.augment``): a view is a function of (augment_seed, clip id, k), so resumed and split runs agree,
and the fingerprint records K, the seed and the effects' recipe, so a run with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fusion.audio import load_audio
from fusion.cache import (
    MANIFEST,
    PROGRESS_GLOB,
    atomic_save_npy,
    atomic_write_json,
    progress_name,
    remove_progress,
    remove_stale_temps,
    shard_name,
)
from fusion.crash import maybe_crash
from fusion.errors import AudioError, FusemixError, InputError
from fusion.manifests import read_manifest

log = logging.getLogger(__name__)

FAILURES = "failures.json"
FORMAT_VERSION = 1
# Under a launcher, ranks that finish early wait at a barrier for the slowest one: extractions can take days.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass
class ExtractConfig:
    """What ``extract`` encodes and where it writes; ``fusemix extract`` fills it from the command line."""

    encoder: str  # encoder name, as fusion.encoders.load_encoder knows it
    manifest: Path  # AudioCaps CSV, Clotho captions CSV or generic JSONL/CSV
    out: Path  # cache folder (created; an unfinished one with the same arguments is resumed)
    tokens: int | None = None  # token-level latents (n, tokens, dim) instead of pooled vectors (n, dim)
    batch_size: int = 16  # items per encoder call
    shard_size: int = 1024  # items per shard file: the most work a crash can lose
    strict: bool = False  # any unreadable audio file stops the run instead of being skipped
    audio_dir: Path | None = None  # where relative audio paths resolve (default: the manifest's folder)
    device: str = "cpu"  # torch device of the encoder ("cuda" under a launcher: cuda:LOCAL_RANK)
    progress: bool = True  # show a tqdm progress bar
    max_seconds: float = 60.0  # audio longer than this is a failure
    workers: int = 2  # threads decoding audio while the encoder runs
    num_shards: int = 1  # parts the work is split into across jobs (a cluster job array); 1: not split
    shard_index: int = 0  # the part this job encodes, 0 <= shard_index < num_shards
    augment: int = 0  # augmented views per clip besides the clean one (audio encoders only); 0: none
    augment_seed: int = 0  # seeds the views: view k of a clip depends on (augment_seed, clip id, k) only


@dataclass(frozen=True)
class Item:
    """One thing to encode: a clip's audio or one of its captions."""

    id: str
    clip_id: str
    audio: Path | None = None  # audio items
    text: str | None = None  # caption items
    view: int = 0  # audio items: 0 the clip as it is, k >= 1 its k-th augmented view


@dataclass(frozen=True)
class Part:
    """The slice of the shard plan one process encodes: part ``index`` of ``count`` (job-array part x rank)."""

    index: int = 0
    count: int = 1
    rank: int = 0  # rank in the launcher's process group (torchrun, accelerate launch); 0 without one
    world: int = 1  # processes in that group
    local_rank: int = 0  # rank on this machine: picks the device

    @property
    def progress_file(self) -> str:
        return progress_name(self.index, self.count)

    def shards(self, total: int) -> range:
        """This part's shard indices (contiguous) in a plan of ``total`` shards."""
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)


def current_part(config: ExtractConfig) -> Part:
    """This process's part: the job's ``shard_index`` of ``num_shards``, split by a launcher's RANK/WORLD_SIZE."""
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    try:
        world, rank, local = (
            int(os.environ.get(name, default)) for name, default in zip(names, (1, 0, 0), strict=True)
        )
    except ValueError:
        values = ", ".join(f"{name}={os.environ.get(name)!r}" for name in names)
        raise FusemixError(f"launcher environment: {values}; expected integers") from None
    if world < 1 or not 0 <= rank < world:
        raise FusemixError(f"launcher environment: RANK={rank} is not in [0, WORLD_SIZE={world})")
    return Part(config.shard_index * world + rank, config.num_shards * world, rank, world, local)


def load_encoder(name: str, device: str = "cpu") -> Any:
    """Indirection so that importing this module does not load any model code (and tests can swap encoders)."""
    from fusion.encoders import load_encoder as _load_encoder

    return _load_encoder(name, device=device)


def extract(config: ExtractConfig) -> Path:
    """Run (or resume) this process's part of an extraction; returns the cache folder.

    Unsplit, the folder is finished on return (``fusion.cache.load_latents`` reads it). Split, it is finished once
    the last part is in: see the module docstring for who writes the manifest.
    """
    _validate(config)
    out = Path(config.out)
    part = current_part(config)
    clips = read_manifest(config.manifest, config.audio_dir)
    finished = _read_json(out / MANIFEST)
    if finished is not None:
        modality = finished.get("modality", "")
        _check_augment(config, modality)
        expected = _fingerprint(config, modality, _items(clips, modality, config.augment))
        _check_same_run(out, finished.get("fingerprint"), expected, "finished")
        log.info("%s already holds this extraction (%d items); nothing to do", out, finished["count"])
        remove_progress(out)  # left by a run killed right after writing the manifest
        return out
    parts = _read_parts(out)
    _check_unfinished(out, config, clips, parts)

    joined = _join_launcher(part)
    try:
        encoder = load_encoder(config.encoder, device=_device(config.device, part))
        modality, items, own = _start_part(out, config, part, encoder, clips, parts)
        parts[part.progress_file] = own
        _encode_part(out, config, part, encoder, items, parts)
        _conclude(out, config, part, items)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    return out


def _validate(config: ExtractConfig) -> None:
    for name in ("batch_size", "shard_size", "workers"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if config.tokens is not None and (not isinstance(config.tokens, int) or config.tokens < 1):
        raise InputError(f"tokens must be a positive integer, got {config.tokens!r}")
    if not isinstance(config.num_shards, int) or config.num_shards < 1:
        raise InputError(f"num_shards must be a positive integer, got {config.num_shards!r}")
    if not isinstance(config.shard_index, int) or not 0 <= config.shard_index < config.num_shards:
        raise InputError(f"shard_index must be in [0, num_shards={config.num_shards}), got {config.shard_index!r}")
    if config.max_seconds <= 0:
        raise InputError(f"max_seconds must be positive, got {config.max_seconds!r}")
    if not isinstance(config.augment, int) or config.augment < 0:
        raise InputError(f"augment must be a non-negative integer, got {config.augment!r}")
    if not isinstance(config.augment_seed, int) or config.augment_seed < 0:
        raise InputError(f"augment_seed must be a non-negative integer, got {config.augment_seed!r}")


def _check_augment(config: ExtractConfig, modality: str) -> None:
    """Views are of audio: a caption cache with --augment is a mistake, said before anything is written."""
    if config.augment and modality == "text":
        raise InputError(
            f"--augment {config.augment}: encoder {config.encoder!r} encodes text; augmented views are for audio encoders"
        )


def _modality(encoder: Any) -> str:
    modality = getattr(encoder, "modality", None)
    if modality not in ("audio", "text"):
        raise FusemixError(
            f"encoder {getattr(encoder, 'name', encoder)!r} has modality {modality!r}, expected audio or text"
        )
    if modality == "audio" and not getattr(encoder, "sample_rate", None):
        raise FusemixError(f"audio encoder {encoder.name!r} declares no sample_rate")
    return modality


def _items(clips: list, modality: str, views: int = 0) -> list[Item]:
    """What to encode, in cache row order: each clip then its ``views`` augmented views, or each caption."""
    if modality == "audio":
        return [
            Item(clip.id if k == 0 else f"{clip.id}#aug{k}", clip.id, audio=clip.audio, view=k)
            for clip in clips
            for k in range(views + 1)
        ]
    if modality == "text":
        return [Item(f"{clip.id}#{k}", clip.id, text=c) for clip in clips for k, c in enumerate(clip.captions)]
    return []


def _check_unique_ids(manifest: Path, items: list[Item]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise FusemixError(f"manifest {manifest}: item id {item.id!r} occurs twice")
        seen.add(item.id)


def _fingerprint(config: ExtractConfig, modality: str, items: list[Item]) -> dict:
    """What must not change between a run and its resumption, nor between the parts of one run."""
    return {
        "version": FORMAT_VERSION,
        "encoder": config.encoder,
        "modality": modality,
        "tokens": config.tokens,
        "shard_size": config.shard_size,
        "max_seconds": config.max_seconds if modality == "audio" else None,
        **_augment_fingerprint(config.augment, config.augment_seed),
        **_items_fingerprint(items),
    }


def _augment_fingerprint(views: int, seed: int) -> dict:
    """Present only with views, so caches written before --augment existed keep their fingerprint."""
    if not views:
        return {}
    from fusion.augment import RECIPE

    return {"augment": views, "augment_seed": seed, "augment_recipe": RECIPE}


def _items_fingerprint(items: list[Item]) -> dict:
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, item.clip_id, str(item.audio) if item.audio else None, item.text]).encode())
    return {"items": len(items), "items_sha256": digest.hexdigest()}


def _check_same_run(out: Path, found: dict | None, expected: dict, state: str) -> None:
    if found == expected:
        return
    if not isinstance(found, dict):
        raise FusemixError(f"{out} holds a {state} latent cache not written by fusemix extract; use another --out")
    names = {
        "items": "manifest items",
        "items_sha256": "manifest contents",
        "augment": "--augment views",
        "augment_seed": "--augment-seed",
        "augment_recipe": "augmentation recipe",
    }
    differs = [
        f"{names.get(key, key)} ({found.get(key)!r} there, {expected.get(key)!r} now)"
        if key != "items_sha256"
        else names[key]
        for key in {**found, **expected}  # a key only one side has (e.g. augment) differs too
        if found.get(key) != expected.get(key)
    ]
    raise FusemixError(
        f"{out} holds a {state} extraction with different arguments: {'; '.join(differs)}. "
        "Re-run with the same arguments to resume, or use another --out"
    )


def _shard_intact(out: Path, index: int, record: dict) -> bool:
    if record.get("count", 0) == 0:
        return True
    path = out / record["file"]
    if not path.is_file():
        return False
    try:
        return len(np.load(path, mmap_mode="r", allow_pickle=False)) == record["count"]
    except (ValueError, OSError):
        return False


def _encode_shard(
    encoder: Any, modality: str, items: list[Item], config: ExtractConfig, pool: ThreadPoolExecutor, bar: tqdm
) -> tuple[np.ndarray, list[dict]]:
    """Encode one shard's items; returns the latents of the items that worked and a record of those that did not."""
    parts: list[np.ndarray] = []
    failures: list[dict] = []
    for batch, inputs in _batches(modality, items, config, pool, getattr(encoder, "sample_rate", None)):
        ok: list[Any] = []
        for item, value in zip(batch, inputs, strict=True):
            if isinstance(value, AudioError):
                failures.append({"id": item.id, "file": str(item.audio) if item.audio else None, "reason": str(value)})
                if config.strict:
                    raise AudioError(f"{value} (--strict stops at the first bad file)")
                log.warning("skipping %s", value)
                continue
            ok.append(value)
        if ok:
            parts.append(_encode_batch(encoder, ok, config.tokens, batch[0].id))
        bar.update(len(batch))
    if parts:
        return np.concatenate(parts), failures
    shape = (0, config.tokens, _latent_dim(encoder, config.tokens)) if config.tokens else (0, encoder.dim)
    return np.zeros(shape, dtype=np.float32), failures


def _batches(
    modality: str, items: list[Item], config: ExtractConfig, pool: ThreadPoolExecutor, sample_rate: int | None
) -> Iterator[tuple[list[Item], list[Any]]]:
    """Yield (items, inputs) per batch; audio of the next batch decodes in threads while this one is encoded."""
    batches = [items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    if modality == "text":
        for batch in batches:
            yield batch, [item.text for item in batch]
        return
    decode = partial(_decode, sample_rate=sample_rate, max_seconds=config.max_seconds, augment_seed=config.augment_seed)
    pending: list[Future] | None = None
    for i, batch in enumerate(batches):
        current = pending if pending is not None else [pool.submit(decode, item) for item in batch]
        pending = [pool.submit(decode, item) for item in batches[i + 1]] if i + 1 < len(batches) else None
        yield batch, [future.result() for future in current]


def _decode(item: Item, sample_rate: int, max_seconds: float, augment_seed: int = 0) -> np.ndarray | AudioError:
    """Decode one clip (and make its view) for the encoder; a bad file becomes a value, so the batch goes on."""
    if item.audio is None:
        return AudioError(f"clip {item.id}: the manifest gives no audio file")
    try:
        audio = load_audio(item.audio, sample_rate, max_seconds=max_seconds)
    except AudioError as err:
        return err
    if item.view == 0:
        return audio
    from fusion.augment import augment_view

    return augment_view(audio, sample_rate, augment_seed, item.clip_id, item.view)


def _encode_batch(encoder: Any, inputs: list[Any], tokens: int | None, first_id: str) -> np.ndarray:
    latents = np.asarray(encoder.encode(inputs, tokens=tokens))
    expected = (len(inputs), tokens, _latent_dim(encoder, tokens)) if tokens else (len(inputs), encoder.dim)
    if latents.shape != expected:
        raise FusemixError(f"encoder {encoder.name!r} returned shape {latents.shape} for a batch, expected {expected}")
    if not np.isfinite(latents).all():
        raise FusemixError(f"encoder {encoder.name!r} returned NaN/inf latents for the batch starting at {first_id!r}")
    return latents.astype(np.float32, copy=False)


def _latent_dim(encoder: Any, tokens: int | None) -> int:
    """Size of one latent: token-level latents may be wider than pooled ones (pooled ones can be projected)."""
    return int(getattr(encoder, "token_dim", encoder.dim) if tokens else encoder.dim)


def _part_dims(encoder: Any, tokens: int | None) -> list[int] | None:
    """Widths of the encoders side by side in a ``concat:A+B`` latent (None for one encoder): `fusemix train` reads
    a cache of equal parts as A's tokens then B's."""
    parts = getattr(encoder, "parts", None)
    return None if parts is None else [_latent_dim(part, tokens) for part in parts]


def _check_unfinished(out: Path, config: ExtractConfig, clips: list, parts: dict[str, dict]) -> None:
    """Refuse to resume (or join) parts written with other arguments, before any model is loaded."""
    expected: dict[str, dict] = {}
    for progress in parts.values():
        modality = progress.get("modality", "")
        if modality not in expected:
            _check_augment(config, modality)
            expected[modality] = _fingerprint(config, modality, _items(clips, modality, config.augment))
        _check_same_run(out, progress.get("fingerprint"), expected[modality], "unfinished")


def _device(device: str, part: Part) -> str:
    """One device per process: under a launcher, a bare ``cuda`` means this machine's GPU of rank LOCAL_RANK."""
    return f"cuda:{part.local_rank}" if part.world > 1 and device == "cuda" else device


def _join_launcher(part: Part) -> bool:
    """Join the launcher's process group (gloo: only a barrier goes over it); False if none or already joined."""
    if part.world == 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", rank=part.rank, world_size=part.world, timeout=BARRIER_TIMEOUT)
    return True


def _start_part(
    out: Path, config: ExtractConfig, part: Part, encoder: Any, clips: list, parts: dict[str, dict]
) -> tuple[str, list[Item], dict]:
    """Check the items and this part against the others, then record (or re-record) this part's progress file."""
    modality = _modality(encoder)
    _check_augment(config, modality)
    items = _items(clips, modality, config.augment)
    if not items:
        raise FusemixError(f"manifest {config.manifest}: no {'audio' if modality == 'audio' else 'captions'} to encode")
    _check_unique_ids(config.manifest, items)
    fingerprint = _fingerprint(config, modality, items)
    own = parts.get(part.progress_file) or {"fingerprint": fingerprint, "modality": modality, "shards": {}}
    own.update(
        encoder=config.encoder,
        part=[part.index, part.count],
        meta={
            "dim": _latent_dim(encoder, config.tokens),
            "dtype": "float32",
            "pooling": getattr(encoder, "pooling", None),
            "sample_rate": getattr(encoder, "sample_rate", None) if modality == "audio" else None,
            "part_dims": _part_dims(encoder, config.tokens),
        },
        manifest=str(Path(config.manifest).resolve()),
        audio_dir=str(Path(config.audio_dir).resolve()) if config.audio_dir else None,
    )
    _check_parts_agree(out, {**parts, part.progress_file: own})
    out.mkdir(parents=True, exist_ok=True)
    mine = part.shards(-(-len(items) // config.shard_size))
    stale = [f".{shard_name(index)}.*.tmp" for index in mine] + [f".{part.progress_file}.*.tmp"]
    for path in [p for pattern in stale for p in out.glob(pattern)]:
        path.unlink(missing_ok=True)  # half-written by a killed run of this part (other parts' are theirs)
    atomic_write_json(out / part.progress_file, own)
    return modality, items, own


def _encode_part(
    out: Path, config: ExtractConfig, part: Part, encoder: Any, items: list[Item], parts: dict[str, dict]
) -> None:
    """Encode this part's shards that no progress file records as done; record each one once it is on disk."""
    own = parts[part.progress_file]
    modality = own["modality"]
    plan = [items[i : i + config.shard_size] for i in range(0, len(items), config.shard_size)]
    mine = part.shards(len(plan))
    if part.count > 1 and not mine:
        log.info("part %d of 0..%d: no shards to encode (%d shards in all)", part.index, part.count - 1, len(plan))
    elif part.count > 1:
        log.info(
            "part %d of 0..%d: shards %d-%d of %d (%d items)",
            *(part.index, part.count - 1, mine.start, mine.stop - 1, len(plan), sum(len(plan[i]) for i in mine)),
        )
    done = set(_intact_records(out, parts)) & set(mine)
    recorded = {int(k) for progress in parts.values() for k in progress["shards"]} & set(mine)
    for index in sorted(recorded - done):
        log.warning("%s: shard %d recorded but its file is missing or short; encoding it again", out, index)
        own["shards"].pop(str(index), None)
    if done:
        log.info("resuming %s: %d of this part's %d shards already done", out, len(done), len(mine))

    where = f" [part {part.index} of 0..{part.count - 1}]" if part.count > 1 else ""
    bar = tqdm(
        total=sum(len(plan[i]) for i in mine),
        initial=sum(len(plan[i]) for i in done),
        unit="clip" if modality == "audio" else "caption",
        desc=f"extract {config.encoder}{where}",
        disable=not config.progress or part.rank > 0,  # one bar per machine group is enough
    )
    with bar, ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="decode") as pool:
        for index in mine:
            if index in done:
                continue
            array, failures = _encode_shard(encoder, modality, plan[index], config, pool, bar)
            if len(array):
                atomic_save_npy(out / shard_name(index), array)
            maybe_crash("extract.shard")  # the shard is on disk, not yet recorded
            own["shards"][str(index)] = {"file": shard_name(index), "count": len(array), "failures": failures}
            atomic_write_json(out / part.progress_file, own)  # after the shard file: a recorded shard is on disk


def _conclude(out: Path, config: ExtractConfig, part: Part, items: list[Item]) -> None:
    """Write the manifest if this process is the one to: alone, rank 0 after the barrier, or the last part in."""
    source = Path(config.manifest)
    if part.count == 1:
        _finalize(out, _read_parts(out), items, source, require=True)
        return
    if part.world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank of this launcher has recorded its shards
        if part.rank != 0:
            return
    if not _finalize(out, _read_parts(out), items, source, require=part.count == part.world):
        log.info(
            "part %d of 0..%d done; the last part to finish writes %s (or run: fusemix extract --finalize --out %s)",
            part.index,
            part.count - 1,
            MANIFEST,
            out,
        )


def _read_parts(out: Path) -> dict[str, dict]:
    """Every progress file in ``out`` by name; a file removed meanwhile (another part finalized) is left out."""
    parts = {}
    for path in sorted(Path(out).glob(PROGRESS_GLOB)):
        try:
            parts[path.name] = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except json.JSONDecodeError as err:
            raise FusemixError(f"{path}: unreadable ({err.msg}); delete the folder to start over") from None
    return parts


def _check_parts_agree(out: Path, parts: dict[str, dict]) -> None:
    """One line naming the first thing two parts disagree on (encoder, tokens, dim, dtype, manifest, ...)."""
    names = {"items": "manifest items", "items_sha256": "manifest contents"}
    first, *others = sorted(parts)
    a = {**(parts[first].get("fingerprint") or {}), **(parts[first].get("meta") or {})}
    for name in others:
        b = {**(parts[name].get("fingerprint") or {}), **(parts[name].get("meta") or {})}
        for key in a:
            if key in b and a[key] != b[key]:
                values = "" if key == "items_sha256" else f" ({a[key]!r} in {first}, {b[key]!r} in {name})"
                raise FusemixError(
                    f"{out}: parts disagree on {names.get(key, key)}{values}; every part must run the same encoder "
                    "and arguments: re-run the odd part, or use another --out"
                )


def _intact_records(out: Path, parts: dict[str, dict]) -> dict[int, dict]:
    """Shard index -> a record whose file is on disk with the recorded number of rows, from any part."""
    records: dict[int, dict] = {}
    for progress in parts.values():
        for key, record in progress["shards"].items():
            if int(key) not in records and _shard_intact(out, int(key), record):
                records[int(key)] = record
    return records


def finalize(
    out: Path, manifest: Path | None = None, audio_dir: Path | None = None, encoder: str | None = None
) -> Path:
    """Write ``manifest.json`` from the parts' records once all are in (``fusemix extract --finalize``).

    For job arrays whose last part did not finish the folder itself (it was killed, or parts ran at once). The
    source manifest and audio folder are the ones the parts recorded unless given; ``encoder``, if given, must match.
    """
    out = Path(out)
    parts = _read_parts(out)
    if not parts:
        if (out / MANIFEST).is_file():
            return out
        raise FusemixError(f"{out}: nothing to finalize (no progress files); run fusemix extract there first")
    _check_parts_agree(out, parts)
    first = parts[min(parts)]
    if encoder is not None and encoder != first.get("encoder"):
        raise FusemixError(f"{out} holds an extraction by encoder {first.get('encoder')!r}, not --encoder {encoder!r}")
    if manifest is None and not first.get("manifest"):
        raise FusemixError(f"{out}: the progress files do not say which manifest was encoded; pass --manifest")
    source = Path(manifest if manifest is not None else first["manifest"])
    folder = audio_dir if audio_dir is not None else first.get("audio_dir")
    found = first.get("fingerprint") or {}
    clips = read_manifest(source, Path(folder) if folder else None)
    items = _items(clips, first.get("modality", ""), found.get("augment", 0))
    _check_same_run(out, found, {**found, **_items_fingerprint(items)}, "unfinished")
    _finalize(out, parts, items, source, require=True)
    return out


def _finalize(out: Path, parts: dict[str, dict], items: list[Item], source: Path, require: bool) -> bool:
    """Write the manifest if every shard is in; else False, or an error naming what is missing if ``require``."""
    fingerprint = parts[min(parts)]["fingerprint"]
    total = -(-len(items) // fingerprint["shard_size"])
    records = _intact_records(out, parts)
    missing = [index for index in range(total) if index not in records]
    if missing and (out / MANIFEST).is_file():
        return True  # another part finished the folder meanwhile (and removed the progress files we looked for)
    if missing and require:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise FusemixError(
            f"{out}: cannot write {MANIFEST}: {len(missing)} of {total} shards not done ({shown}); "
            "run the parts that hold them (same command, same --shard-index) and finalize again"
        )
    if missing:
        return False
    _check_parts_agree(out, parts)
    meta = next((p["meta"] for p in parts.values() if p.get("meta")), None)
    if meta is None:
        raise FusemixError(f"{out}: progress written by an older fusemix; re-run fusemix extract there to finish it")
    plan = [items[i : i + fingerprint["shard_size"]] for i in range(0, len(items), fingerprint["shard_size"])]
    remove_stale_temps(out, (MANIFEST, FAILURES))  # half-written by a killed run; the finalizing part writes these
    _write_manifest(out, parts[min(parts)], meta, plan, records, source)
    maybe_crash("extract.finalize")  # the manifest is in, the progress files not yet removed
    for name in parts:
        (out / name).unlink(missing_ok=True)
    return True


def _write_manifest(
    out: Path, progress: dict, meta: dict, plan: list[list[Item]], records: dict[int, dict], source: Path
) -> None:
    """Write failures.json and then manifest.json (last): rows in item order, the items that failed left out."""
    ids: list[str] = []
    clip_ids: list[str] = []
    texts: list[str] = []
    shards: list[dict] = []
    failures: list[dict] = []
    for index, shard_items in enumerate(plan):
        record = records[index]
        failed = {f["id"] for f in record["failures"]}
        failures.extend(record["failures"])
        kept = [item for item in shard_items if item.id not in failed]
        if len(kept) != record["count"]:
            raise FusemixError(f"{out}: the record of shard {index} says {record['count']} rows, expected {len(kept)}")
        if record["count"]:
            shards.append({"file": record["file"], "count": record["count"]})
        ids += [item.id for item in kept]
        clip_ids += [item.clip_id for item in kept]
        texts += [item.text or "" for item in kept]
    atomic_write_json(out / FAILURES, failures)
    if not ids:
        raise FusemixError(f"no item of {source} could be encoded ({len(failures)} failures, see {out / FAILURES})")
    modality, fingerprint = progress["modality"], progress["fingerprint"]
    manifest = {
        "encoder": fingerprint["encoder"],
        "modality": modality,
        "dim": meta["dim"],
        "dtype": meta["dtype"],
        "pooling": meta["pooling"],
        "tokens": fingerprint["tokens"],
        "sample_rate": meta["sample_rate"],
        "count": len(ids),
        "source_manifest": str(source.resolve()),
        "failed": [f["id"] for f in failures],
        "shards": shards,
        "fingerprint": fingerprint,
        "ids": ids,
        "clip_ids": clip_ids,
    }
    if meta.get("part_dims"):
        manifest["part_dims"] = meta["part_dims"]
    if fingerprint.get("augment"):  # rows <clip id>#aug<k> follow each clip's own row
        manifest["augment"] = {"views": fingerprint["augment"], "seed": fingerprint["augment_seed"]}
    if modality == "text":
        manifest["texts"] = texts
    atomic_write_json(out / MANIFEST, manifest)
    log.info("wrote %d %s latents to %s (%d failed)", len(ids), modality, out, len(failures))


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FusemixError(f"{path}: unreadable ({err.msg}); delete the folder to start over") from None
