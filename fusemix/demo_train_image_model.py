"""`fusemix demo train-image-model`: train the demo world's text-to-image UNet (resumable).

    fusemix demo train-image-model --out checkpoints/demo/image_model --steps 6000
    fusemix demo train-image-model --out runs/img --steps 50 --batch-size 8   # quick try
Interrupted runs continue with --resume (the default when training_state/ exists); --fresh starts over.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import fields
from pathlib import Path

from generator.train_image_model import ImageModelConfig, train_image_model


def parse_args(argv: list[str] | None) -> tuple[ImageModelConfig, bool]:
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
    p.add_argument("--resume", action="store_true", help="continue from OUT/training_state (default when it exists)")
    p.add_argument("--fresh", action="store_true", help="discard OUT/training_state and start over")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1:
        raise ValueError(f"--steps and --batch-size must be >= 1, got {a.steps} and {a.batch_size}")
    cfg = ImageModelConfig(**{f.name: getattr(a, f.name) for f in fields(ImageModelConfig)})
    cfg.widths = tuple(cfg.widths)
    return cfg, a.fresh


def main(argv: list[str] | None = None) -> int:
    cfg, fresh = parse_args(argv)
    state = Path(cfg.out) / "training_state"
    if fresh and state.exists():
        shutil.rmtree(state)
    out = train_image_model(cfg)
    print(f"image model written to {out}")
    return 0
