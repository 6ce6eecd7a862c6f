"""`fusemix demo build`: generate the demo world (scene images, spoken captions, splits), resumably.

fusemix demo build --out data/demo                      # default size: 3000/300/500 clips, < 10 min on 2 cores
fusemix demo build --out /tmp/demo --size small --no-progress
fusemix demo build --out data/demo64 --size 5000 --resolution 64 --seed 1 --workers 4
fusemix demo build --out data/demo_accented --seed 4 --voices accented   # Hindi/Russian train, Vietnamese val
fusemix demo build --out data/demo_simulated --seed 5 --voices simulated  # English voices, simulated accents
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from demoworld.build import RESOLUTIONS, SIZE_PRESETS, BuildConfig, build, scene_counts
from demoworld.speech import VOICE_SETS


def parse_args(argv: list[str] | None) -> BuildConfig:
    parser = argparse.ArgumentParser(prog="fusemix demo build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (re-run the same command to resume)")
    parser.add_argument("--size", default="default", help=f"one of {', '.join(SIZE_PRESETS)} or a number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="every image, caption and sound is drawn from it")
    parser.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng synthesis threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--voices", default="english", choices=tuple(VOICE_SETS),
        help="english: the English accents (default); accented: espeak-ng's Hindi and Russian voices read the "
        "training captions, Vietnamese the validation ones (test keeps its English voices); simulated: the English "
        "voices with simulated accents, sound changes bent into espeak-ng's phonemes (demoworld.accents; training "
        "and validation draw from disjoint pools, test is unbent)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    scene_counts(args.size)  # fail on a bad --size before touching the disk
    return BuildConfig(out=args.out, size=args.size, seed=args.seed, resolution=args.resolution,
                       workers=args.workers, progress=not args.no_progress, voices=args.voices)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    readme = build(config)
    counts = ", ".join(f"{split} {c['clips']} clips / {c['scenes']} scenes" for split, c in readme["counts"].items())
    print(f"demo world in {config.out}: {counts}; built in {readme['build_seconds']} s")
    heard = {k: readme["settings"][k] for k in ("voices", "accents") if k in readme["settings"]}
    print(json.dumps(heard, indent=None))
    return 0
