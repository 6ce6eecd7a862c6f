"""Encode a manifest's audio or captions once with a frozen encoder and cache the latents on disk, resumably.

The item list is cut into fixed shards of ``shard_size`` items. Each finished shard is saved atomically as
``shard-NNNNN.npy`` and then recorded in ``progress.json``; a re-run with the same arguments skips recorded
shards, so ``kill -9`` loses at most the shard in flight. ``manifest.json`` (the format of ``fusion.cache``) is
written last, and ``progress.json`` removed, once every shard is done. Audio files that cannot be decoded are
skipped and listed in ``failures.json`` unless ``strict`` is set.

Items: an audio encoder gives one latent per clip (id = clip id); a text encoder gives one per caption
(id = ``<clip id>#<k>``, with the clip id and the caption text kept alongside).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fusion.audio import load_audio
from fusion.cache import MANIFEST, PROGRESS, atomic_save_npy, atomic_write_json, shard_name
from fusion.errors import AudioError, FusemixError
from fusion.manifests import read_manifest

log = logging.getLogger(__name__)

FAILURES = "failures.json"
FORMAT_VERSION = 1


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
    device: str = "cpu"  # torch device of the encoder
    progress: bool = True  # show a tqdm progress bar
    max_seconds: float = 60.0  # audio longer than this is a failure
    workers: int = 2  # threads decoding audio while the encoder runs


@dataclass(frozen=True)
class Item:
    """One thing to encode: a clip's audio or one of its captions."""

    id: str
    clip_id: str
    audio: Path | None = None  # audio items
    text: str | None = None  # caption items


def load_encoder(name: str, device: str = "cpu") -> Any:
    """Indirection so that importing this module does not load any model code (and tests can swap encoders)."""
    from fusion.encoders import load_encoder as _load_encoder

    return _load_encoder(name, device=device)


def extract(config: ExtractConfig) -> Path:
    """Run (or resume) one extraction; returns the cache folder, loadable with ``fusion.cache.load_latents``."""
    _validate(config)
    out = Path(config.out)
    clips = read_manifest(config.manifest, config.audio_dir)

    finished = _read_json(out / MANIFEST)
    if finished is not None:
        expected = _fingerprint(config, finished.get("modality", ""), _items(clips, finished.get("modality", "")))
        _check_same_run(out, finished.get("fingerprint"), expected, "finished")
        log.info("%s already holds this extraction (%d items); nothing to do", out, finished["count"])
        return out
    progress = _read_json(out / PROGRESS)
    if progress is not None:
        modality = progress.get("modality", "")
        _check_same_run(
            out, progress.get("fingerprint"), _fingerprint(config, modality, _items(clips, modality)), "unfinished"
        )

    encoder = load_encoder(config.encoder, device=config.device)
    modality = _modality(encoder)
    items = _items(clips, modality)
    if not items:
        raise FusemixError(f"manifest {config.manifest}: no {'audio' if modality == 'audio' else 'captions'} to encode")
    _check_unique_ids(config.manifest, items)
    fingerprint = _fingerprint(config, modality, items)
    if progress is None:
        progress = {"fingerprint": fingerprint, "modality": modality, "encoder": config.encoder, "shards": {}}
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".shard-*.npy.*.tmp"), *out.glob(f".{PROGRESS}.*.tmp")]:
        stale.unlink(missing_ok=True)  # half-written by a killed run

    plan = [items[i : i + config.shard_size] for i in range(0, len(items), config.shard_size)]
    done = {int(k) for k, v in progress["shards"].items() if _shard_intact(out, int(k), v)}
    for index in set(map(int, progress["shards"])) - done:
        log.warning("%s: shard %d recorded but its file is missing or short; encoding it again", out, index)
        del progress["shards"][str(index)]
    if done:
        log.info("resuming %s: %d of %d shards already done", out, len(done), len(plan))

    bar = tqdm(
        total=len(items),
        initial=sum(len(plan[i]) for i in done),
        unit="clip" if modality == "audio" else "caption",
        desc=f"extract {config.encoder}",
        disable=not config.progress,
    )
    with bar, ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="decode") as pool:
        for index, shard_items in enumerate(plan):
            if index in done:
                continue
            array, failures = _encode_shard(encoder, modality, shard_items, config, pool, bar)
            if len(array):
                atomic_save_npy(out / shard_name(index), array)
            progress["shards"][str(index)] = {"file": shard_name(index), "count": len(array), "failures": failures}
            atomic_write_json(out / PROGRESS, progress)  # after the shard file: a recorded shard is always on disk

    return _finish(out, config, encoder, modality, plan, progress, fingerprint)


