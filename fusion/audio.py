"""Load an audio file as float32 mono at the sample rate an encoder wants, or fail with one clear line.

soundfile (libsndfile: WAV, FLAC, OGG, MP3, AIFF, ...) decodes first; librosa (audioread) is the fallback for
formats libsndfile cannot open. Every unusable file raises ``AudioError`` naming the file and the reason, so a
batch job can skip it and list it in a report.
"""

from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path

import numpy as np

from fusion.errors import AudioError

log = logging.getLogger(__name__)

# Formats whose header frame count is exact, so reading fewer frames than announced means the file is cut.
_EXACT_FRAME_COUNT = {"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF", "CAF", "AU"}
# Decoded length may exceed the header's duration by this much before we call it too long (codec padding).
_LENGTH_TOLERANCE_S = 0.05
# Shortest clip encoded as it is: 5 frames of Whisper's 20 ms (the frames the encoders pool over). Shorter clips
# are padded with silence up to this length, with a logged warning, so the user knows what the model heard.
MIN_SECONDS = 0.1


def load_audio(
    path: str | Path, sample_rate: int, max_seconds: float | None = 60.0, min_seconds: float | None = MIN_SECONDS
) -> np.ndarray:
    """Decode ``path`` to a float32 mono array at ``sample_rate`` Hz.

    Raises ``AudioError`` when the file is missing, a directory, empty, truncated or corrupt, not audio, holds no
    samples, holds NaN/inf samples, or lasts longer than ``max_seconds`` (checked from the header before decoding
    where the format allows; ``None`` disables the limit). Silence is valid audio. A clip shorter than
    ``min_seconds`` is padded with silence to that length, and a warning says so.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not path.exists():
        raise AudioError(f"audio file {path}: not found")
    if path.is_dir():
        raise AudioError(f"audio file {path}: is a directory, not an audio file")
    if not path.is_file():
        raise AudioError(f"audio file {path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise AudioError(f"audio file {path}: empty (0 bytes)")
    _check_riff(path, size)

    try:
        audio, sr = _read_soundfile(path, max_seconds)
    except _SoundfileCannotOpen as err:
        audio, sr = _read_librosa(path, max_seconds, soundfile_reason=str(err))

    if audio.size == 0:
        raise AudioError(f"audio file {path}: holds no samples")
    if not np.isfinite(audio).all():
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioError(f"audio file {path}: {bad} samples are NaN or infinite")
    if max_seconds is not None and len(audio) / sr > max_seconds + _LENGTH_TOLERANCE_S:
        raise AudioError(f"audio file {path}: {len(audio) / sr:.1f} s is longer than the limit of {max_seconds:g} s")
    if sr != sample_rate:
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=sample_rate)
    return _pad_short(np.ascontiguousarray(audio, dtype=np.float32), path, sample_rate, min_seconds)


def _pad_short(audio: np.ndarray, path: Path, sample_rate: int, min_seconds: float | None) -> np.ndarray:
    """Pad a clip shorter than the encoders' minimum with trailing silence, and say so."""
    need = 0 if min_seconds is None else int(np.ceil(min_seconds * sample_rate))
    if len(audio) >= need:
        return audio
    log.warning(
        "audio file %s: %.3f s is shorter than the %g s the audio encoder needs; padded with silence",
        path,
        len(audio) / sample_rate,
        min_seconds,
    )
    return np.pad(audio, (0, need - len(audio)))


class _SoundfileCannotOpen(Exception):
    """libsndfile does not know the format; another decoder may."""


def _read_soundfile(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as err:
        raise _SoundfileCannotOpen(_clean_sf_message(err, path)) from None
    except RuntimeError as err:  # older soundfile versions
        raise _SoundfileCannotOpen(_clean_sf_message(err, path)) from None
    if info.samplerate <= 0:
        raise AudioError(f"audio file {path}: header gives sample rate {info.samplerate}")
    if info.frames == 0:
        raise AudioError(f"audio file {path}: holds no samples")
    if max_seconds is not None and info.duration > max_seconds + _LENGTH_TOLERANCE_S:
        raise AudioError(f"audio file {path}: {info.duration:.1f} s is longer than the limit of {max_seconds:g} s")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"audio file {path}: truncated or corrupt ({_clean_sf_message(err, path)})") from None
    if info.format in _EXACT_FRAME_COUNT and 0 < info.frames and len(data) < info.frames:
        raise AudioError(f"audio file {path}: truncated (header announces {info.frames} frames, {len(data)} decoded)")
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], int(sr)


def _read_librosa(path: Path, max_seconds: float | None, soundfile_reason: str) -> tuple[np.ndarray, int]:
    import librosa

    limit = None if max_seconds is None else max_seconds + 1.0  # decode just past the limit, then reject
    try:
        with warnings.catch_warnings():  # librosa warns that soundfile failed: we know, that is why we are here
            warnings.simplefilter("ignore")
            audio, sr = librosa.load(str(path), sr=None, mono=True, duration=limit)
    except Exception as err:  # audioread raises many unrelated types; all mean "cannot decode"
        reason = f"{type(err).__name__}: {err}".strip().rstrip(":")
        log.debug("librosa could not decode %s: %s", path, reason)
        raise AudioError(f"audio file {path}: not a readable audio file ({soundfile_reason})") from None
    return np.asarray(audio, dtype=np.float32), int(sr)


def _check_riff(path: Path, size: int) -> None:
    """Catch WAV files cut short: libsndfile silently reads what is there, so compare the data chunk to the file size."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        offset = 12
        while True:
            f.seek(offset)
            chunk = f.read(8)
            if len(chunk) < 8:
                raise AudioError(f"audio file {path}: truncated or corrupt WAV (no data chunk in {size} bytes)")
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mean "unknown length" (streamed writers); libsndfile then reads to the end.
                if chunk_size not in (0, 0xFFFFFFFF) and offset + 8 + chunk_size > size:
                    have = size - offset - 8
                    raise AudioError(
                        f"audio file {path}: truncated (data chunk announces {chunk_size} bytes, file holds {have})"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def _clean_sf_message(err: Exception, path: Path) -> str:
    text = str(err).replace(f"Error opening {str(path)!r}: ", "").strip()
    return " ".join(text.split()) or type(err).__name__
