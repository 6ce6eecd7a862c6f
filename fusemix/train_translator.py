"""`fusemix train-translator`: learn shared space -> image-model conditioning from captions alone.

    fusemix train-translator --adapters runs/fusemix/checkpoint --text-latents latents/text_train \
        --out runs/translator                                   # demo image model (MiniLM token states)
    fusemix train-translator --kind stable-diffusion --image-model path/to/sd15 --adapters ... --text-latents ... --out ...
    fusemix train-translator ... --out runs/translator --resume   # continue after an interruption

OUT is rewritten atomically after every epoch; an existing OUT is only continued (--resume), never overwritten.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from fusion.errors import InputError
from generator.image_text import KINDS
from generator.train_translator import TranslatorConfig, train_translator


def parse_args(argv: list[str] | None) -> tuple[TranslatorConfig, bool]:
    """The run's configuration, and whether to resume it."""
    d = TranslatorConfig(adapters="", text_latents="", out="")
    p = argparse.ArgumentParser(prog="fusemix train-translator", description=__doc__.split("\n")[0])
    p.add_argument("--adapters", required=True, help="FuseMix adapters folder (fusemix train's OUT/checkpoint)")
    p.add_argument("--text-latents", required=True, help="caption latent cache from fusemix extract")
    p.add_argument("--out", required=True, help="translator folder to write")
    p.add_argument("--kind", choices=KINDS, default=d.kind, help="image model kind (default: %(default)s)")
    p.add_argument("--image-model", default=None, help="SD-family pipeline folder or id (kind stable-diffusion)")
    for name in ("epochs", "batch_size", "num_blocks", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "noise", "dropout"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT (same configuration)")
    a = p.parse_args(argv)
    if a.kind == "stable-diffusion" and not a.image_model:
        raise InputError("--kind stable-diffusion needs --image-model (pipeline folder or hub id)")
    if a.epochs < 1 or a.batch_size < 1 or a.noise < 0:
        raise InputError("--epochs and --batch-size must be >= 1 and --noise >= 0")
    return TranslatorConfig(**{f.name: getattr(a, f.name) for f in fields(TranslatorConfig)}), a.resume


def parse_config(argv: list[str] | None) -> TranslatorConfig:
    """The run's configuration alone."""
    return parse_args(argv)[0]


def main(argv: list[str] | None = None) -> int:
    cfg, resume = parse_args(argv)
    out = train_translator(cfg, resume=resume)
    print(f"translator written to {out}")
    return 0
