"""Turn many audio clips into images, resumably: the library side of ``fusemix batch``.

The results file ``results.jsonl`` is the job's memory. Each clip appends its lines (one per image, or one error
line) and flushes them to disk before the next clip starts, so a crash or Ctrl-C loses at most the clip in flight.
A re-run reads it back and skips every clip whose images are all listed and still on disk; failed clips are tried
again (the file may have been fixed). Each clip's seed comes from the job seed and the clip id alone, so a clip
draws the same images whether it runs first, last or after a resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tqdm.auto import tqdm

from fusion.cache import atomic_write_bytes
from fusion.errors import AudioError
from fusion.manifests import read_manifest
from generator.presets import MODES

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
# Extensions collected from a folder; fusion.audio decodes them with libsndfile, or audioread as a fallback.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".au", ".webm")
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")


class AudioToImage(Protocol):
    """What batch needs of ``generator.audio_to_image.AudioToImagePipeline``."""

    def __call__(self, audio: list[Any], **kwargs: Any) -> Any: ...


@dataclass
class BatchClip:
    """One clip to turn into images."""

    id: str  # unique in the job; images are named after it (relative path without extension for a folder)
    audio: Path


@dataclass
class BatchConfig:
    """How to generate; the same values a re-run must pass to get the same images."""

    num_images_per_audio: int = 1  # images per clip
    seed: int = 0  # job seed; each clip's seed is derived from it and the clip id
    mode: str | None = None  # "translate" (audio -> conditioning), "retrieve" (nearest caption); None: the preset's
    num_inference_steps: int | None = None  # denoising steps; None: the preset's default
    guidance_scale: float | None = None  # classifier-free guidance; None: the preset's default
    top_k: int = 5  # nearest captions recorded per clip
    view_size: int = 256  # also write an upscaled <name>_view.png of images smaller than this; 0: never
    progress: bool = True  # show a progress bar


@dataclass
class BatchSummary:
    """What one run did."""

    done: int = 0  # clips generated in this run
    skipped: int = 0  # clips already done by an earlier run
    failed: int = 0  # clips that could not be generated (listed in results.jsonl with the error)
    images: int = 0  # images written in this run
    seconds: float = 0.0  # wall time of the run
    errors: dict[str, str] = field(default_factory=dict)  # clip id -> error, for clips that failed in this run


def clip_seed(seed: int, clip_id: str) -> int:
    """A clip's seed from the job seed and its id: stable across runs, orderings and machines."""
    digest = hashlib.sha256(f"{seed}\x00{clip_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def find_clips(source: str | Path) -> list[BatchClip]:
    """The clips of a folder (recursively, audio extensions only, sorted), a manifest, or a single audio file."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"input {source}: not found")
    if source.is_dir():
        return _folder_clips(source)
    suffix = source.suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return [BatchClip(_safe_id(source.stem), source)]
    if suffix in MANIFEST_EXTENSIONS:
        clips = []
        for clip in read_manifest(source):
            if clip.audio is None:
                log.warning("manifest %s: clip %r lists no audio; skipped", source, clip.id)
                continue
            clips.append(BatchClip(_safe_id(clip.id), clip.audio))
        if not clips:
            raise ValueError(f"input {source}: the manifest lists no audio files")
        return clips
    raise ValueError(
        f"input {source}: expected a folder, a manifest ({', '.join(MANIFEST_EXTENSIONS)}) or an audio file "
        f"({', '.join(AUDIO_EXTENSIONS)})"
    )


def _folder_clips(folder: Path) -> list[BatchClip]:
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and not _hidden(p, folder)
    )
    if not files:
        raise ValueError(f"input {folder}: holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
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
        clips.append(BatchClip(_safe_id(clip_id), path))
    return clips


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _safe_id(clip_id: str) -> str:
    """A clip id usable as a relative file path under the output folder (no absolute paths, no '..')."""
    parts = [p for p in clip_id.replace("\\", "/").split("/") if p not in ("", ".")]
    parts = ["_" if p == ".." else p.replace("\x00", "_") for p in parts]
    if not parts:
        raise ValueError(f"clip id {clip_id!r}: cannot be used as a file name")
    return "/".join(parts)


def image_name(clip_id: str, index: int) -> str:
    """Where image ``index`` of a clip goes, relative to the output folder."""
    return f"{clip_id}_{index}.png"


def view_name(clip_id: str, index: int) -> str:
    return f"{clip_id}_{index}_view.png"


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


def run_batch(
    pipeline: AudioToImage, clips: Sequence[BatchClip], out: str | Path, config: BatchConfig | None = None
) -> BatchSummary:
    """Generate images for every clip not yet done in ``out``; record each image or error in results.jsonl."""
    config = config or BatchConfig()
    _check_config(config)
    ids = [c.id for c in clips]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"clip ids must be unique; repeated: {', '.join(dupes[:5])}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
        for clip, outcome in _generate(pipeline, todo, config):
            if isinstance(outcome, Exception):
                summary.failed += 1
                summary.errors[clip.id] = str(outcome)
                log.warning("%s", outcome)
                results.append([_error_record(clip, config, outcome)])
            else:
                records = _save_images(out, clip, outcome, config)
                results.append(records)
                summary.done += 1
                summary.images += len(records)
            bar.update(1)
            bar.set_postfix(done=summary.done, failed=summary.failed)
    summary.seconds = time.perf_counter() - start
    return summary


def _check_config(config: BatchConfig) -> None:
    if config.num_images_per_audio < 1:
        raise ValueError(f"num_images_per_audio must be at least 1, got {config.num_images_per_audio}")
    if config.mode not in (None, *MODES):
        raise ValueError(f"mode must be one of {MODES} or None (the preset's), got {config.mode!r}")
    if config.view_size < 0:
        raise ValueError(f"view_size must be 0 (off) or positive, got {config.view_size}")


@dataclass
class _ClipOutput:
    images: list[Image.Image]
    heard: list[tuple[str, float]]
    prompt: str | None
    mode: str
    seed: int
    timings: dict[str, float]


def _generate(
    pipeline: AudioToImage, clips: Sequence[BatchClip], config: BatchConfig
) -> Iterator[tuple[BatchClip, _ClipOutput | Exception]]:
    """One pipeline call per clip: the pipeline takes one seed per call, and a clip's seed must not depend on
    which clips share its call (that changes on resume). A bad clip fails alone."""
    for clip in clips:
        seed = clip_seed(config.seed, clip.id)
        try:  # only AudioError is the clip's fault; anything else (bad settings, a model bug) stops the job
            output = pipeline(
                [clip.audio],
                mode=config.mode,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                num_images_per_audio=config.num_images_per_audio,
                seed=seed,
                top_k=config.top_k,
                progress=False,
            )
        except AudioError as err:
            yield clip, err
            continue
        yield (
            clip,
            _ClipOutput(
                images=list(output.images[0]),
                heard=[(str(c), float(s)) for c, s in output.heard[0]],
                prompt=output.prompts[0],
                mode=output.mode,
                seed=int(output.seeds[0]),
                timings={k: round(float(v), 4) for k, v in output.timings.items()},
            ),
        )


def _save_images(out: Path, clip: BatchClip, result: _ClipOutput, config: BatchConfig) -> list[dict]:
    from generator.audio_to_image import upscale

    if len(result.images) != config.num_images_per_audio:
        raise RuntimeError(
            f"pipeline returned {len(result.images)} images for clip {clip.id}, expected {config.num_images_per_audio}"
        )
    records = []
    for index, image in enumerate(result.images):
        name = image_name(clip.id, index)
        atomic_write_bytes(out / name, _png(image))
        record: dict[str, Any] = {
            "clip": clip.id,
            "audio": str(clip.audio),
            "index": index,
            "image": name,
            "view": None,
            "seed": result.seed,
            "mode": result.mode,
            "prompt": result.prompt,
            "heard": [[caption, round(score, 4)] for caption, score in result.heard],
            "timings": result.timings,
            "error": None,
        }
        if config.view_size and max(image.size) < config.view_size:
            record["view"] = view_name(clip.id, index)
            atomic_write_bytes(out / record["view"], _png(upscale(image, config.view_size)))
        records.append(record)
    return records


def _error_record(clip: BatchClip, config: BatchConfig, err: Exception) -> dict:
    return {
        "clip": clip.id,
        "audio": str(clip.audio),
        "index": None,
        "image": None,
        "seed": clip_seed(config.seed, clip.id),
        "mode": config.mode,
        "error": str(err),
    }


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
