"""Augmented views of a clip for extraction (``fusemix extract --augment K``): voices and rooms training never heard.

A frozen encoder sees each clip clean and in K augmented views; the views become extra rows of the audio cache
(ids ``<clip id>#aug<k>``) and training draws one row per clip per epoch, so the adapters learn what survives a
faster speaker, a higher voice, a noisy room, a reverberant hall or a telephone line, not one synthesizer's voice.

Each view applies a random non-empty subset of five effects, in this order:

- ``tempo``: speaking rate x0.85-1.15, pitch kept (``librosa.effects.time_stretch``, phase vocoder);
- ``pitch``: -3..+3 semitones, duration kept (``librosa.effects.pitch_shift``);
- ``reverb``: a synthetic room impulse response (direct path + exponentially decaying noise tail, RT60
  0.15-0.8 s, direct-to-reverberant ratio 0-12 dB) applied with ``scipy.signal.fftconvolve``;
- ``noise``: white or pink Gaussian noise at an SNR of 0, 5, 10, 20 or 30 dB (pink by ``scipy.signal.lfilter``);
- ``band``: a telephone line (300-3400 Hz Butterworth band-pass + 8-bit mu-law, G.711-like, via
  ``librosa.mu_compress``/``mu_expand``), or a low-pass at 2-5 kHz (a low-bitrate codec's missing top band).

Library: librosa and scipy effects, not ``audiomentations``. audiomentations 0.43.1 (MIT, the current release)
pins ``soxr<1.0``, and librosa 0.11 here runs on soxr 1.1: installing it downgrades the resampler every clip is
loaded through (``fusion.audio.load_audio``), and no audiomentations release accepts both our librosa and soxr.
torchaudio has no wheel for our local CPU torch. librosa and scipy are dependencies already; the only code
written here is the impulse response and the SNR arithmetic.

Determinism: a view is a pure function of (seed, clip id, view index): its parameters and noise come from a
``numpy.random.Generator`` seeded by a hash of the three, so a resumed, sharded or multi-process extraction
writes the same bytes as one uninterrupted process, whichever thread decodes the clip.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

EFFECTS = ("tempo", "pitch", "reverb", "noise", "band")
EFFECT_PROBABILITY = 0.5  # each effect's chance of joining a view (a view with none gets one at random)
TEMPO_RANGE = (0.85, 1.15)  # speaking-rate factors
SEMITONE_RANGE = (-3.0, 3.0)
RT60_RANGE = (0.15, 0.8)  # seconds for the reverberant tail to fall by 60 dB
DRR_RANGE = (0.0, 12.0)  # direct-to-reverberant energy ratio, dB
SNRS_DB = (0.0, 5.0, 10.0, 20.0, 30.0)
LOWPASS_RANGE = (2000.0, 5000.0)  # Hz
TELEPHONE_BAND = (300.0, 3400.0)  # Hz
PEAK = 0.99  # views are scaled down to this peak if an effect pushed them past full scale
# the recipe above, versioned: the cache fingerprint records it, so changing the effects refuses to mix caches
RECIPE = 1
# Paul Kellet's pink-noise filter (-3 dB/octave within 0.5 dB over the audio band)
_PINK_B = (0.049922035, -0.095993537, 0.050612699, -0.004408786)
_PINK_A = (1.0, -2.494956002, 2.017265875, -0.522189400)


@dataclass(frozen=True)
class ViewParams:
    """The effects of one view and their settings; ``None`` is an effect the view leaves out."""

    tempo: float | None = None  # rate factor (> 1: faster)
    semitones: float | None = None
    rt60: float | None = None  # reverb: decay time (s)
    drr_db: float | None = None  # reverb: direct-to-reverberant ratio
    snr_db: float | None = None
    noise_colour: str | None = None  # "white" or "pink"
    band: str | None = None  # "telephone" or "lowpass"
    cutoff_hz: float | None = None  # low-pass cutoff
    seed: int = 0  # seeds the view's noise and impulse response

    @property
    def effects(self) -> list[str]:
        present = {
            "tempo": self.tempo,
            "pitch": self.semitones,
            "reverb": self.rt60,
            "noise": self.snr_db,
            "band": self.band,
        }
        return [name for name in EFFECTS if present[name] is not None]


def view_rng(seed: int, clip_id: str, view: int) -> np.random.Generator:
    """The generator of view ``view`` of clip ``clip_id``: the same in every process, thread and run."""
    key = json.dumps(["fusemix-augment", RECIPE, int(seed), str(clip_id), int(view)]).encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def draw_view(seed: int, clip_id: str, view: int) -> ViewParams:
    """Which effects view ``view`` (1..K) of a clip applies, and how strongly."""
    if view < 1:
        raise ValueError(f"view must be >= 1 (0 is the clean clip), got {view}")
    rng = view_rng(seed, clip_id, view)
    chosen = rng.random(len(EFFECTS)) < EFFECT_PROBABILITY
    if not chosen.any():
        chosen[rng.integers(len(EFFECTS))] = True
    on = dict(zip(EFFECTS, chosen.tolist(), strict=True))
    draws = {  # every draw is made whether or not its effect is on: a view's settings do not shift with its subset
        "tempo": float(rng.uniform(*TEMPO_RANGE)),
        "semitones": float(rng.uniform(*SEMITONE_RANGE)),
        "rt60": float(rng.uniform(*RT60_RANGE)),
        "drr_db": float(rng.uniform(*DRR_RANGE)),
        "snr_db": float(rng.choice(SNRS_DB)),
        "noise_colour": ("white", "pink")[int(rng.integers(2))],
        "band": ("telephone", "lowpass")[int(rng.integers(2))],
        "cutoff_hz": float(rng.uniform(*LOWPASS_RANGE)),
        "seed": int(rng.integers(2**63)),
    }
    return ViewParams(
        tempo=draws["tempo"] if on["tempo"] else None,
        semitones=draws["semitones"] if on["pitch"] else None,
        rt60=draws["rt60"] if on["reverb"] else None,
        drr_db=draws["drr_db"] if on["reverb"] else None,
        snr_db=draws["snr_db"] if on["noise"] else None,
        noise_colour=draws["noise_colour"] if on["noise"] else None,
        band=draws["band"] if on["band"] else None,
        cutoff_hz=draws["cutoff_hz"] if on["band"] and draws["band"] == "lowpass" else None,
        seed=draws["seed"],
    )


def augment_view(audio: np.ndarray, sample_rate: int, seed: int, clip_id: str, view: int) -> np.ndarray:
    """View ``view`` (1..K) of a clip decoded at ``sample_rate``: float32 mono, length changed only by tempo."""
    return apply_view(audio, sample_rate, draw_view(seed, clip_id, view))


def apply_view(audio: np.ndarray, sample_rate: int, params: ViewParams) -> np.ndarray:
    """Apply ``params``'s effects in order: tempo, pitch (the speaker), reverb, noise (the room), band (the line)."""
    import librosa

    x = np.asarray(audio, dtype=np.float32)
    rng = np.random.default_rng(params.seed)
    n_fft = _n_fft(sample_rate)
    if params.tempo is not None and len(x) > n_fft:
        x = librosa.effects.time_stretch(x, rate=params.tempo, n_fft=n_fft)
    if params.semitones is not None and len(x) > n_fft:
        x = librosa.effects.pitch_shift(x, sr=sample_rate, n_steps=params.semitones, n_fft=n_fft)
    if params.rt60 is not None:
        x = _reverb(x, sample_rate, params.rt60, params.drr_db, rng)
    if params.snr_db is not None:
        x = _add_noise(x, params.snr_db, params.noise_colour, rng)
    if params.band is not None:
        x = _band_limit(x, sample_rate, params.band, params.cutoff_hz)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak > PEAK:
        x = x * (PEAK / peak)
    return np.ascontiguousarray(x, dtype=np.float32)


