"""Read the clip lists of audio-caption datasets into one shape: ``Clip(id, audio, captions)``.

Formats, detected from the file name and the CSV header:

- **AudioCaps** CSV ``audiocap_id,youtube_id,start_time,caption`` (one caption per row). Rows with the same
  ``youtube_id`` and ``start_time`` form one clip with id ``<youtube_id>_<start_time>``. Its audio is the first of
  ``<audio_dir>/<youtube_id>_<start_time>.<ext>`` and ``<audio_dir>/<youtube_id>.<ext>`` that exists, for ``ext`` in
  wav, flac, mp3, ogg (the first name, ``.wav``, is kept when none exists, so the failure report names it).
- **Clotho** captions CSV ``file_name,caption_1,...,caption_5``: clip id = ``file_name``, audio = ``<audio_dir>/<file_name>``.
- **Generic** JSONL (one object per line) or CSV with ``audio`` and ``caption`` (a string) or ``captions`` (a list; in
  a CSV a JSON list), and an optional ``id`` (default: the audio file's stem). Lines sharing an id are one clip, so a
  CSV with one caption per row works. A clip may have no captions (audio only) or no audio (captions only).

``audio_dir`` defaults to the manifest's folder; relative audio paths resolve against it.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from fusion.errors import InputError, MissingFileError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
AUDIOCAPS_COLUMNS = ("youtube_id", "start_time", "caption")
CLOTHO_CAPTION = re.compile(r"^caption_(\d+)$")


class ManifestError(InputError):
    """A manifest cannot be read; the message names the file, the line and the reason."""


@dataclass
class Clip:
    """One audio clip and its captions (a dataset may give several per clip)."""

    id: str  # unique within a manifest
    audio: Path | None  # None when the manifest lists captions only
    captions: list[str] = field(default_factory=list)
    line: int = field(default=0, compare=False)  # first line of the manifest listing the clip (for messages)


def read_manifest(path: str | Path, audio_dir: str | Path | None = None) -> list[Clip]:
    """Read an AudioCaps CSV, a Clotho captions CSV or a generic JSONL/CSV, in file order."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"manifest {path}: not found")
    if not path.is_file():
        raise ManifestError(f"manifest {path}: not a file")
    base = Path(audio_dir) if audio_dir is not None else path.parent
    if audio_dir is not None and not base.is_dir():
        raise MissingFileError(f"audio folder {base}: not found")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
        raise ManifestError(f"manifest {path}: unknown extension {path.suffix!r} (expected .csv or .jsonl)")
    try:
        clips = _read_csv(path, base) if suffix in (".csv", ".tsv") else _read_jsonl(path, base)
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {path}: not UTF-8 text (byte {err.start} of a line)") from None
    if not clips:
        raise ManifestError(f"manifest {path}: lists no clips")
    return clips


