"""Training throughput: our trainer vs the per-item Dataset + DataLoader loop of the official FuseMix code.

Both train the same FuseMix adapters (4 residual blocks per tower, expansion 4, dropout 0.6), on the same synthetic
latents, with the same batch (10,240 pairs per step, mixed into 5,120 by FuseMix), AdamW and schedule:

- ``per-item``: a ``torch.utils.data.Dataset`` returning a dict of tensors per pair, a ``DataLoader`` with
  ``default_collate`` (shuffle, drop_last), λ ~ Beta(α, α) mixing of the two halves, the model in fp32 and a CLIP
  loss that computes both logits matrices, as the official code feeds its model.
- ``ours-fp32`` / ``ours-bf16``: ``fusion.train.train`` itself (its real code path, from latent caches on disk),
  without and with ``--bf16``.

Variants run interleaved (A, B, C, A, B, C, ...) so the load of a shared machine hits them alike; the table gives the
median over repeats and paired ratios to the per-item loop (median of each round's ratio), with every run's R@1 on
held-out clips. A quality check then trains the per-item loop and ours for the same
epochs on a train split of the same synthetic world and reports text->audio / audio->text R@1 on a held-out split.

    .venv/bin/python bench/train.py                      # 50k pairs 384/384, then 10,240 pairs at 1536/1024
    .venv/bin/python bench/train.py --dims 384x384 --pairs 20000 --repeats 3
    .venv/bin/python bench/train.py --quick              # seconds; what CI runs

Throughput is measured in CPU time of the process with ONE torch thread (``--threads 1``, the default): on a shared,
oversubscribed machine the wall clock mostly measures the other tenants, while one thread's CPU time is what an idle
core would take. The CPU seconds cover the whole call (reading the caches, the epoch, ours also writing its
checkpoint); "loop wall s" is the step loop alone in wall time (ours: the epoch's ``seconds`` in trainer_state.json).
On an idle machine pass ``--threads N`` and read the wall columns. FLOPs counted: the adapters'
matmuls (forward + backward = 3x forward) and ONE logits matmul per step, for every variant (the useful work);
"% peak" divides by the large-matmul peak (per CPU-second) of the variant's dtype measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from bench.common import load_average, machine_line, matmul_peak, measure, mib, quiet_malloc, table, timed, track_peak
from fusion.adapters import FuseMixAdapters
from fusion.cache import write_latents
from fusion.evaluate import EvalPairs, evaluate
from fusion.pairs import Pairing

VARIANTS = ("per-item", "ours-fp32", "ours-bf16")


@dataclass
class BenchConfig:
    """Sizes of one benchmark run; argparse fills it."""

    dims: list[tuple[int, int]]  # (audio_dim, text_dim) settings timed one after the other
    pairs: list[int]  # clips (one caption each) per setting
    batch: int = 10240  # pairs per step before mixing
    blocks: int = 4  # residual blocks per tower
    expansion: int = 4
    dropout: float = 0.6
    repeats: int = 3  # interleaved rounds of every variant (the table gives medians)
    variants: tuple[str, ...] = VARIANTS
    workers: int = 0  # DataLoader workers of the per-item loop
    epochs: int = 2  # epochs of every timed run
    test_clips: int = 1000  # held-out clips scoring every timed run (R@1)
    quality_pairs: int = 0  # training clips of the separate, longer quality check (0: skip it)
    quality_test: int = 1000  # held-out clips of the quality check
    quality_batch: int = 2048
    quality_epochs: int = 4
    quality_dims: tuple[int, int] = (384, 384)
    matmul_size: int = 2048
    seed: int = 0


# ---------------------------------------------------------------- synthetic latents


def synthetic_world(n: int, dims: tuple[int, int], seed: int, code: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Paired latents that share a hidden code through different non-linear maps (fixed maps, ``seed`` draws codes).

    Rows are L2-normalised like encoder latents; retrieval between them is learnable but not linear.
    """
    maps = np.random.default_rng(4321)
    a1, a2 = maps.standard_normal((code, 256)) / math.sqrt(code), maps.standard_normal((256, dims[0])) / 16
    t1, t2 = maps.standard_normal((code, 256)) / math.sqrt(code), maps.standard_normal((256, dims[1])) / 16
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, code)).astype(np.float32)
    audio = np.maximum(z @ a1, 0) @ a2 + 0.3 * rng.standard_normal((n, dims[0]))
    text = np.tanh(z @ t1) @ t2 + 0.3 * rng.standard_normal((n, dims[1]))
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return audio.astype(np.float32), text.astype(np.float32)


