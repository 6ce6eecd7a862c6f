"""Spoken captions: espeak-ng voices, speeds and pitches, background noise, 16 kHz WAV.

Each clip is the caption said by ``espeak-ng`` (Debian package ``espeak-ng``), padded with
0.5 s of silence at both ends (this roughly halves Whisper's word error rate on espeak speech),
mixed with coloured noise at a random SNR, given a random gain and resampled to 16 kHz.
Voices are split so the test split's voices are never heard in training.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from demoworld import accents
from fusion.cache import atomic_write_bytes
from fusion.errors import FusemixError

SAMPLE_RATE = 16_000
PAD_SECONDS = 0.5
ESPEAK = "espeak-ng"

# Voices are "<gmw accent>+<variant>" (mbrola voices are not used: they need extra packages).
# The held-out rule: the test split's variants (m7, f4) and its accent en-029 are never used in train or val;
# the val variants (m5, f5, m8) never in train. Train uses every other pair of a train accent and a variant that
# espeak-ng 1.51 ships, except the unvoiced whisper variants and "fast" (a speed test, not a voice).
TRAIN_ACCENTS: tuple[str, ...] = (
    "en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
)  # fmt: skip
TEST_ACCENTS: tuple[str, ...] = ("en-029",)
TEST_VARIANTS: tuple[str, ...] = ("m7", "f4")
VAL_VARIANTS: tuple[str, ...] = ("m5", "f5", "m8")
UNUSED_VARIANTS: tuple[str, ...] = ("whisper", "whisperf", "fast")
ALL_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda", "benjamin", "boris",
    "caleb", "croak", "david", "Demonic", "Denis", "Diogo", "ed", "edward", "edward2", "Gene", "Gene2",
    "grandma", "grandpa", "gustave", "announcer", "Henrique", "Hugo", "iven", "iven2", "iven3", "iven4",
    "Jacky", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "Lee", "linda",
    "marcelo", "Marco", "Mario", "max", "Michael", "michel", "miguel", "Mike", "Nguyen", "norbert",
    "pablo", "paul", "pedro", "quincy", "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8",
    "sandro", "shelby", "steph", "steph2", "steph3", "Storm", "travis", "Tweaky", "UniRobot", "victor", "zac",
    "anika", "anikaRobot", "AnxiousAndy", "whisper", "whisperf", "fast",
)  # fmt: skip
TRAIN_VARIANTS: tuple[str, ...] = tuple(
    v for v in ALL_VARIANTS if v not in TEST_VARIANTS + VAL_VARIANTS + UNUSED_VARIANTS
)
TRAIN_VOICES: tuple[str, ...] = tuple(f"{a}+{v}" for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS)
VAL_VOICES: tuple[str, ...] = ("en-us+m5", "en-gb-x-rp+f5", "en+m8")
TEST_VOICES: tuple[str, ...] = ("en-us+m7", "en-us+f4", "en-029+m7", "en-gb-x-rp+f4")
VOICES: dict[str, tuple[str, ...]] = {"train": TRAIN_VOICES, "val": VAL_VOICES, "test": TEST_VOICES}
# Accented English (`fusemix demo build --voices accented`): espeak-ng voices of other languages reading the English
# captions with their own phonology. Only these three came out as English Whisper tiny.en still mostly transcribes
# right; most other languages read English by their own spelling rules, which is gibberish, not an accent. Held out
# like the English ones: Vietnamese only ever validates (with the val variants), Hindi and Russian only ever train.
ACCENTED_TRAIN_ACCENTS: tuple[str, ...] = ("hi", "ru")
ACCENTED_VAL_ACCENTS: tuple[str, ...] = ("vi",)
ACCENTED_VOICES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"{a}+{v}" for a in ACCENTED_TRAIN_ACCENTS for v in TRAIN_VARIANTS),
    "val": tuple(f"{a}+{v}" for a in ACCENTED_VAL_ACCENTS for v in VAL_VARIANTS),
    "test": TEST_VOICES,
}
# Simulated accents (`--voices simulated`, demoworld.accents): the English voices, each clip bent by sound changes
# of its split's pool (training worlds hear TRAIN_CHANGES, validation VAL_CHANGES); the test split stays unbent.
VOICE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "english": VOICES,
    "accented": ACCENTED_VOICES,
    "simulated": VOICES,
}
ACCENT_POOLS: dict[str, dict[str, tuple[str, ...]]] = {
    "simulated": {"train": accents.TRAIN_CHANGES, "val": accents.VAL_CHANGES, "test": ()}
}

SPEED_RANGE: tuple[int, int] = (120, 170)  # words per minute (espeak -s); Whisper degrades above ~170
PITCH_RANGE: tuple[int, int] = (30, 70)  # espeak -p, 0..99, default 50
SNR_RANGE_DB: tuple[float, float] = (12.0, 30.0)
GAIN_RANGE: tuple[float, float] = (0.3, 0.9)  # peak amplitude after mixing
NOISE_COLOURS: tuple[str, ...] = ("white", "pink", "brown")


@dataclass(frozen=True)
class SpeechSettings:
    """How one caption is spoken: every field is recorded in the manifest."""

    voice: str  # espeak-ng voice, e.g. "en-us+f2"
    speed: int  # words per minute
    pitch: int  # 0..99
    snr_db: float  # speech-to-noise ratio of the added noise
    noise: str  # one of NOISE_COLOURS
    gain: float  # peak amplitude of the final clip
    accent: str = ""  # simulated accent (demoworld.accents): comma-separated sound changes, "" for none

    def to_dict(self) -> dict:
        return asdict(self)


def draw_settings(voices: tuple[str, ...], rng: np.random.Generator) -> SpeechSettings:
    """Random speaking settings with one of ``voices`` (no accent: the builder draws that from its own generator)."""
    if not voices:
        raise ValueError("voices must not be empty")
    return SpeechSettings(
        voice=voices[int(rng.integers(len(voices)))],
        speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
        pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        snr_db=round(float(rng.uniform(*SNR_RANGE_DB)), 2),
        noise=NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))],
        gain=round(float(rng.uniform(*GAIN_RANGE)), 3),
    )


def check_espeak() -> str:
    """Path of espeak-ng, or a clear error saying how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise FusemixError("espeak-ng not found on PATH: install it (Debian/Ubuntu: sudo apt-get install espeak-ng)")
    return path


