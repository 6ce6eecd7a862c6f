"""`fusemix hard-negatives`: list each caption's versions with two same-class words swapped, for `fusemix train`.

    fusemix hard-negatives --captions data/train.jsonl --swap-classes swap_classes.json --out data/swaps.jsonl
    fusemix extract --encoder all-MiniLM-L6-v2 --manifest data/swaps.jsonl --out latents/text-swaps
    fusemix train --audio-latents latents/audio --text-latents latents/text --hard-negatives latents/text-swaps ...

"a red circle on a blue background" -> "a blue circle on a red background": the swapped captions' latents become
extra negatives for the caption's audio (NegCLIP), so the shared space learns which word goes with what.
SWAP_CLASSES is JSON, e.g. {"colour": ["red", "green", "blue"]}; `fusemix demo build` writes the demo world's.
Use the same --captions manifest (and text encoder, and --tokens) as for the --text-latents cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusemix.cli import check_count
from fusion.hard_negatives import load_swap_classes, write_swap_manifest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusemix hard-negatives", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--captions", required=True, type=Path, help="the caption manifest the text cache is built from")
    p.add_argument("--swap-classes", required=True, type=Path, help="JSON: class name -> list of words to swap")
    p.add_argument("--out", required=True, type=Path, help="JSONL manifest of swapped captions to write")
    p.add_argument("--limit", type=int, default=2, help="swapped versions per caption, at most (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_count("--limit", args.limit)
    counts = write_swap_manifest(args.captions, load_swap_classes(args.swap_classes), args.out, args.limit)
    print(
        f"{counts['swapped']} swapped captions for {counts['swappable']} of {counts['captions']} captions: {args.out}"
    )
    return 0