def _n_fft(sample_rate: int) -> int:
    """About 32 ms: the phase vocoder's window for speech (librosa's 2048 smears syllables at 16 kHz)."""
    return 1 << max(6, int(round(np.log2(0.032 * sample_rate))))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _reverb(x: np.ndarray, sample_rate: int, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with direct path + a noise tail decaying 60 dB in ``rt60`` s; loudness (RMS) kept."""
    from scipy.signal import fftconvolve

    t = np.arange(1, max(2, int(rt60 * sample_rate))) / sample_rate
    tail = rng.standard_normal(len(t)) * np.exp(-np.log(1000.0) * t / rt60)
    tail *= 10 ** (-drr_db / 20) / max(np.sqrt(np.sum(tail**2)), 1e-12)
    wet = fftconvolve(x.astype(np.float64), np.concatenate([[1.0], tail]))[: len(x)]
    return (wet * (_rms(x) / max(_rms(wet), 1e-12))).astype(np.float32)


def _add_noise(x: np.ndarray, snr_db: float, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise at ``snr_db`` below the clip's RMS (silence stays silent: there is no signal to mask)."""
    from scipy.signal import lfilter

    noise = rng.standard_normal(len(x))
    if colour == "pink":
        noise = lfilter(_PINK_B, _PINK_A, noise)
    noise *= _rms(x) * 10 ** (-snr_db / 20) / max(_rms(noise), 1e-12)
    return (x + noise).astype(np.float32)


def _band_limit(x: np.ndarray, sample_rate: int, band: str, cutoff_hz: float | None) -> np.ndarray:
    """A telephone line (band-pass + 8-bit mu-law) or a low-pass; cutoffs kept below Nyquist."""
    import librosa
    from scipy.signal import butter, sosfilt

    nyquist = 0.45 * sample_rate
    if band == "telephone":
        low, high = TELEPHONE_BAND[0], min(TELEPHONE_BAND[1], nyquist)
        y = sosfilt(butter(6, [low, high], btype="bandpass", fs=sample_rate, output="sos"), x)
        y = np.clip(y, -1.0, 1.0)
        return librosa.mu_expand(librosa.mu_compress(y, mu=255, quantize=True), mu=255, quantize=True).astype(
            np.float32
        )
    if band == "lowpass":
        cutoff = min(float(cutoff_hz), nyquist)
        return sosfilt(butter(8, cutoff, btype="lowpass", fs=sample_rate, output="sos"), x).astype(np.float32)
    raise ValueError(f"band must be 'telephone' or 'lowpass', got {band!r}")