@lru_cache(maxsize=1)
def installed_voices() -> tuple[frozenset[str], frozenset[str]]:
    """Voice names (e.g. "en-us", "en") and variants (e.g. "f2") that this espeak-ng knows (mbrola excluded)."""
    exe = check_espeak()
    languages: set[str] = set()
    for row in subprocess.run([exe, "--voices"], capture_output=True, text=True, check=False).stdout.splitlines()[1:]:
        cols = row.split()
        if len(cols) >= 5 and not cols[4].startswith("mb/"):  # mbrola voices need extra packages
            languages.add(cols[1])
            languages.update(re.findall(r"\(([\w-]+) \d+\)", row))  # other names it answers to: "(en 2)"
    variants: set[str] = set()
    for row in subprocess.run(
        [exe, "--voices=variant"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[1:]:
        if "!v/" in row:
            variants.add(re.sub(r"\s*\(.*\)$", "", row.split("!v/", 1)[1]).strip())
    return frozenset(languages), frozenset(variants)


def check_voice(voice: str) -> None:
    """Fail clearly on a voice espeak-ng would silently replace with its default."""
    languages, variants = installed_voices()
    base, _, variant = voice.partition("+")
    if base not in languages:
        raise FusemixError(f"espeak-ng has no voice {base!r} (from {voice!r}); see `espeak-ng --voices`")
    if variant and variant not in variants:
        raise FusemixError(f"espeak-ng has no variant {variant!r} (from {voice!r}); see `espeak-ng --voices=variant`")


def espeak_phonemes(text: str, voice: str) -> str:
    """espeak-ng's phoneme mnemonics for ``text`` as ``voice`` would say it (one line, words space-separated)."""
    check_voice(voice)
    proc = subprocess.run([check_espeak(), "-q", "-x", "-v", voice, text], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise FusemixError(f"espeak-ng could not transcribe {text!r} with voice {voice!r}: {proc.stderr.strip()}")
    return " ".join(proc.stdout.split())


def espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Raw espeak-ng speech as float32 in [-1, 1] and its sample rate (22050 Hz for gmw voices)."""
    if not text.strip():
        raise ValueError("text to speak is empty")
    check_voice(voice)
    cmd = [check_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        raise FusemixError(f"espeak-ng failed for voice {voice!r}: {msg}")
    audio, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return audio, int(sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (exact ratio, deterministic)."""
    if sr_in == sr_out:
        return audio.astype(np.float32)
    g = gcd(sr_in, sr_out)
    return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a white (flat), pink (1/f) or brown (1/f^2) power spectrum."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"noise must be one of {NOISE_COLOURS}, got {colour!r}")
    white = rng.standard_normal(n)
    if colour != "white":
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        spectrum /= f ** (0.5 if colour == "pink" else 1.0)
        spectrum[0] = 0.0
        white = np.fft.irfft(spectrum, n)
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12)).astype(np.float32)


def pad_silence(audio: np.ndarray, seconds: float = PAD_SECONDS, sr: int = SAMPLE_RATE) -> np.ndarray:
    pad = np.zeros(int(round(seconds * sr)), dtype=np.float32)
    return np.concatenate([pad, audio.astype(np.float32), pad])


def speak(text: str, settings: SpeechSettings, rng: np.random.Generator) -> np.ndarray:
    """The caption spoken with ``settings``: 16 kHz mono float32, padded, noisy, peak = ``settings.gain``."""
    if settings.accent:  # the caption's phonemes bent by the accent, spoken back from phonemes
        text = f"[[{accents.bend(espeak_phonemes(text, settings.voice), settings.accent, rng)}]]"
    raw, sr = espeak(text, settings.voice, settings.speed, settings.pitch)
    speech = resample(raw, sr)
    if float(np.sqrt(np.mean(speech**2))) == 0.0:
        raise FusemixError(f"espeak-ng produced silence for {text!r} with voice {settings.voice!r}")
    return finish_clip(speech, settings.snr_db, settings.noise, settings.gain, rng)


def finish_clip(speech: np.ndarray, snr_db: float, noise: str, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Every synthesizer's speech made a demo-world clip: 0.5 s silence padding, coloured noise at ``snr_db``,
    peak = ``gain``."""
    speech_rms = float(np.sqrt(np.mean(speech**2)))
    clip = pad_silence(speech)
    noise_rms = speech_rms / (10.0 ** (snr_db / 20.0))
    clip = clip + noise_rms * coloured_noise(len(clip), noise, rng)
    return (clip * (gain / float(np.max(np.abs(clip))))).astype(np.float32)


def wav_bytes(audio: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV, byte-for-byte deterministic for the same samples."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def ogg_bytes(audio: np.ndarray, sr: int = SAMPLE_RATE, compression: float = 0.7) -> bytes:
    """Ogg Vorbis (about 6x smaller than 16-bit WAV): for the example clips that ship in git."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sr, format="OGG", subtype="VORBIS", compression_level=compression)
    return buf.getvalue()


def write_wav(path: Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write a 16-bit WAV atomically (a crash never leaves a torn file)."""
    atomic_write_bytes(Path(path), wav_bytes(audio, sr))
