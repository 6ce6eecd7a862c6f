"""Speech recognition for the ASR-cascade baseline: Whisper transcript -> text encoder -> nearest caption.

This is what a user would do without FuseMix: transcribe the spoken prompt and look the transcript up among the
captions. It is the baseline FuseMix must beat on every split.

    >>> texts = transcribe(["data/demo/audio/test-00000-0.wav"])          # offline Whisper tiny.en, beam 5
    >>> picks = cascade_nearest(texts, ["a red circle on blue", ...])      # index of the nearest caption each

Transcripts are cached in a JSON file keyed by the audio file (path, size, mtime) and the recognition settings, so a
rerun of an evaluation does not transcribe again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fusion.cache import atomic_write_json
from fusion.encoders.whisper_asr import ENGLISH_ONLY_PROMPT, SAMPLE_RATE, AsrSettings, Transcriber
from fusion.errors import CheckpointError, InputError

__all__ = ["ENGLISH_ONLY_PROMPT", "SAMPLE_RATE", "AsrSettings", "Transcriber", "cascade_nearest", "transcribe"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class TranscriptCache:
    """Transcripts on disk in one JSON file, keyed by audio file (path, size, mtime) and ASR settings."""

    def __init__(self, path: str | Path, settings: AsrSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self.items: dict[str, dict] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.items = dict(data["items"])
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(
                    f"transcript cache {self.path}: unreadable ({err}); delete it to start over"
                ) from None

    def key(self, audio: Path) -> str:
        stat = audio.stat()
        ident = [str(audio.resolve()), stat.st_size, stat.st_mtime_ns, self.settings.key()]
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, audio: Path) -> str | None:
        hit = self.items.get(self.key(audio))
        return None if hit is None else hit["text"]

    def put(self, audio: Path, text: str) -> None:
        self.items[self.key(audio)] = {"audio": str(audio), "text": text}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"version": CACHE_VERSION, "items": self.items})


def transcribe(
    paths: Sequence[str | Path],
    settings: AsrSettings | None = None,
    cache: str | Path | None = None,
    transcriber: Transcriber | None = None,
    progress: bool = False,
) -> list[str]:
    """Transcripts of audio files, in order; with ``cache`` (a JSON file) finished ones are reused and new ones saved."""
    from fusion.audio import load_audio

    settings = transcriber.settings if transcriber is not None else (settings or AsrSettings())
    files = [Path(p) for p in paths]
    store = TranscriptCache(cache, settings) if cache is not None else None
    texts: list[str | None] = [store.get(f) if store is not None and f.is_file() else None for f in files]
    todo = [i for i, t in enumerate(texts) if t is None]
    if todo:
        log.info("transcribing %d clips (%d cached)", len(todo), len(files) - len(todo))
        transcriber = transcriber or Transcriber(settings)
        bar = tqdm(total=len(todo), desc="transcribing", unit="clip", disable=not progress)
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start : start + settings.batch_size]
            waves = [load_audio(files[i], SAMPLE_RATE) for i in chunk]
            for i, text in zip(chunk, transcriber.transcribe_waves(waves), strict=True):
                texts[i] = text
                if store is not None:
                    store.put(files[i], text)
            if store is not None:
                store.save()
            bar.update(len(chunk))
        bar.close()
    return [t or "" for t in texts]


def cascade_similarity(transcripts: Sequence[str], bank_captions: Sequence[str], encoder=None) -> np.ndarray:
    """(len(transcripts), len(bank_captions)) cosines of the text encoder's sentence vectors (MiniLM by default)."""
    if not bank_captions:
        raise InputError("cascade: the caption bank is empty")
    if encoder is None:
        from fusion.encoders import load_encoder

        encoder = load_encoder("all-MiniLM-L6-v2")
    # An empty transcript (silence) is encoded as a space: it matches nothing in particular.
    queries = encoder.encode([t if t.strip() else " " for t in transcripts])
    keys = encoder.encode(list(bank_captions))
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    return (queries @ keys.T).astype(np.float32)


def cascade_nearest(transcripts: Sequence[str], bank_captions: Sequence[str], encoder=None) -> np.ndarray:
    """Index into ``bank_captions`` of the caption nearest to each transcript (cosine in the text encoder)."""
    if not transcripts:
        return np.zeros(0, np.int64)
    return cascade_similarity(transcripts, bank_captions, encoder).argmax(axis=1).astype(np.int64)
