"""`fusemix hard-negatives`: list each caption's versions with two same-class words swapped, for `fusemix train`.

    fusemix hard-negatives --captions data/train.jsonl --swap-classes swap_classes.json --out data/swaps.jsonl
    fusemix extract --encoder all-MiniLM-L6-v2 --manifest data/swaps.jsonl --out latents/text-swaps
    fusemix train --audio-latents latents/audio --text-latents latents/text --hard-negatives latents/text-swaps ...

"a red circle on a blue background" -> "a blue circle on a red background": the swapped captions' latents become
extra negatives for the caption's audio (NegCLIP), so the shared space learns which word goes with what.
SWAP_CLASSES is JSON, e.g. {"colour": ["red", "green", "blue"]}; `fusemix demo build` writes the demo world's.
--substitutes adds each caption with one word replaced, JSON word -> replacement, e.g. {"big": "little", "little":
"big"}: "a big red dot" -> "a little red dot", a negative for an attribute a caption names once (listed after the
swaps, so --limit of `fusemix train` keeps the swaps first).
Use the same --captions manifest (and text encoder, and --tokens) as for the --text-latents cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusemix.cli import check_count
from fusion.hard_negatives import load_substitutes, load_swap_classes, write_swap_manifest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusemix hard-negatives", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--captions", required=True, type=Path, help="the caption manifest the text cache is built from")
    p.add_argument("--swap-classes", required=True, type=Path, help="JSON: class name -> list of words to swap")
    p.add_argument("--out", required=True, type=Path, help="JSONL manifest of swapped captions to write")
    p.add_argument("--limit", type=int, default=2, help="swapped versions per caption, at most (default 2)")
    p.add_argument("--substitutes", type=Path, help="JSON: word -> the word that replaces it (default: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_count("--limit", args.limit)
    substitutes = load_substitutes(args.substitutes) if args.substitutes else None
    classes = load_swap_classes(args.swap_classes)
    counts = write_swap_manifest(args.captions, classes, args.out, args.limit, substitutes)
    print(
        f"{counts['swapped']} swapped captions for {counts['swappable']} of {counts['captions']} captions: {args.out}"
    )
    return 0
