"""`fusemix demo make-default`: rebuild the embedded default from nothing, or check a preset against its recipe.

    fusemix demo make-default --work runs/demo-default --out runs/demo-default/preset   # the shipped recipe
    fusemix demo make-default --tiny --out /tmp/tiny      # every step at toy size (~2 min on CPU)
    fusemix demo make-default --check                     # the shipped checkpoints/demo equals the recipe?
    fusemix demo make-default --recipe locked-text --check runs/locked/preset
The recipe is generator.recipe.DemoRecipe; re-running the same command skips finished steps and resumes the
rest. Nothing is written into checkpoints/ unless --out names it. --check prints each differing key on one line
and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusion.errors import InputError
from generator.presets import CHECKPOINTS
from generator.recipe import RECIPES
from generator.recipe_check import check_preset
from generator.recipe_run import make_default

SHIPPED = CHECKPOINTS / "demo"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fusemix demo make-default", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="default", help=f"one of {', '.join(RECIPES)} (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="the tiny recipe: same steps, toy sizes (--recipe tiny)")
    p.add_argument("--work", default=None, help="folder for the worlds, latents and runs (default: runs/make-RECIPE)")
    p.add_argument("--out", default=None, help="preset folder to write (default: WORK/preset)")
    p.add_argument(
        "--check",
        nargs="?",
        const=str(SHIPPED),
        default=None,
        metavar="PRESET",
        help="compare PRESET (default: the shipped checkpoints/demo) with the recipe instead of building",
    )
    p.add_argument("--device", default="cpu", help="torch device for extraction and training (default: cpu)")
    a = p.parse_args(argv)
    if a.tiny:
        if a.recipe not in ("default", "tiny"):
            raise InputError(f"--tiny and --recipe {a.recipe} disagree: give one of them")
        a.recipe = "tiny"
    if a.recipe not in RECIPES:
        raise InputError(f"--recipe must be one of {', '.join(RECIPES)}, got {a.recipe!r}")
    return a


def main(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    a = parse_args(argv)
    recipe = replace(RECIPES[a.recipe], device=a.device)
    if a.check is not None:
        folder = Path(a.check)
        if not (folder / "preset.json").is_file():
            raise InputError(f"--check: no preset at {folder} (preset.json missing)")
        diffs = check_preset(recipe, folder)
        for line in diffs:
            print(line)
        if diffs:
            print(f"{folder}: {len(diffs)} difference(s) from the {recipe.name} recipe")
            return 1
        print(f"{folder}: matches the {recipe.name} recipe")
        return 0
    work = Path(a.work or f"runs/make-{recipe.name}")
    out = Path(a.out) if a.out else work / "preset"
    make_default(recipe, work, out)
    print(f"{recipe.name} preset written to {out} (work in {work}); check it with: "
          f"fusemix demo make-default --recipe {recipe.name} --check {out}")  # fmt: skip
    return 0
