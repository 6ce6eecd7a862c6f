"""Accuracy of one judged run (`scripts/eval_demo_generation.py --json`) per group of its clips: per voice, per
phrasing (template), per true colour, ...

    .venv/bin/python scripts/breakdown.py runs/eval.json:test:audio-retrieve --by voice
    .venv/bin/python scripts/breakdown.py runs/eval.json:test:audio --by scene.background

The run is FILE:SPLIT:CONDITION; the split's manifest (FOLDER/test.jsonl) is found from the run's own record of
its splits. A group that is far below the rest is one voice's or one word's problem, not the split's.
"""

from __future__ import annotations

import argparse
import sys

from demoworld.breakdown import accuracy_by
from demoworld.judge import ATTRIBUTES
from demoworld.judged_runs import load_clips, split_items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="FILE:SPLIT:CONDITION")
    p.add_argument("--by", default="voice", help="manifest field to group by: voice, template, scene.background, ...")
    a = p.parse_args(argv)
    try:
        table = accuracy_by(load_clips(a.run), split_items(a.run), a.by)
    except (OSError, ValueError, KeyError) as err:
        print(f"breakdown: {err}", file=sys.stderr)
        return 1
    width = max(len(a.by), *map(len, table)) + 2
    print(f"{a.by:<{width}}{'clips':>7}" + "".join(f"{x:>12}" for x in ATTRIBUTES))
    for name, row in table.items():
        print(f"{name:<{width}}{row['clips']:>7}" + "".join(f"{row[x]:>12.3f}" for x in ATTRIBUTES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