def write_caches(root: Path, audio: np.ndarray, text: np.ndarray) -> tuple[Path, Path]:
    """Write a clip cache and a caption cache (one caption per clip) the way ``fusemix extract`` does."""
    ids = [f"clip-{i}" for i in range(len(audio))]
    write_latents(root / "audio", audio, ids, ids, {"modality": "audio", "encoder": "synthetic"})
    write_latents(
        root / "text", text, [f"{c}#0" for c in ids], ids, {"modality": "text", "encoder": "synthetic"}, texts=ids
    )
    return root / "audio", root / "text"


# ---------------------------------------------------------------- the per-item loop (official feeding)


class PairDataset(Dataset):
    """One pair per item, as a dict of tensors: the official FuseMix feeding."""

    def __init__(self, audio: torch.Tensor, text: torch.Tensor) -> None:
        self.audio, self.text = audio, text

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"audio": self.audio[i], "text": self.text[i]}


def clip_loss_two_matmuls(fa: torch.Tensor, ft: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss as usually written: both logits matrices computed."""
    labels = torch.arange(len(fa))
    logits_a = scale * fa @ ft.T
    logits_t = scale * ft @ fa.T
    return 0.5 * (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_t, labels))


def per_item_train(
    audio: torch.Tensor, text: torch.Tensor, cfg: BenchConfig, epochs: int, batch: int, warmup: int
) -> tuple[FuseMixAdapters, float]:
    """Train with the per-item loop; returns the model and the step-loop seconds of all epochs."""
    from fusion.train import _param_groups, lr_factor

    torch.manual_seed(cfg.seed)
    model = FuseMixAdapters(
        audio.shape[1], text.shape[1], num_blocks=cfg.blocks, expansion=cfg.expansion, dropout=cfg.dropout
    )
    loader = DataLoader(
        PairDataset(audio, text),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        collate_fn=default_collate,
        num_workers=cfg.workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    total = len(loader) * epochs
    optimizer = torch.optim.AdamW(_param_groups(model, 0.1), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, 1e-3, 1e-6))
    rng = np.random.default_rng(cfg.seed)
    model.train()

    def loop() -> None:
        for _ in range(epochs):
            for item in loader:
                a, t = item["audio"], item["text"]
                lam = float(rng.beta(1.0, 1.0))
                half = len(a) // 2
                a = lam * a[:half] + (1 - lam) * a[half:]
                t = lam * t[:half] + (1 - lam) * t[half:]
                fa, ft, scale = model(a, t)
                loss = clip_loss_two_matmuls(fa, ft, scale)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()

    seconds, _ = timed(loop)
    return model, seconds


# ---------------------------------------------------------------- ours: fusion.train.train


def ours_train(
    audio_dir: Path, text_dir: Path, out: Path, cfg: BenchConfig, bf16: bool, epochs: int, batch: int, warmup: int
) -> tuple[Path, float]:
    """Run ``fusion.train.train`` itself; returns the checkpoint folder and the step-loop seconds of all epochs."""
    from accelerate.state import AcceleratorState

    from fusion.train import STATE_FILE, TrainConfig, train

    AcceleratorState._reset_state(reset_partial_state=True)  # a new mixed-precision setting in this process
    tc = TrainConfig(
        audio_latents=str(audio_dir),
        text_latents=str(text_dir),
        out=str(out),
        epochs=epochs,
        batch_size=batch,
        warmup_steps=warmup,
        dropout=cfg.dropout,
        num_blocks=cfg.blocks,
        expansion=cfg.expansion,
        bf16=bf16,
        seed=cfg.seed,
        no_progress=True,
    )
    ckpt = train(tc)
    history = json.loads((ckpt / STATE_FILE).read_text())["history"]
    return ckpt, sum(r["seconds"] for r in history)


# ---------------------------------------------------------------- FLOPs


def step_flops(dims: tuple[int, int], cfg: BenchConfig, batch: int, shared: int = 512) -> float:
    """Useful FLOPs of one training step: adapters' matmuls x3 (fwd + bwd) and one logits matmul x3."""
    mixed = batch // 2
    per_row = 0
    for d in dims:
        per_row += cfg.blocks * 2 * (2 * d * d * cfg.expansion) + 2 * d * shared
    return 3 * (mixed * per_row + 2 * mixed * mixed * shared)


# ---------------------------------------------------------------- runs


def held_out(audio: np.ndarray, text: np.ndarray) -> EvalPairs:
    """Clips never trained on, one caption each, for the R@1 of every timed run."""
    m = len(audio)
    return EvalPairs(
        audio=torch.from_numpy(audio),
        text=torch.from_numpy(text),
        caption_clip=torch.arange(m),
        pairing=Pairing(np.arange(m), np.arange(m), np.arange(m), np.arange(m), np.ones(m, dtype=np.int64)),
    )


def run_variant(v: str, r: int, dims, pairs, cfg: BenchConfig, root: Path, batch: int, test: EvalPairs) -> dict:
    """One timed run of variant ``v`` (the whole call: reading the data, all epochs; ours writes its checkpoint)."""
    audio_dir, text_dir = root / "audio", root / "text"
    with track_peak() as mem:
        if v == "per-item":

            def run():
                data = torch.load(root / "pairs.pt", weights_only=True)  # the official feeding: one file, in RAM
                return per_item_train(data["audio"], data["text"], cfg, cfg.epochs, batch, warmup=100)

            wall, cpu, (model, secs) = measure(run)
        else:
            out = root / f"run-{v}-{r}"
            wall, cpu, (ckpt, secs) = measure(
                lambda: ours_train(audio_dir, text_dir, out, cfg, v == "ours-bf16", cfg.epochs, batch, warmup=100)
            )
            model = FuseMixAdapters.from_pretrained(ckpt)
    r1 = evaluate(model, test)["text_to_audio"]["R@1"]
    return {"wall": wall, "cpu": cpu, "loop": secs, "peak": mem.bytes, "r1": r1}


def time_setting(dims: tuple[int, int], pairs: int, cfg: BenchConfig, peak, root: Path) -> list[list[object]]:
    """Interleaved runs of every variant at one (dims, pairs) setting (A, B, A, B, ...); table rows of medians."""
    audio_np, text_np = synthetic_world(pairs + cfg.test_clips, dims, cfg.seed)
    root = root / f"{dims[0]}x{dims[1]}-{pairs}"
    write_caches(root, audio_np[:pairs], text_np[:pairs])
    torch.save(
        {"audio": torch.from_numpy(audio_np[:pairs]), "text": torch.from_numpy(text_np[:pairs])}, root / "pairs.pt"
    )
    test = held_out(audio_np[pairs:], text_np[pairs:])
    batch = min(cfg.batch, pairs)
    steps = pairs // batch * cfg.epochs
    runs: dict[str, list[dict]] = {v: [] for v in cfg.variants}
    for r in range(cfg.repeats):
        for v in cfg.variants:
            m = run_variant(v, r, dims, pairs, cfg, root, batch, test)
            runs[v].append(m)
            print(
                f"  {dims[0]}/{dims[1]} round {r + 1} {v}: {m['wall']:.2f} s wall, {m['cpu']:.2f} CPU s, "
                f"t->a R@1 {100 * m['r1']:.1f} % (load avg {load_average()})",
                flush=True,
            )
    flops = step_flops(dims, cfg, batch) * steps
    base = runs.get("per-item")
    rows = []
    for v in cfg.variants:
        med = {k: statistics.median(m[k] for m in runs[v]) for k in ("wall", "cpu", "loop", "r1")}
        gflops = flops / med["cpu"] / 1e9  # per CPU-second: with one thread, what one idle core sustains
        dtype_peak = peak.bf16 if v.endswith("bf16") else peak.fp32

        def paired(key: str, mine: list[dict] = runs[v]) -> str:  # median over rounds of each round's ratio
            if not base:
                return "-"
            return f"{statistics.median(b[key] / m[key] for b, m in zip(base, mine, strict=True)):.2f}x"

        rows.append(
            [
                f"{dims[0]}/{dims[1]}",
                v,
                f"{med['wall']:.1f}",
                f"{med['cpu']:.1f}",
                f"{med['loop']:.1f}",
                mib(max(m["peak"] for m in runs[v])),
                f"{gflops:.0f}",
                f"{100 * gflops / dtype_peak:.0f} %",
                f"{100 * med['r1']:.1f}",
                paired("cpu"),
                paired("wall"),
            ]
        )
    return rows


def quality(cfg: BenchConfig, root: Path) -> list[list[object]]:
    """R@1 on held-out clips after the same epochs of the per-item loop and of ours."""
    n, m = cfg.quality_pairs, cfg.quality_test
    audio_np, text_np = synthetic_world(n + m, cfg.quality_dims, cfg.seed + 1)
    audio_dir, text_dir = write_caches(root / "quality", audio_np[:n], text_np[:n])
    test = EvalPairs(
        audio=torch.from_numpy(audio_np[n:]),
        text=torch.from_numpy(text_np[n:]),
        caption_clip=torch.arange(m),
        pairing=Pairing(np.arange(m), np.arange(m), np.arange(m), np.arange(m), np.ones(m, dtype=np.int64)),
    )
    batch = min(cfg.quality_batch, n)
    warmup = max(1, (n // batch) * cfg.quality_epochs // 10)
    rows = []
    for v in cfg.variants:
        if v == "per-item":
            model, secs = per_item_train(
                torch.from_numpy(audio_np[:n]), torch.from_numpy(text_np[:n]), cfg, cfg.quality_epochs, batch, warmup
            )
        else:
            ckpt, secs = ours_train(
                audio_dir, text_dir, root / f"quality-{v}", cfg, v == "ours-bf16", cfg.quality_epochs, batch, warmup
            )
            model = FuseMixAdapters.from_pretrained(ckpt)
        metrics = evaluate(model, test)
        rows.append(
            [
                v,
                cfg.quality_epochs,
                f"{100 * metrics['text_to_audio']['R@1']:.1f}",
                f"{100 * metrics['audio_to_text']['R@1']:.1f}",
                f"{100 * metrics['text_to_audio']['R@10']:.1f}",
                f"{secs:.1f}",
            ]
        )
        print(f"  quality {v}: done (load avg {load_average()})", flush=True)
    return rows


def parse_dims(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in part.lower().split("x")) for part in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise ValueError(f"--dims must look like 384x384,1536x1024, got {text!r}") from None


def build_config(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="384x384", help="audio x text latent dims, comma-separated settings")
    p.add_argument("--pairs", default="51200", help="pairs per setting (one number for all, or one each)")
    p.add_argument("--batch", type=int, default=10240, help="pairs per step before mixing")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.6)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every variant")
    p.add_argument("--epochs", type=int, default=2, help="epochs of every timed run")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS}")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the per-item loop")
    p.add_argument("--quality-pairs", type=int, default=0, help="training clips of the R@1 check; 0 skips it")
    p.add_argument("--quality-epochs", type=int, default=4)
    p.add_argument("--quality-batch", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = the work, see docstring)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmul measuring the peak")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run, seconds)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dims = parse_dims(a.dims)
    pairs = [int(x) for x in a.pairs.split(",")]
    if len(pairs) == 1:
        pairs = pairs * len(dims)
    if len(pairs) != len(dims):
        raise ValueError(f"--pairs gives {len(pairs)} sizes for {len(dims)} --dims settings")
    variants = tuple(v.strip() for v in a.variants.split(","))
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"--variants: unknown {bad}; choose from {VARIANTS}")
    cfg = BenchConfig(
        dims=dims,
        pairs=pairs,
        batch=a.batch,
        blocks=a.blocks,
        expansion=a.expansion,
        dropout=a.dropout,
        repeats=a.repeats,
        epochs=a.epochs,
        variants=variants,
        workers=a.workers,
        quality_pairs=a.quality_pairs,
        quality_epochs=a.quality_epochs,
        quality_batch=a.quality_batch,
        matmul_size=a.matmul_size,
    )
    if a.quick:
        cfg.dims, cfg.pairs, cfg.batch, cfg.blocks, cfg.repeats = [(64, 48)], [1024], 256, 1, 1
        cfg.epochs, cfg.test_clips = 1, 128
        cfg.quality_pairs, cfg.quality_test, cfg.quality_batch, cfg.quality_epochs = 512, 128, 128, 1
        cfg.quality_dims, cfg.matmul_size = (64, 48), 256
    for name in ("batch", "repeats", "blocks", "expansion", "epochs"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = build_config(argv)
    logging.getLogger("fusion").setLevel(logging.WARNING)
    quiet_malloc()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        peak_before = matmul_peak(cfg.matmul_size, cpu_time=True)
        rows = []
        for dims, pairs in zip(cfg.dims, cfg.pairs, strict=True):
            rows += time_setting(dims, pairs, cfg, peak_before, root)
        peak_after = matmul_peak(cfg.matmul_size, cpu_time=True)
        print(
            f"\nmatmul peak {cfg.matmul_size}^2 per CPU-second: fp32 {peak_before.fp32:.0f} / {peak_after.fp32:.0f} GFLOP/s, "
            f"bf16 {peak_before.bf16:.0f} / {peak_after.bf16:.0f} GFLOP/s (before / after the timed runs); "
            f"% peak uses 'before'"
        )
        print(
            f"{cfg.epochs} epochs, batch {cfg.batch} pairs ({cfg.batch // 2} after mixing), {cfg.blocks} blocks per "
            f"tower, expansion {cfg.expansion}, dropout {cfg.dropout}; whole call (load + train); median of "
            f"{cfg.repeats} interleaved rounds, ratios paired within a round; R@1 on {cfg.test_clips} held-out clips\n"
        )
        headers = [
            "dims a/t",
            "variant",
            "wall s",
            "CPU s",
            "loop wall s",
            "peak MiB",
            "GFLOP/CPU-s",
            "% peak",
            "t->a R@1 %",
            "vs per-item (CPU)",
            "vs per-item (wall)",
        ]
        print(table(headers, rows))
        if cfg.quality_pairs > 0:
            qrows = quality(cfg, root)
            print(
                f"\nquality: {cfg.quality_pairs} synthetic training clips {cfg.quality_dims[0]}/{cfg.quality_dims[1]}, "
                f"batch {min(cfg.quality_batch, cfg.quality_pairs)}, {cfg.quality_test} held-out clips "
                f"(chance R@1 {100 / cfg.quality_test:.1f} %)\n"
            )
            print(table(["variant", "epochs", "t->a R@1 %", "a->t R@1 %", "t->a R@10 %", "train s"], qrows))
        print(f"\nload average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
