"""Sparse pooling ablation: mean-pooled MLP vs sparse top-k (several k) vs all K tokens, on held-out retrieval.

Every variant trains FuseMix with a locked text tower (audio lands in the text encoder's space, as the demo default
then did) for the same epochs, batch and seed, then is scored on the test split (text->audio and audio->text R@1, the
``fusemix eval`` metrics). Variants:

- ``mlp (pooled cache)``: the mlp adapter on the pooled cache (``--pooled-train/--pooled-test``, optional);
- ``mlp (mean of K)``: the mlp adapter on the mean of the K tokens (written next to the runs);
- ``sparse k=...``: ``--audio-adapter sparse --keep k`` on the token cache; ``k = K`` keeps every token (the
  "no sparsification" control: same tower, nothing dropped).

    .venv/bin/python bench/sparse_ablation.py \\
        --tokens-train data/demo/latents/audio_tokens32_train --tokens-test data/demo/latents/audio_tokens32_test \\
        --text-train data/demo/latents/text_train --text-test data/demo/latents/text_test \\
        --pooled-train data/demo/latents/audio_train --pooled-test data/demo/latents/audio_test \\
        --keeps 2 4 8 16 32 --epochs 40 --out runs/sparse_ablation

Cost, measured per variant in this process with ONE torch thread (``--threads``): "CPU s/epoch" is the process's
CPU time of the whole ``train()`` call (reading the caches, all epochs, the per-epoch checkpoint) divided by the
epochs: on a shared, oversubscribed machine the wall clock mostly measures other tenants, one thread's CPU time is
what an idle core would take. "wall s/epoch" is the median of the trainer's own per-epoch wall time. "peak MiB" is
the peak resident memory the ``train()`` call adds (bench.common.track_peak: RSS sampled every 5 ms, glibc's mmap
threshold lowered so freed tensors leave the RSS), so it includes the training cache held in memory.

Results go to OUT/results.json (a variant already there is not run again: delete it to re-measure) and the
markdown table is printed. The run folders (OUT/<variant>/checkpoint) load with ``fusemix eval``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import machine_line, measure, mib, quiet_malloc, table, track_peak
from fusion.adapters import FuseMixAdapters
from fusion.cache import atomic_write_json, load_latents, write_latents
from fusion.evaluate import evaluate, load_pairs
from fusion.train import TrainConfig, train

logger = logging.getLogger("sparse_ablation")


@dataclass
class AblationConfig:
    """Where the caches are, which variants to run, and the shared training budget."""

    tokens_train: str  # token cache (clips, K, dim) of the training split
    tokens_test: str  # token cache of the held-out test split
    text_train: str  # caption cache of the training split
    text_test: str  # caption cache of the test split
    out: str  # run folders and results.json
    pooled_train: str | None = None  # optional pooled cache (clips, dim): adds the "mlp (pooled cache)" row
    pooled_test: str | None = None
    keeps: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])  # k values; K keeps every token
    sparse_mode: str = "topk"  # topk or slots
    epochs: int = 40  # the same for every variant
    batch_size: int = 512  # pairs per step before mixing
    seed: int = 0
    threads: int = 1  # torch threads (1: CPU time measures the work itself)


def mean_of_tokens(src: str, dst: Path) -> Path:
    """Write the mean over tokens of a token cache as a pooled cache (what a mean-pooling adapter sees)."""
    if (dst / "manifest.json").is_file():
        return dst
    lat = load_latents(Path(src))
    if lat.array.ndim != 3:
        raise ValueError(f"{src} is not a token cache (clips, K, dim): shape {lat.array.shape}")
    meta = {k: v for k, v in lat.meta.items() if k in ("encoder", "modality")}
    meta.update(pooling="mean of tokens", tokens=None)
    return write_latents(dst, np.asarray(lat.array, dtype=np.float32).mean(axis=1), lat.ids, lat.clip_ids, meta)


def variants(cfg: AblationConfig, out: Path) -> list[tuple[str, str, str, dict]]:
    """(name, train audio cache, test audio cache, extra TrainConfig fields) per variant."""
    rows = []
    if cfg.pooled_train and cfg.pooled_test:
        rows.append(("mlp (pooled cache)", cfg.pooled_train, cfg.pooled_test, {}))
    mean_train = str(mean_of_tokens(cfg.tokens_train, out / "mean_tokens_train"))
    mean_test = str(mean_of_tokens(cfg.tokens_test, out / "mean_tokens_test"))
    rows.append(("mlp (mean of K)", mean_train, mean_test, {}))
    num_tokens = load_latents(Path(cfg.tokens_train)).array.shape[1]
    for k in cfg.keeps:
        if not 1 <= k <= num_tokens:
            raise ValueError(f"--keeps: {k} is not in [1, K={num_tokens}]")
        name = f"sparse all K={k}" if k == num_tokens else f"sparse k={k}"
        extra = {"audio_adapter": "sparse", "keep": k, "sparse_mode": cfg.sparse_mode}
        rows.append((name, cfg.tokens_train, cfg.tokens_test, extra))
    return rows


def run_variant(cfg: AblationConfig, name: str, train_audio: str, test_audio: str, extra: dict, out: Path) -> dict:
    """Train one variant from scratch and measure it; returns its row of results."""
    run_dir = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
    tcfg = TrainConfig(
        audio_latents=train_audio,
        text_latents=cfg.text_train,
        out=str(run_dir),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lock_text=True,
        seed=cfg.seed,
        no_progress=True,
        **extra,
    )
    if run_dir.exists():  # an interrupted measurement: start it again, timings must cover the whole run
        import shutil

        shutil.rmtree(run_dir)
    with track_peak() as peak:
        wall, cpu, ckpt = measure(lambda: train(tcfg))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    model = FuseMixAdapters.from_pretrained(ckpt).eval()
    metrics = evaluate(model, load_pairs(test_audio, cfg.text_test))
    return {
        "variant": name,
        "t2a_R@1": metrics["text_to_audio"]["R@1"],
        "a2t_R@1": metrics["audio_to_text"]["R@1"],
        "t2a_R@5": metrics["text_to_audio"]["R@5"],
        "cpu_s_per_epoch": cpu / cfg.epochs,
        "wall_s_per_epoch": statistics.median(r["seconds"] for r in state["history"]),
        "wall_s_total": wall,
        "peak_bytes": peak.bytes,
        "params": sum(p.numel() for p in model.towers["audio"].parameters()),
        "num_clips": metrics.get("num_clips"),
        "num_captions": metrics.get("num_captions"),
        "steps": state["step"],
        "final_loss": state["history"][-1]["loss"],
        "checkpoint": str(ckpt),
    }


def render(results: list[dict]) -> str:
    rows = [
        [
            r["variant"],
            f"{100 * r['t2a_R@1']:.1f}",
            f"{100 * r['a2t_R@1']:.1f}",
            f"{100 * r['t2a_R@5']:.1f}",
            f"{r['cpu_s_per_epoch']:.2f}",
            f"{r['wall_s_per_epoch']:.2f}",
            mib(r["peak_bytes"]),
            f"{r['params'] / 1e6:.2f}",
        ]
        for r in results
    ]
    headers = ["variant", "t2a R@1", "a2t R@1", "t2a R@5", "CPU s/epoch", "wall s/epoch", "peak MiB", "audio M params"]
    return table(headers, rows)


def run(cfg: AblationConfig) -> list[dict]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    quiet_malloc()
    results_path = out / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {"results": []}
    done = {r["variant"]: r for r in saved["results"]}
    results = []
    for name, train_audio, test_audio, extra in variants(cfg, out):
        if name in done:
            results.append(done[name])
            continue
        logger.info("training %s", name)
        row = run_variant(cfg, name, train_audio, test_audio, extra, out)
        logger.info("%s: t2a R@1 %.3f, a2t R@1 %.3f", name, row["t2a_R@1"], row["a2t_R@1"])
        results.append(row)
        done[name] = row
        atomic_write_json(
            results_path, {"config": vars(cfg), "machine": machine_line(), "results": list(done.values())}
        )
    return results


def parse_config(argv: list[str] | None = None) -> AblationConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("tokens-train", "tokens-test", "text-train", "text-test", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--pooled-train", default=None, help="pooled audio cache of the training split (optional row)")
    p.add_argument("--pooled-test", default=None)
    p.add_argument("--keeps", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="k values (K = all tokens)")
    p.add_argument("--sparse-mode", choices=("topk", "slots"), default="topk")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    return AblationConfig(**{k.replace("-", "_"): v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_config(argv)
    results = run(cfg)
    print(machine_line())
    print(f"{cfg.epochs} epochs, batch {cfg.batch_size}, seed {cfg.seed}, --lock-text, {cfg.threads} torch thread(s)")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
