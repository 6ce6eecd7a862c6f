"""Spoken captions by a synthesizer training never uses: Flite (CMU, Debian package ``flite``).

The demo world trains on espeak-ng (and optionally Kokoro) voices; a split spoken by Flite's voices measures how
the shared space copes with a synthesizer it has never heard, the way a user's own voice is new to it. Flite is a
different engine (unit selection / HTS, not formants), so its voices share no timbre with espeak-ng's. Held-out
rule: no Flite voice is ever used in a train or val split; every usable one speaks the other-synthesizer split.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from demoworld import speech
from fusion.errors import FusemixError, InputError

SYNTHESIZER = "flite"
# Flite 2.2's built-in voices, except awb_time (a limited-domain voice that only says times of day).
VOICES: tuple[str, ...] = ("kal", "kal16", "awb", "rms", "slt")
SPEED_RANGE: tuple[float, float] = (0.9, 1.15)  # duration_stretch: above 1 is slower


@dataclass(frozen=True)
class FliteSettings:
    """How one caption is spoken by Flite: every field is recorded in the manifest."""

    voice: str
    stretch: float  # Flite's duration_stretch
    snr_db: float
    noise: str
    gain: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_flite() -> str:
    """Path of flite, or a clear error saying how to install it."""
    path = shutil.which("flite")
    if path is None:
        raise FusemixError("flite not found on PATH: install it (Debian/Ubuntu: sudo apt-get install flite)")
    return path


def draw_settings(rng: np.random.Generator, voices: tuple[str, ...] = VOICES) -> FliteSettings:
    """A Flite voice, a speed, and the espeak world's noise and gain ranges."""
    if not voices:
        raise InputError("voices must not be empty")
    return FliteSettings(
        voice=voices[int(rng.integers(len(voices)))],
        stretch=round(float(rng.uniform(*SPEED_RANGE)), 3),
        snr_db=round(float(rng.uniform(*speech.SNR_RANGE_DB)), 2),
        noise=speech.NOISE_COLOURS[int(rng.integers(len(speech.NOISE_COLOURS)))],
        gain=round(float(rng.uniform(*speech.GAIN_RANGE)), 3),
    )


def flite(text: str, voice: str, stretch: float = 1.0) -> np.ndarray:
    """Raw Flite speech of ``text``, resampled to 16 kHz mono float32."""
    if not text.strip():
        raise InputError("text to speak is empty")
    if voice not in VOICES:
        raise InputError(f"flite voice must be one of {VOICES}, got {voice!r}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        cmd = [check_flite(), "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text, "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.is_file():
            raise FusemixError(f"flite failed for voice {voice!r}: {proc.stderr.strip() or proc.returncode}")
        audio, sr = sf.read(out, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return speech.resample(audio, int(sr))


def speak_clip(text: str, settings: FliteSettings, rng: np.random.Generator) -> np.ndarray:
    """A demo-world clip spoken by Flite: padded, noisy, peak = gain (as ``speech.speak`` does for espeak-ng)."""
    raw = flite(text, settings.voice, settings.stretch)
    if float(np.sqrt(np.mean(raw**2))) == 0.0:
        raise FusemixError(f"flite produced silence for {text!r} with voice {settings.voice!r}")
    return speech.finish_clip(raw, settings.snr_db, settings.noise, settings.gain, rng)
