"""`fusemix train-translator`: learn shared space -> image-model conditioning from captions alone.

    fusemix train-translator --adapters runs/fusemix/checkpoint --text-latents latents/text_train \
        --out runs/translator                                   # demo image model (MiniLM token states)
    fusemix train-translator --kind stable-diffusion --image-model path/to/sd15 --adapters ... --text-latents ... --out ...
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from generator.image_text import KINDS
from generator.train_translator import TranslatorConfig, train_translator


def parse_config(argv: list[str] | None) -> TranslatorConfig:
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
    a = p.parse_args(argv)
    if a.kind == "stable-diffusion" and not a.image_model:
        raise ValueError("--kind stable-diffusion needs --image-model (pipeline folder or hub id)")
    if a.epochs < 1 or a.batch_size < 1 or a.noise < 0:
        raise ValueError("--epochs and --batch-size must be >= 1 and --noise >= 0")
    return TranslatorConfig(**{f.name: getattr(a, f.name) for f in fields(TranslatorConfig)})


def main(argv: list[str] | None = None) -> int:
    out = train_translator(parse_config(argv))
    print(f"translator written to {out}")
    return 0