def _validate(config: ExtractConfig) -> None:
    for name in ("batch_size", "shard_size", "workers"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.tokens is not None and (not isinstance(config.tokens, int) or config.tokens < 1):
        raise ValueError(f"tokens must be a positive integer, got {config.tokens!r}")
    if config.max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {config.max_seconds!r}")


def _modality(encoder: Any) -> str:
    modality = getattr(encoder, "modality", None)
    if modality not in ("audio", "text"):
        raise FusemixError(
            f"encoder {getattr(encoder, 'name', encoder)!r} has modality {modality!r}, expected audio or text"
        )
    if modality == "audio" and not getattr(encoder, "sample_rate", None):
        raise FusemixError(f"audio encoder {encoder.name!r} declares no sample_rate")
    return modality


def _items(clips: list, modality: str) -> list[Item]:
    if modality == "audio":
        return [Item(clip.id, clip.id, audio=clip.audio) for clip in clips]
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
    """What must not change between a run and its resumption."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, item.clip_id, str(item.audio) if item.audio else None, item.text]).encode())
    return {
        "version": FORMAT_VERSION,
        "encoder": config.encoder,
        "modality": modality,
        "tokens": config.tokens,
        "shard_size": config.shard_size,
        "max_seconds": config.max_seconds if modality == "audio" else None,
        "items": len(items),
        "items_sha256": digest.hexdigest(),
    }


def _check_same_run(out: Path, found: dict | None, expected: dict, state: str) -> None:
    if found == expected:
        return
    if not isinstance(found, dict):
        raise FusemixError(f"{out} holds a {state} latent cache not written by fusemix extract; use another --out")
    names = {"items": "manifest items", "items_sha256": "manifest contents"}
    differs = [
        f"{names.get(key, key)} ({found.get(key)!r} there, {expected.get(key)!r} now)"
        if key != "items_sha256"
        else names[key]
        for key in expected
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
    pending: list[Future] | None = None
    for i, batch in enumerate(batches):
        current = (
            pending
            if pending is not None
            else [pool.submit(_decode, item, sample_rate, config.max_seconds) for item in batch]
        )
        pending = (
            [pool.submit(_decode, item, sample_rate, config.max_seconds) for item in batches[i + 1]]
            if i + 1 < len(batches)
            else None
        )
        yield batch, [future.result() for future in current]


def _decode(item: Item, sample_rate: int, max_seconds: float) -> np.ndarray | AudioError:
    """Decode one clip for the encoder; a bad file becomes a value, not an exception, so the batch goes on."""
    if item.audio is None:
        return AudioError(f"clip {item.id}: the manifest gives no audio file")
    try:
        return load_audio(item.audio, sample_rate, max_seconds=max_seconds)
    except AudioError as err:
        return err


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


def _finish(
    out: Path,
    config: ExtractConfig,
    encoder: Any,
    modality: str,
    plan: list[list[Item]],
    progress: dict,
    fingerprint: dict,
) -> Path:
    """Write failures.json and then manifest.json (last), and drop progress.json."""
    ids: list[str] = []
    clip_ids: list[str] = []
    texts: list[str] = []
    shards: list[dict] = []
    failures: list[dict] = []
    for index, shard_items in enumerate(plan):
        record = progress["shards"][str(index)]
        failed = {f["id"] for f in record["failures"]}
        failures.extend(record["failures"])
        kept = [item for item in shard_items if item.id not in failed]
        if len(kept) != record["count"]:
            raise FusemixError(
                f"{out}: {PROGRESS} says shard {index} holds {record['count']} rows, expected {len(kept)}"
            )
        if record["count"]:
            shards.append({"file": record["file"], "count": record["count"]})
        ids += [item.id for item in kept]
        clip_ids += [item.clip_id for item in kept]
        texts += [item.text or "" for item in kept]
    atomic_write_json(out / FAILURES, failures)
    if not ids:
        raise FusemixError(
            f"no item of {config.manifest} could be encoded ({len(failures)} failures, see {out / FAILURES})"
        )
    manifest = {
        "encoder": config.encoder,
        "modality": modality,
        "dim": _latent_dim(encoder, config.tokens),
        "dtype": "float32",
        "pooling": getattr(encoder, "pooling", None),
        "tokens": config.tokens,
        "sample_rate": getattr(encoder, "sample_rate", None) if modality == "audio" else None,
        "count": len(ids),
        "source_manifest": str(Path(config.manifest).resolve()),
        "failed": [f["id"] for f in failures],
        "shards": shards,
        "fingerprint": fingerprint,
        "ids": ids,
        "clip_ids": clip_ids,
    }
    if modality == "text":
        manifest["texts"] = texts
    atomic_write_json(out / MANIFEST, manifest)
    (out / PROGRESS).unlink(missing_ok=True)
    log.info("wrote %d %s latents to %s (%d failed)", len(ids), modality, out, len(failures))
    return out


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FusemixError(f"{path}: unreadable ({err.msg}); delete the folder to start over") from None