def manifest_format(path: str | Path) -> str:
    """Which reader ``read_manifest`` uses for ``path``: ``audiocaps``, ``clotho``, ``jsonl`` or ``csv``."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, dialect=_dialect(path)), [])
    return _csv_kind(path, [h.strip() for h in header])


def _dialect(path: Path) -> type[csv.Dialect]:
    return csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel


def _csv_kind(path: Path, header: list[str]) -> str:
    names = set(header)
    if set(AUDIOCAPS_COLUMNS) <= names:
        return "audiocaps"
    if "file_name" in names and any(CLOTHO_CAPTION.match(h) for h in header):
        return "clotho"
    if names & {"audio", "caption", "captions"}:
        return "csv"
    raise ManifestError(
        f"manifest {path}: header {','.join(header) or '(empty)'} matches no known format "
        "(AudioCaps: youtube_id,start_time,caption; Clotho: file_name,caption_1..; generic: audio,caption[s])"
    )


def _read_csv(path: Path, base: Path) -> list[Clip]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, dialect=_dialect(path))
        header = [h.strip() for h in next(reader, [])]
        kind = _csv_kind(path, header)
        rows = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ManifestError(f"manifest {path}, line {line}: {len(row)} fields, header has {len(header)}")
            rows.append((line, dict(zip(header, row, strict=True))))
    reader_fn = {"audiocaps": _audiocaps, "clotho": _clotho, "csv": _generic_csv}[kind]
    return reader_fn(path, base, rows)


def _audiocaps(path: Path, base: Path, rows: list[tuple[int, dict[str, str]]]) -> list[Clip]:
    clips: dict[str, Clip] = {}
    for line, row in rows:
        youtube_id, caption = row["youtube_id"].strip(), row["caption"].strip()
        if not youtube_id:
            raise ManifestError(f"manifest {path}, line {line}: empty youtube_id")
        start = _start_time(path, line, row["start_time"])
        if not caption:
            raise ManifestError(f"manifest {path}, line {line}: empty caption")
        clip_id = f"{youtube_id}_{start}"
        if clip_id not in clips:
            clips[clip_id] = Clip(clip_id, _audiocaps_audio(base, youtube_id, start), [], line)
        clips[clip_id].captions.append(caption)
    return list(clips.values())


def _start_time(path: Path, line: int, text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"manifest {path}, line {line}: start_time {text!r} is not a number") from None
    if value < 0 or value != value:
        raise ManifestError(f"manifest {path}, line {line}: start_time {text!r} is negative or NaN")
    return str(int(value)) if value == int(value) else f"{value:g}"


def _audiocaps_audio(base: Path, youtube_id: str, start: str) -> Path:
    stems = (f"{youtube_id}_{start}", youtube_id)
    for stem in stems:
        for ext in AUDIO_EXTENSIONS:
            candidate = base / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return base / f"{stems[0]}{AUDIO_EXTENSIONS[0]}"


def _clotho(path: Path, base: Path, rows: list[tuple[int, dict[str, str]]]) -> list[Clip]:
    columns = (
        sorted((c for c in rows[0][1] if CLOTHO_CAPTION.match(c)), key=lambda c: int(c.split("_")[1])) if rows else []
    )
    clips: list[Clip] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        name = row["file_name"].strip()
        if not name:
            raise ManifestError(f"manifest {path}, line {line}: empty file_name")
        if name in seen:
            raise ManifestError(f"manifest {path}, line {line}: file_name {name!r} already on line {seen[name]}")
        seen[name] = line
        captions = [row[c].strip() for c in columns]
        if not all(captions):
            empty = [c for c in columns if not row[c].strip()]
            raise ManifestError(f"manifest {path}, line {line}: empty {', '.join(empty)}")
        clips.append(Clip(name, base / name, captions, line))
    return clips


def _generic_csv(path: Path, base: Path, rows: list[tuple[int, dict[str, str]]]) -> list[Clip]:
    records = []
    for line, row in rows:
        record: dict = {k: v for k, v in row.items() if k in ("id", "audio", "caption") and v.strip()}
        if row.get("captions", "").strip():
            try:
                record["captions"] = json.loads(row["captions"])
            except json.JSONDecodeError:
                raise ManifestError(f"manifest {path}, line {line}: captions must be a JSON list of strings") from None
        records.append((line, record))
    return _generic(path, base, records)


def _read_jsonl(path: Path, base: Path) -> list[Clip]:
    records = []
    with path.open(encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise ManifestError(f"manifest {path}, line {line}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ManifestError(
                    f"manifest {path}, line {line}: expected a JSON object, got {type(record).__name__}"
                )
            records.append((line, record))
    return _generic(path, base, records)


def _generic(path: Path, base: Path, records: list[tuple[int, dict]]) -> list[Clip]:
    clips: dict[str, Clip] = {}
    for line, record in records:
        where = f"manifest {path}, line {line}"
        audio = record.get("audio")
        if audio is not None and (not isinstance(audio, str) or not audio.strip()):
            raise ManifestError(f"{where}: audio must be a non-empty path string")
        audio_path = (base / audio.strip()) if audio else None
        captions = _captions(where, record)
        clip_id = record.get("id")
        if clip_id is None:
            if audio_path is None:
                raise ManifestError(f"{where}: needs an audio path or an id")
            clip_id = audio_path.stem
        if not isinstance(clip_id, (str, int)) or not str(clip_id).strip():
            raise ManifestError(f"{where}: id must be a non-empty string")
        clip_id = str(clip_id).strip()
        if audio_path is None and not captions:
            raise ManifestError(f"{where}: has neither audio nor caption")
        clip = clips.get(clip_id)
        if clip is None:
            clips[clip_id] = Clip(clip_id, audio_path, captions, line)
            continue
        if audio_path is not None and clip.audio is not None and audio_path != clip.audio:
            raise ManifestError(f"{where}: clip {clip_id!r} listed earlier with audio {clip.audio}, here {audio_path}")
        clip.audio = clip.audio or audio_path
        clip.captions.extend(captions)
    return list(clips.values())


def _captions(where: str, record: dict) -> list[str]:
    if "caption" in record and "captions" in record:
        raise ManifestError(f"{where}: give caption or captions, not both")
    if "caption" in record:
        value = [record["caption"]]
    elif "captions" in record:
        value = record["captions"]
        if not isinstance(value, list):
            raise ManifestError(f"{where}: captions must be a list of strings")
    else:
        return []
    if not all(isinstance(c, str) and c.strip() for c in value):
        raise ManifestError(f"{where}: every caption must be a non-empty string")
    return [c.strip() for c in value]
