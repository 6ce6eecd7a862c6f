"""Turn many audio clips into images, resumably: the library side of ``fusemix batch``.

The results file ``results.jsonl`` is the job's memory. Each clip appends its lines (one record per image, or one
error record; the schema is ``generator.records``) and flushes them to disk before the next clip starts, so a crash
or Ctrl-C loses at most the clip in flight. A re-run reads it back and skips every clip whose images are all listed
and still on disk; failed clips are tried again (the file may have been fixed). Each record holds the settings that
made it: a re-run with other settings refuses (``StaleResultsError``) rather than hand back old images, unless
asked to overwrite. Each clip's seed comes from the job seed and the clip id alone (``records.clip_seed``), so a
clip draws the same images whether it runs first, last or after a resume.

A clip fails alone: a file that is not audio, or an image that cannot be written where its id says, gives that
clip an error record and the others still run. Ids that cannot become file names at all (too long, '..', two
clips whose files collide) are refused before anything runs, naming the manifest line.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tqdm.auto import tqdm

from fusion.cache import atomic_write_bytes, remove_stale_temps
from fusion.crash import maybe_crash
from fusion.errors import AudioError, InputError, MissingFileError
from fusion.manifests import read_manifest
from generator.presets import MODES, Preset
from generator.records import ClipOutput, Settings, clip_seed, error_record, image_record, split_output

__all__ = ["RESULTS", "BatchClip", "BatchConfig", "BatchSummary", "StaleResultsError", "clip_seed", "run_batch"]

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
# Extensions collected from a folder; fusion.audio decodes them with libsndfile, or audioread as a fallback.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".au", ".webm")
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")
TMP_EXTRA = len(".") + len(".XXXXXXXX.tmp")  # what fusion.cache.atomic_write_bytes adds to a name while writing
# Write errors that are the disk's fault, not the clip's: every later clip would fail too, so the job stops.
DISK_ERRORS = tuple(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, name))


class StaleResultsError(InputError):
    """The output folder holds results made with other settings; reusing them would hand back stale images."""


class AudioToImage(Protocol):
    """What batch needs of ``generator.audio_to_image.AudioToImagePipeline``."""

    def __call__(self, audio: list[Any], **kwargs: Any) -> Any: ...


@dataclass
class BatchClip:
    """One clip to turn into images."""

    id: str  # unique in the job; images are named after it (relative path without extension for a folder)
    audio: Path
    source: str = ""  # where it was listed ("manifest m.jsonl, line 3" or the audio file), for messages


@dataclass
class BatchConfig:
    """How to generate; the same values a re-run must pass to get the same images (recorded as settings)."""

    num_images_per_audio: int = 1  # images per clip
    seed: int = 0  # job seed; each clip's seed is derived from it and the clip id
    mode: str | None = None  # "translate" (audio -> conditioning), "retrieve" (nearest caption); None: the preset's
    num_inference_steps: int | None = None  # denoising steps; None: the preset's default
    guidance_scale: float | None = None  # classifier-free guidance; None: the preset's default
    top_k: int = 5  # nearest captions recorded per clip
    view_size: int = 256  # also write an upscaled <name>_view.png of images smaller than this; 0: never
    progress: bool = True  # show a progress bar
    preset: str | None = None  # the preset the pipeline was loaded from (recorded; the pipeline is passed in)

    def settings(self) -> Settings:
        """What each record stores, and what a re-run must match to reuse earlier results."""
        return Settings(
            preset=self.preset,
            mode=self.mode,
            steps=self.num_inference_steps,
            guidance=self.guidance_scale,
            seed=self.seed,
            num_images_per_audio=self.num_images_per_audio,
            top_k=self.top_k,
            view_size=self.view_size,
        )


def with_preset_defaults(config: BatchConfig, preset: Preset) -> BatchConfig:
    """``config`` with the preset's default mode, steps and guidance filled in where it leaves them to the preset,
    so records say what ran and a re-run that spells out a default is not taken for a change of settings."""
    return replace(
        config,
        mode=preset.mode if config.mode is None else config.mode,
        num_inference_steps=preset.steps if config.num_inference_steps is None else config.num_inference_steps,
        guidance_scale=preset.guidance if config.guidance_scale is None else config.guidance_scale,
    )


@dataclass
class BatchSummary:
    """What one run did."""

    done: int = 0  # clips generated in this run
    skipped: int = 0  # clips already done by an earlier run
    failed: int = 0  # clips that could not be generated (listed in results.jsonl with the error)
    images: int = 0  # images written in this run
    seconds: float = 0.0  # wall time of the run
    errors: dict[str, str] = field(default_factory=dict)  # clip id -> error, for clips that failed in this run


def find_clips(source: str | Path) -> list[BatchClip]:
    """The clips of a folder (recursively, audio extensions only, sorted), a manifest, or a single audio file."""
    source = Path(source)
    if not source.exists():
        raise MissingFileError(f"input {source}: not found")
    if source.is_dir():
        return _folder_clips(source)
    suffix = source.suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return [BatchClip(_clip_id(source.stem, f"input {source}"), source, f"input {source}")]
    if suffix in MANIFEST_EXTENSIONS:
        clips = []
        for clip in read_manifest(source):
            where = f"manifest {source}, line {clip.line}" if clip.line else f"manifest {source}"
            if clip.audio is None:
                log.warning("%s: clip %r lists no audio; skipped", where, clip.id)
                continue
            clips.append(BatchClip(_clip_id(clip.id, where), clip.audio, where))
        if not clips:
            raise InputError(f"input {source}: the manifest lists no audio files")
        return clips
    raise InputError(
        f"input {source}: expected a folder, a manifest ({', '.join(MANIFEST_EXTENSIONS)}) or an audio file "
        f"({', '.join(AUDIO_EXTENSIONS)})"
    )


def _folder_clips(folder: Path) -> list[BatchClip]:
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and not _hidden(p, folder)
    )
    if not files:
        raise InputError(f"input {folder}: holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    stems: dict[str, int] = {}
    for path in files:
        stem = path.relative_to(folder).with_suffix("").as_posix()
        stems[stem] = stems.get(stem, 0) + 1
    clips = []
    for path in files:
        relative = path.relative_to(folder)
        stem = relative.with_suffix("").as_posix()
        # a.wav next to a.mp3: keep the extension in the id so their images do not overwrite each other
        clip_id = stem if stems[stem] == 1 else relative.as_posix()
        clips.append(BatchClip(_clip_id(clip_id, f"file {path}"), path, f"file {path}"))
    return clips


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _clip_id(clip_id: str, where: str) -> str:
    """A clip id as a relative file path under the output folder ('\\' read as '/', './' dropped); ids that would
    leave the folder or cannot name a file are refused, naming where the clip was listed."""
    if "\x00" in clip_id:
        raise InputError(f"{where}: clip id {clip_id!r} holds a NUL character, which no file name can")
    path = clip_id.replace("\\", "/")
    if path.startswith("/"):
        raise InputError(f"{where}: clip id {clip_id!r} is an absolute path; ids name files under the output folder")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(f"{where}: clip id {clip_id!r} holds '..'; ids name files under the output folder")
    if not parts:
        raise InputError(f"{where}: clip id {clip_id!r} cannot be used as a file name")
    return "/".join(parts)


def image_name(clip_id: str, index: int) -> str:
    """Where image ``index`` of a clip goes, relative to the output folder."""
    return f"{clip_id}_{index}.png"


def view_name(clip_id: str, index: int) -> str:
    return f"{clip_id}_{index}_view.png"


def output_names(clip_id: str, config: BatchConfig) -> list[str]:
    """Every file a clip may write, relative to the output folder."""
    names = [image_name(clip_id, k) for k in range(config.num_images_per_audio)]
    if config.view_size:
        names += [view_name(clip_id, k) for k in range(config.num_images_per_audio)]
    return names


def check_output_names(clips: Sequence[BatchClip], out: Path, config: BatchConfig) -> None:
    """Refuse, before anything runs, clip ids whose files cannot exist: names longer than the file system takes,
    or two clips where one's file is the other's folder (ids ``a`` and ``a_0.png/b``) or the same file."""
    name_max, path_max = _limits(out)
    prefix = len(os.fsencode(str(out.absolute()))) + 1
    owner: dict[str, BatchClip] = {RESULTS: BatchClip(RESULTS, Path(RESULTS), f"the results file {RESULTS}")}
    folders: dict[str, BatchClip] = {}
    for clip in clips:
        for name in output_names(clip.id, config):
            *dirs, base = name.split("/")
            if any(len(os.fsencode(d)) > name_max for d in dirs) or len(os.fsencode(base)) + TMP_EXTRA > name_max:
                raise InputError(
                    f"{clip.source}: clip id {clip.id!r} is too long: its file {name!r} needs a name of more than "
                    f"{name_max} bytes, the most this file system takes"
                )
            if prefix + len(os.fsencode(name)) + TMP_EXTRA > path_max:
                raise InputError(f"{clip.source}: clip id {clip.id!r} makes a path longer than {path_max} bytes")
            _claim(owner, name, clip)
            for i in range(1, len(dirs) + 1):
                folders.setdefault("/".join(dirs[:i]), clip)
    for folder, clip in folders.items():
        if folder in owner:
            other = owner[folder]
            raise InputError(
                f"{clip.source}: clip id {clip.id!r} needs a folder {folder!r}, which is a file of {other.source} "
                f"(clip {other.id!r}); rename one of them"
            )


def _claim(owner: dict[str, BatchClip], name: str, clip: BatchClip) -> None:
    other = owner.setdefault(name, clip)
    if other is not clip:
        raise InputError(
            f"{clip.source}: clip id {clip.id!r} would write {name!r}, which is also a file of {other.source} "
            f"(clip {other.id!r}); rename one of them"
        )


def _limits(out: Path) -> tuple[int, int]:
    """The longest file name and path the file system holding ``out`` (or its nearest existing parent) takes."""
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def read_results(out: Path) -> list[dict]:
    """The lines of ``out/results.jsonl``; a line torn by a crash is ignored."""
    path = Path(out) / RESULTS
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s, line %d: not JSON (torn by an interrupted run?); ignored", path, number)
                continue
            if isinstance(record, dict) and "clip" in record:
                records.append(record)
    return records


def completed_clips(out: Path, num_images_per_audio: int) -> set[str]:
    """Clip ids whose images 0..n-1 are all recorded as written and still exist."""
    out = Path(out)
    written: dict[str, set[int]] = {}
    for record in read_results(out):
        if record.get("error") is None and isinstance(record.get("index"), int) and record.get("image"):
            if (out / record["image"]).is_file():
                written.setdefault(record["clip"], set()).add(record["index"])
    wanted = set(range(num_images_per_audio))
    return {clip for clip, indices in written.items() if wanted <= indices}


def check_settings(out: Path, settings: Settings, overwrite: bool = False) -> None:
    """Refuse to resume into ``out`` when its results were made with other settings; with ``overwrite``, start
    its results afresh instead (every clip is generated again and its files replaced)."""
    records = read_results(out)
    if overwrite:
        if records or (out / RESULTS).exists():
            log.info("overwrite: starting %s afresh; every clip is generated again", out / RESULTS)
            atomic_write_bytes(out / RESULTS, b"")
        return
    for record in records:
        recorded = record.get("settings")
        if not isinstance(recorded, dict):
            raise StaleResultsError(
                f"{out / RESULTS} holds results that do not record their settings (clip {record['clip']!r}), "
                "so they may not match this run"
            )
        differences = settings.differences(recorded)
        if differences:
            raise StaleResultsError(
                f"{out / RESULTS} holds results made with other settings ({', '.join(differences)})"
            )


def run_batch(
    pipeline: AudioToImage,
    clips: Sequence[BatchClip],
    out: str | Path,
    config: BatchConfig | None = None,
    overwrite: bool = False,
) -> BatchSummary:
    """Generate images for every clip not yet done in ``out``; record each image or error in results.jsonl.

    Everything that can be checked without running a clip is checked first: the settings, unique ids that can
    be file names, and that earlier results in ``out`` were made with the same settings (unless ``overwrite``).
    """
    config = config or BatchConfig()
    _check_config(config)
    ids = [c.id for c in clips]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"clip ids must be unique; repeated: {', '.join(dupes[:5])}")
    out = Path(out)
    check_output_names(clips, out, config)
    settings = config.settings()
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings, overwrite)
    remove_stale_temps(out, recursive=True)  # half-written files of a killed run (one batch writes a folder)
    start = time.perf_counter()
    done_before = completed_clips(out, config.num_images_per_audio)
    todo = [c for c in clips if c.id not in done_before]
    summary = BatchSummary(skipped=len(clips) - len(todo))
    if summary.skipped:
        log.info("%d of %d clips already done in %s; skipping them", summary.skipped, len(clips), out)
    with (
        _ResultsWriter(out / RESULTS) as results,
        tqdm(total=len(todo), disable=not config.progress, unit="clip", desc="batch") as bar,
    ):
        for clip in todo:
            records = _run_clip(pipeline, clip, out, config, settings)
            maybe_crash("batch.clip")  # its images are written, not yet recorded
            results.append(records)
            if records[0]["error"] is not None:
                summary.failed += 1
                summary.errors[clip.id] = records[0]["error"]
                log.warning("clip %s: %s", clip.id, records[0]["error"])
            else:
                summary.done += 1
                summary.images += len(records)
            bar.update(1)
            bar.set_postfix(done=summary.done, failed=summary.failed)
    summary.seconds = time.perf_counter() - start
    return summary


def _check_config(config: BatchConfig) -> None:
    if config.num_images_per_audio < 1:
        raise InputError(f"num_images_per_audio must be at least 1, got {config.num_images_per_audio}")
    if config.mode not in (None, *MODES):
        raise InputError(f"mode must be one of {MODES} or None (the preset's), got {config.mode!r}")
    if config.view_size < 0:
        raise InputError(f"view_size must be 0 (off) or positive, got {config.view_size}")
    if config.top_k < 1:
        raise InputError(f"top_k must be at least 1, got {config.top_k}")
    if config.num_inference_steps is not None and config.num_inference_steps < 1:
        raise InputError(f"num_inference_steps must be at least 1, got {config.num_inference_steps}")


def _run_clip(pipeline: AudioToImage, clip: BatchClip, out: Path, config: BatchConfig, settings: Settings) -> list:
    """Everything one clip does, generating and writing: its records, or one error record if the clip is at fault
    (audio that cannot be used, files its id cannot become). Other errors (a model bug, a full disk) stop the job.

    One pipeline call per clip: a clip's seed must not depend on which clips share its call (that changes on
    resume)."""
    seed = clip_seed(config.seed, clip.id)
    try:
        output = pipeline(
            [clip.audio],
            mode=config.mode,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            num_images_per_audio=config.num_images_per_audio,
            seed=[seed],
            top_k=config.top_k,
            progress=False,
        )
    except AudioError as err:
        return [error_record(clip.id, str(clip.audio), seed, settings, err)]
    try:
        return _save_images(out, clip, split_output(output)[0], config, settings)
    except OSError as err:
        if err.errno in DISK_ERRORS:
            raise
        message = f"cannot write the images of clip {clip.id!r}: {err.strerror or err}"
        return [error_record(clip.id, str(clip.audio), seed, settings, message)]


def _save_images(out: Path, clip: BatchClip, result: ClipOutput, config: BatchConfig, settings: Settings) -> list:
    from generator.audio_to_image import upscale

    if len(result.images) != config.num_images_per_audio:
        raise RuntimeError(
            f"pipeline returned {len(result.images)} images for clip {clip.id}, expected {config.num_images_per_audio}"
        )
    records = []
    for index, image in enumerate(result.images):
        name = image_name(clip.id, index)
        atomic_write_bytes(out / name, _png(image))
        view = None
        if config.view_size and max(image.size) < config.view_size:
            view = view_name(clip.id, index)
            atomic_write_bytes(out / view, _png(upscale(image, config.view_size)))
        records.append(image_record(clip.id, str(clip.audio), index, name, view, result, settings))
    return records


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _ResultsWriter:
    """Appends whole clips to results.jsonl and forces them to disk before returning."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _ResultsWriter:
        torn = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        self.file = self.path.open("a", encoding="utf-8")
        if torn:  # a crash cut the last line: start ours on a fresh line
            self.file.write("\n")
        return self

    def append(self, records: list[dict]) -> None:
        self.file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.file.flush()
        os.fsync(self.file.fileno())

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
