"""`fusemix demo train-image-model`: train the demo world's text-to-image UNet (resumable).

    fusemix demo train-image-model --steps 6000                 # writes runs/image_model
    fusemix demo train-image-model --out runs/img --steps 50 --batch-size 8   # quick try
    fusemix demo train-image-model --out runs/img --steps 100 --resume        # continue it (or train longer)
    fusemix demo train-image-model --out runs/img --steps 100 --resume --translator runs/translator \
        --adapters runs/fusemix/checkpoint      # second stage: also on the translator's outputs
An existing OUT is never overwritten: --resume continues its run (the configuration must match, but for
--steps, the translator options, --device, --checkpoint-every and --no-progress); --fresh discards it first.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from fusion.errors import InputError
from generator.train_image_model import ImageModelConfig, discard, train_image_model


def parse_args(argv: list[str] | None) -> tuple[ImageModelConfig, bool, bool]:
    """The run's configuration, and whether to resume it or to start it afresh."""
    d = ImageModelConfig()
    p = argparse.ArgumentParser(prog="fusemix demo train-image-model", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=d.out, help="pipeline folder to write (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimisation steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--resolution", type=int, default=d.resolution, choices=(32, 64))
    p.add_argument("--widths", type=int, nargs="+", default=list(d.widths), help="UNet block widths")
    p.add_argument("--cond-dropout", type=float, default=d.cond_dropout)
    p.add_argument("--cond-noise", type=float, default=d.cond_noise)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--translator", default=None, help="also train on this translator's outputs (robust to them)")
    p.add_argument(
        "--adapters", default=None, help="FuseMix adapters the translator was trained with (default: locked MiniLM)"
    )
    p.add_argument("--translated-fraction", type=float, default=d.translated_fraction)
    p.add_argument("--translator-noise", type=float, default=d.translator_noise)
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT (from OUT/training_state)")
    p.add_argument("--fresh", action="store_true", help="discard the model and training state in OUT and start over")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1:
        raise InputError(f"--steps and --batch-size must be >= 1, got {a.steps} and {a.batch_size}")
    cfg = ImageModelConfig(**{f.name: getattr(a, f.name) for f in fields(ImageModelConfig)})
    cfg.widths = tuple(cfg.widths)
    if a.resume and a.fresh:
        raise InputError("--resume and --fresh exclude each other: continue the run in --out, or start it over")
    return cfg, a.resume, a.fresh


def main(argv: list[str] | None = None) -> int:
    cfg, resume, fresh = parse_args(argv)
    if fresh:
        discard(cfg.out)
    out = train_image_model(cfg, resume=resume)
    print(f"image model written to {out}")
    return 0
