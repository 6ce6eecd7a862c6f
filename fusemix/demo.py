"""`fusemix demo ACTION`: the demo world's tools.

fusemix demo build --out data/demo --size small
fusemix demo judge --images outputs/demo --manifest outputs/demo/prompts.jsonl
fusemix demo train-image-model --out runs/image_model
fusemix demo make-default --check                # the shipped default equals its recipe?
fusemix demo run --out outputs/demo      # what `make demo` runs
"""

from __future__ import annotations

import importlib

from fusion.errors import InputError

ACTIONS: dict[str, tuple[str, str]] = {
    "build": ("fusemix.demo_build", "generate scenes, captions, spoken captions and splits"),
    "build-neural": ("fusemix.demo_build_neural", "speak a split again with held-out neural (Kokoro) speakers"),
    "build-other": ("fusemix.demo_build_other", "speak a split again with a synthesizer training never uses (Flite)"),
    "judge": ("fusemix.demo_judge", "score generated images against their prompts"),
    "train-image-model": ("fusemix.demo_train_image_model", "train the demo world's text-to-image UNet"),
    "run": ("fusemix.demo_run", "the main job on the embedded default (what `make demo` runs)"),
    "make-default": ("fusemix.demo_make_default", "rebuild the embedded default from its recipe, or --check it"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ACTIONS:
        print("usage: fusemix demo ACTION [ARGS]\n\nactions:")
        for name, (_, help_) in ACTIONS.items():
            print(f"  {name:<20} {help_}")
        if argv and argv[0] not in ("-h", "--help"):
            raise InputError(f"unknown demo action {argv[0]!r}")
        return 0 if argv else 2
    from fusemix.cli import quiet_model_loading

    module = importlib.import_module(ACTIONS[argv[0]][0])
    quiet_model_loading()
    return int(module.main(argv[1:]) or 0)
