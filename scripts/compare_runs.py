"""Compare two judged runs clip by clip (`scripts/eval_demo_generation.py --json` files): per attribute, how many
clips each got right alone, and the exact McNemar p-value of that split.

    .venv/bin/python scripts/compare_runs.py runs/eval.json:test:audio runs/eval.json:test:audio-retrieve
    .venv/bin/python scripts/compare_runs.py runs/new.json:flite:audio runs/old.json:flite:audio

Each run is FILE:SPLIT:CONDITION. Both must have judged the same clips. p near 1: the lead is a few coin flips;
a small p (say < 0.05): one run is better on that attribute beyond the noise of these clips.
"""

from __future__ import annotations

import argparse
import sys

from demoworld.judged_runs import load_clips
from demoworld.paired import paired_counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="FILE:SPLIT:CONDITION")
    p.add_argument("b", help="FILE:SPLIT:CONDITION")
    a = p.parse_args(argv)
    try:
        table = paired_counts(load_clips(a.a), load_clips(a.b))
    except (OSError, ValueError, KeyError) as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 1
    print(f"a = {a.a}\nb = {a.b}")
    print(f"{'attribute':<12}{'a only':>8}{'b only':>8}{'both':>8}{'neither':>8}{'p':>8}")
    for attribute, row in table.items():
        cells = "".join(f"{row[k]:>8}" for k in ("a_only", "b_only", "both", "neither"))
        print(f"{attribute:<12}{cells}{row['p']:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
