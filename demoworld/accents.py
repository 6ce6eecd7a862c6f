"""Simulated accents: English phonemes bent by the sound changes of second-language speakers, then spoken.

espeak-ng ships only three non-English voices whose English stays intelligible (speech.ACCENTED_VOICES), too few
kinds of accent to learn robustness from. A simulated accent is a handful of textbook sound changes (stopped "th",
ship/sheep merged, final consonants devoiced, schwa said as a full vowel, ...) applied to espeak-ng's own phoneme
transcription of the caption (``espeak-ng -x``), which is then spoken back from phonemes (``[[...]]``).

The changes are split into two pools by a fixed shuffle, not by hand: training worlds draw their accents from
``TRAIN_CHANGES``, validation splits from ``VAL_CHANGES``, so a validation score says how a model copes with sound
changes it never heard. Test splits are never accented here (they keep their own held-out voices).
"""

from __future__ import annotations

import re

import numpy as np

# name -> regex substitutions on espeak-ng's phoneme mnemonics ("'" marks stress, words are space-separated).
SOUND_CHANGES: dict[str, tuple[tuple[str, str], ...]] = {
    "th-stopping": ((r"T", "t"), (r"D", "d")),
    "th-fronting": ((r"T", "f"), (r"D", "v")),
    "w-to-v": ((r"w", "v"),),
    "v-to-w": ((r"v", "w"),),
    "l-to-r": ((r"l", "r"),),
    "r-to-l": ((r"r", "l"),),
    "h-dropping": ((r"h", ""),),
    "final-devoicing": ((r"z\b", "s"), (r"(?<!t)d\b", "t"), (r"g\b", "k"), (r"v\b", "f"), (r"dZ\b", "tS")),
    "ship-sheep": ((r"(?<![aOe])I(?![@2])", "i:"),),
    "sheep-ship": ((r"i:", "I"),),
    "trap-to-dress": ((r"a(?![I#U@])", "E"),),
    "strut-to-lot": ((r"V", "0"),),
    "nurse-fronting": ((r"3:", "E"),),
    "full-schwa": ((r"@(?![LU2])", "a"),),
    "dark-l-vowel": ((r"@L", "El"),),
    "face-monophthong": ((r"eI", "e:"),),
    "goat-monophthong": ((r"oU", "o:"),),
    "rhotic-r": ((r"A@", "A:r"), (r"e@", "e:r"), (r"O@", "o:r")),
    "final-epenthesis": ((r"([ptkbdg])\b", r"\1@"),),
    "j-for-dzh": ((r"dZ", "j"),),
    "sh-for-ch": ((r"tS", "S"),),
    "s-for-z": ((r"z", "s"),),
}
_ORDER = [str(n) for n in np.random.default_rng(20261204).permutation(sorted(SOUND_CHANGES))]
VAL_CHANGES: tuple[str, ...] = tuple(sorted(_ORDER[:6]))
TRAIN_CHANGES: tuple[str, ...] = tuple(sorted(_ORDER[6:]))
CHANGES_PER_ACCENT: tuple[int, int] = (2, 4)  # an accent is this many changes of its pool
APPLY_PROBABILITY = 0.8  # each place a change fits is changed this often: accents are not rules


def draw_accent(pool: tuple[str, ...], rng: np.random.Generator) -> str:
    """A comma-separated set of sound changes from ``pool`` ("" for an empty pool: no accent)."""
    if not pool:
        return ""
    count = min(len(pool), int(rng.integers(CHANGES_PER_ACCENT[0], CHANGES_PER_ACCENT[1] + 1)))
    return ",".join(sorted(pool[i] for i in rng.choice(len(pool), size=count, replace=False)))


def bend(phonemes: str, accent: str, rng: np.random.Generator) -> str:
    """``phonemes`` (espeak-ng mnemonics) with ``accent``'s changes applied, each place with APPLY_PROBABILITY."""
    for name in filter(None, accent.split(",")):
        if name not in SOUND_CHANGES:
            raise ValueError(f"unknown sound change {name!r}; known: {', '.join(sorted(SOUND_CHANGES))}")
        for pattern, replacement in SOUND_CHANGES[name]:
            phonemes = re.sub(
                pattern, lambda m, r=replacement: m.expand(r) if rng.random() < APPLY_PROBABILITY else m[0], phonemes
            )
    return phonemes


class _EveryPlace:
    """A stand-in generator under which ``bend`` changes every place a change fits."""

    def random(self) -> float:
        return 0.0


def words_bent(change: str, phonemes: dict[str, str]) -> list[str]:
    """The words (of ``phonemes``: word -> espeak-ng mnemonics) that ``change`` alters wherever it fits: a pool only
    teaches (or tests) the words its changes reach."""
    return [word for word, ph in phonemes.items() if bend(ph, change, _EveryPlace()) != ph]  # type: ignore[arg-type]
