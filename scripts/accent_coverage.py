"""Which caption words each simulated sound change (demoworld.accents) reaches, by pool: a training pool that never
bends "square" cannot teach the adapters an accented "square", whatever validation then asks.

    .venv/bin/python scripts/accent_coverage.py                  # the attribute words, en-us
    .venv/bin/python scripts/accent_coverage.py --voice en-gb-x-rp --words background the scene

Needs espeak-ng (scripts/system-deps.sh).
"""

from __future__ import annotations

import argparse
import sys

from demoworld import accents, scenes, speech
from fusion.errors import FusemixError


def attribute_words() -> list[str]:
    """Every word that names a colour, a shape or a size in the demo world's captions."""
    sizes = {word for words in scenes.SIZE_WORDS.values() for word in words}
    return sorted(set(scenes.COLOURS) | set(scenes.SHAPES) | sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice whose phonemes are bent (default en-us)")
    parser.add_argument("--words", nargs="+", help="words to check (default: the colour, shape and size words)")
    args = parser.parse_args(argv)
    words = args.words or attribute_words()
    try:
        phonemes = {word: speech.espeak_phonemes(word, args.voice) for word in words}
    except FusemixError as err:
        print(f"accent_coverage: {err}", file=sys.stderr)
        return 2
    for pool, names in (("train", accents.TRAIN_CHANGES), ("val", accents.VAL_CHANGES)):
        for name in names:
            print(f"{pool:5s}  {name:18s}  {' '.join(accents.words_bent(name, phonemes)) or '-'}")
    reached = {word for name in accents.TRAIN_CHANGES for word in accents.words_bent(name, phonemes)}
    print(f"never bent in training: {' '.join(w for w in words if w not in reached) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
