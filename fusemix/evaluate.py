"""`fusemix eval`: audio-text retrieval benchmark of FuseMix and baselines (R@1/5/10, mAP@10).

    fusemix eval --checkpoint runs/fusemix --audio-latents test/audio --text-latents test/text --json eval.json
    fusemix eval --checkpoint runs/fusemix --audio-latents test/audio --text-latents test/text \\
        --method fusemix linear procrustes random \\
        --train-audio-latents train/audio --train-text-latents train/text --plot recall.png

text->audio: every caption is a query. audio->text: best rank among the clip's captions (see fusion.metrics).
With one method the JSON is {"text_to_audio": {...}, "audio_to_text": {...}, "num_clips", "num_captions"};
with several it maps each method name to such a dict.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion.adapters import FuseMixAdapters
from fusion.baselines import METHODS, fit_linear, fit_procrustes, random_adapters
from fusion.cache import atomic_write_json
from fusion.evaluate import EvalPairs, evaluate, load_pairs, plot_recall_curves
from fusion.metrics import format_table
from fusion.train import find_checkpoint

logger = logging.getLogger(__name__)

ARCH_KEYS = (
    "shared_dim",
    "num_blocks",
    "expansion",
    "dropout",
    "lock_text",
    "audio_adapter",
    "audio_tokens",
    "keep",
    "sparse_mode",
    "text_adapter",
    "text_tokens",
    "text_keep",
    "token_blocks",
)


@dataclass
class EvalConfig:
    """What to evaluate and where to write it."""

    audio_latents: str  # evaluation audio cache (one row per clip)
    text_latents: str  # evaluation caption cache
    checkpoint: str | None = None  # FuseMix run or model folder (needed for fusemix; gives random its shape)
    methods: list[str] = field(default_factory=lambda: ["fusemix"])  # fusemix, linear, procrustes, random
    train_audio_latents: str | None = None  # training caches that linear and procrustes are fitted on
    train_text_latents: str | None = None
    json: str | None = None  # write the metrics here
    plot: str | None = None  # write an R@k (k = 1..50) PNG here
    seed: int = 0  # seed of the random-adapter baseline


def build_model(method: str, cfg: EvalConfig, pairs: EvalPairs, train_pairs: EvalPairs | None):
    """The model for one method: load, fit on training latents, or draw at random."""
    if method == "fusemix":
        if cfg.checkpoint is None:
            raise ValueError("--method fusemix needs --checkpoint")
        return FuseMixAdapters.from_pretrained(find_checkpoint(cfg.checkpoint)).eval()
    if method == "random":
        arch = {}
        if cfg.checkpoint is not None:
            saved = FuseMixAdapters.load_config(find_checkpoint(cfg.checkpoint))
            arch = {k: saved[k] for k in ARCH_KEYS if k in saved}
        return random_adapters(pairs.audio.shape[-1], pairs.text.shape[-1], seed=cfg.seed, **arch)
    if train_pairs is None:
        raise ValueError(
            f"--method {method} is fitted on training latents: give --train-audio-latents and --train-text-latents"
        )
    train_audio = train_pairs.audio[torch.from_numpy(train_pairs.pairing.caption_clip)]
    fit = fit_linear if method == "linear" else fit_procrustes
    return fit(train_audio, train_pairs.text)


def run(cfg: EvalConfig) -> dict[str, dict]:
    """Metrics per method (with an R@k curve under "curve" when a plot is asked for)."""
    for method in cfg.methods:
        if method not in METHODS:
            raise ValueError(f"--method must be among {METHODS}, got {method!r}")
    if (cfg.train_audio_latents is None) != (cfg.train_text_latents is None):
        raise ValueError("give both --train-audio-latents and --train-text-latents, or neither")
    pairs = load_pairs(cfg.audio_latents, cfg.text_latents)
    train_pairs = None
    if cfg.train_audio_latents is not None and any(m in ("linear", "procrustes") for m in cfg.methods):
        train_pairs = load_pairs(cfg.train_audio_latents, cfg.train_text_latents)
    results = {}
    for method in cfg.methods:
        model = build_model(method, cfg, pairs, train_pairs)
        results[method] = evaluate(model, pairs, curve=cfg.plot is not None)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusemix eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--audio-latents", required=True, help="evaluation audio latent cache")
    p.add_argument("--text-latents", required=True, help="evaluation caption latent cache")
    p.add_argument("--checkpoint", help="FuseMix run folder (OUT of fusemix train) or model folder")
    p.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        default=["fusemix"],
        dest="methods",
        help="what to evaluate (several give one table row each)",
    )
    p.add_argument("--train-audio-latents", help="training audio cache (fits linear/procrustes)")
    p.add_argument("--train-text-latents", help="training caption cache (fits linear/procrustes)")
    p.add_argument("--json", help="write metrics JSON here")
    p.add_argument("--plot", help="write the R@k curve (k = 1..50) PNG here")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    return p


def main(argv: list[str] | None = None) -> int:
    cfg = EvalConfig(**vars(build_parser().parse_args(argv)))
    results = run(cfg)
    curves = {name: m.pop("curve") for name, m in results.items() if "curve" in m}
    print(format_table(results))
    if cfg.json:
        payload = results[cfg.methods[0]] if len(results) == 1 else results
        atomic_write_json(Path(cfg.json), payload)
        logger.info("metrics written to %s", cfg.json)
    if cfg.plot:
        plot_recall_curves(curves, cfg.plot)
        logger.info("R@k curve written to %s", cfg.plot)
    return 0
