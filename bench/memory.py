"""Scale: the trainer's memory depends on the latent dims and the batch, never on the encoder that made the latents.

Training reads only cached latents, so a 1.5 B-parameter audio encoder and whisper-tiny cost the trainer the same
if their latents have the same width. This bench measures the peak memory (RSS above the start, see
bench/common.py) of one FuseMix training step (mixing, adapters forward + backward, InfoNCE, AdamW) for a grid of
latent widths and batch sizes, each in a fresh process so that no measurement inherits another's pages, and prints
it next to the model's parameter + optimizer bytes and the activation estimate.

    .venv/bin/python bench/memory.py                      # dims 384, 768, 1536 x batch 1024, 4096, 10240
    .venv/bin/python bench/memory.py --dims 384,1024 --batches 2048
    .venv/bin/python bench/memory.py --quick

``--caches`` measures instead a whole training run (``fusion.train.train``, one epoch) against the cache's size:
1x, 4x, 16x a fixed number of clips, for pooled latents (clips, dim) and token latents (clips, K, dim), each run in
a fresh process. ``mmap`` is the trainer's path (shards opened memory-mapped, each batch's rows read by file
offset, see ``fusion.cache.LatentRows``); ``in-RAM`` reads the shards into memory first
(``load_train_data(cfg, mmap=False)``), for contrast. Peak RSS is the process's highest resident set
(``ru_maxrss``), imports included. A verdict line per latent kind and path says whether peak RSS stays flat
(within 10 %) from the smallest to the largest cache.

    .venv/bin/python bench/memory.py --caches                 # 4,096 clips x 1, 4, 16
    .venv/bin/python bench/memory.py --caches --base-clips 2048 --scales 1,4,16
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load_average, machine_line, mib, table

REPO = Path(__file__).resolve().parents[1]


def one_step(dim: int, batch: int, blocks: int) -> dict:
    """Peak memory of one training step at latent width ``dim`` (audio = text) and ``batch`` pairs before mixing."""
    import torch

    from bench.common import quiet_malloc, rss_bytes, track_peak
    from fusion.adapters import FuseMixAdapters
    from fusion.loss import InfoNCELoss
    from fusion.mixup import fusemix_mix

    torch.set_num_threads(1)
    quiet_malloc()
    model = FuseMixAdapters(dim, dim, num_blocks=blocks, dropout=0.6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = InfoNCELoss()
    audio, text = torch.randn(batch, dim), torch.randn(batch, dim)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        a, t = fusemix_mix(audio, text, 1.0, gen)
        fa, ft, scale = model(a, t)
        loss = loss_fn(fa, ft, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # creates the AdamW moments: count them as steady state, not as the step's peak
    params = sum(p.numel() for p in model.parameters())
    before = rss_bytes()
    with track_peak() as mem:
        step()
    return {"dim": dim, "batch": batch, "params": params, "peak": mem.bytes, "rss": before}


SHARD_ROWS = 4096  # rows per shard of the synthetic caches (a 16x cache has many shards, as extraction leaves)


def write_sharded(folder: Path, row_shape: tuple[int, ...], ids: list[str], clip_ids: list[str], modality: str) -> Path:
    """A cache of several shards of random float32 rows, the layout ``fusemix extract`` writes; one shard in
    memory at a time, so a 16x cache costs this process no more than a 1x one."""
    import numpy as np

    from fusion.cache import MANIFEST, atomic_save_npy, atomic_write_json, shard_name

    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, lo in enumerate(range(0, len(ids), SHARD_ROWS)):
        rng = np.random.default_rng([len(ids), i, int(modality == "audio")])
        part = rng.standard_normal((min(SHARD_ROWS, len(ids) - lo), *row_shape), dtype=np.float32)
        atomic_save_npy(folder / shard_name(i), part)
        shards.append({"file": shard_name(i), "count": len(part)})
    manifest = {"modality": modality, "encoder": "synthetic", "dim": row_shape[-1], "dtype": "float32"}
    manifest.update(count=len(ids), ids=ids, clip_ids=clip_ids, shards=shards)
    manifest["tokens"] = row_shape[0] if len(row_shape) == 2 else None
    atomic_write_json(folder / MANIFEST, manifest)
    return folder


def make_cache_pair(root: Path, clips: int, tokens: int, dim: int) -> tuple[Path, Path]:
    """Synthetic audio (pooled or ``tokens`` per clip) and caption (pooled) caches of ``clips`` clips."""
    ids = [f"clip-{i}" for i in range(clips)]
    audio = write_sharded(root / "audio", (tokens, dim) if tokens else (dim,), ids, ids, "audio")
    text = write_sharded(root / "text", (dim,), [f"{c}#0" for c in ids], ids, "text")
    return audio, text


def one_run(audio: str, text: str, out: str, tokens: int, mode: str) -> dict:
    """Peak RSS of one ``fusion.train.train`` epoch on the given caches (this process, fresh)."""
    import resource

    import torch

    from bench.common import quiet_malloc, rss_bytes, track_peak
    from fusion import train as train_module

    torch.set_num_threads(1)
    quiet_malloc()
    if mode == "in-RAM":
        original = train_module.load_train_data
        train_module.load_train_data = lambda cfg: original(cfg, mmap=False)
    sparse = {"audio_adapter": "sparse", "keep": 2} if tokens else {}
    cfg = train_module.TrainConfig(
        audio_latents=audio, text_latents=text, out=out, epochs=1, batch_size=1024, num_blocks=1, expansion=1,
        shared_dim=64, warmup_steps=10, no_progress=True, **sparse,
    )  # fmt: skip
    start = rss_bytes()
    with track_peak() as mem:
        train_module.train(cfg)
    return {"start": start, "added": mem.bytes, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


FLAT = 0.10  # peak RSS may grow this much from the smallest to the largest cache and still count as flat


def flat_verdicts(peaks: dict[tuple[str, str], list[tuple[int, int]]]) -> list[str]:
    """One line per (latents, path): peak RSS growth from the smallest to the largest cache, flat or not."""
    lines = []
    for (kind, mode), runs in peaks.items():
        (small, low), (large, high) = min(runs), max(runs)
        growth = high / low - 1
        verdict = "flat" if abs(growth) <= FLAT else "NOT flat"
        lines.append(
            f"{kind} {mode}: {mib(low)} -> {mib(high)} MiB from {small}x to {large}x ({growth:+.1%}): "
            f"{verdict} (within {FLAT:.0%})"
        )
    return lines


def cache_table(base_clips: int, scales: list[int], dim: int, tokens: int, modes: list[str]) -> tuple[str, list]:
    """Peak RSS of a training run against cache size, pooled and token latents, each run in a fresh process; the
    table and the verdict lines."""
    import tempfile

    rows, peaks = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for kind, k in (("pooled", 0), ("tokens", tokens)):
            for scale in scales:
                clips = base_clips * scale
                root = Path(tmp) / f"{kind}-{scale}"
                audio, text = make_cache_pair(root, clips, k, dim)
                size = sum(f.stat().st_size for f in root.rglob("*.npy"))
                for mode in modes:
                    arg = f"{audio},{text},{root / mode},{k},{mode}"
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--one-run", arg]
                    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
                    if proc.returncode != 0:
                        raise RuntimeError(f"training probe {kind} x{scale} {mode} failed: {proc.stderr[-500:]}")
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.append([kind, f"{scale}x", clips, mib(size), mode, mib(r["maxrss"]), mib(r["added"])])
                    peaks.setdefault((kind, mode), []).append((scale, r["maxrss"]))
                    print(f"  {kind} x{scale} {mode}: peak RSS {mib(r['maxrss'])} MiB (load avg {load_average()})")
                shutil.rmtree(root)
    headers = ["latents", "cache", "clips", "cache MiB", "path", "peak RSS MiB", "added by train() MiB"]
    return table(headers, rows), flat_verdicts(peaks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="384,768,1536", help="latent widths (audio = text), comma-separated")
    p.add_argument("--batches", default="1024,4096,10240", help="pairs per step before mixing")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="dims 64,128 x batch 256")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "dim,batch,blocks": run in this process
    p.add_argument("--caches", action="store_true", help="peak RSS of a training run against cache size instead")
    p.add_argument("--base-clips", type=int, default=4096, help="--caches: clips of the 1x cache")
    p.add_argument("--scales", default="1,4,16", help="--caches: cache sizes as multiples of --base-clips")
    p.add_argument("--cache-dim", type=int, default=256, help="--caches: latent width")
    p.add_argument("--tokens", type=int, default=8, help="--caches: tokens per clip of the token latents")
    p.add_argument("--modes", default="mmap,in-RAM", help="--caches: mmap (the trainer's path) and/or in-RAM")
    p.add_argument("--one-run", default=None, help=argparse.SUPPRESS)  # "audio,text,out,tokens,mode"
    a = p.parse_args(argv)
    if a.one_run:
        audio, text, out, tokens, mode = a.one_run.split(",")
        print(json.dumps(one_run(audio, text, out, int(tokens), mode)))
        return 0
    if a.caches:
        scales = [int(x) for x in a.scales.split(",")]
        modes = [m.strip() for m in a.modes.split(",")]
        if min(scales) < 1 or a.base_clips < 2048 or set(modes) - {"mmap", "in-RAM"}:
            raise ValueError("--scales must be >= 1, --base-clips >= 2048, --modes from mmap,in-RAM")
        print(machine_line())
        rows, verdicts = cache_table(a.base_clips, scales, a.cache_dim, a.tokens, modes)
        print(f"\none epoch, batch 1024, 1 block, audio {a.cache_dim}-d pooled or {a.tokens} tokens x {a.cache_dim}\n")
        print(rows)
        print()
        print("\n".join(verdicts))
        print(f"\nload average at the end: {load_average()}")
        return 0
    if a.one:
        dim, batch, blocks = (int(x) for x in a.one.split(","))
        print(json.dumps(one_step(dim, batch, blocks)))
        return 0
    dims = [int(x) for x in a.dims.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    blocks = a.blocks
    if a.quick:
        dims, batches, blocks = [64, 128], [256], 1
    if min(dims + batches) < 2 or blocks < 0:
        raise ValueError("--dims and --batches must be >= 2, --blocks >= 0")
    print(machine_line())
    rows = []
    for dim in dims:
        for batch in batches:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", f"{dim},{batch},{blocks}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"memory probe dim={dim} batch={batch} failed: {proc.stderr.strip()[-500:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mixed = batch // 2
            # activations kept for backward, float32: per tower and block ~ (LN in, fc1 out, GELU out, mask) at 4x
            # width plus the residual, then the logits matrix and its softmax
            act = 4 * (2 * blocks * mixed * dim * (3 * 4 + 2) + 3 * mixed * mixed)
            rows.append(
                [
                    dim,
                    batch,
                    f"{r['params'] / 1e6:.1f} M",
                    mib(4 * 4 * r["params"]),
                    mib(act),
                    mib(r["peak"]),
                ]
            )
            print(f"  dim {dim} batch {batch}: peak {mib(r['peak'])} MiB (load avg {load_average()})", flush=True)
    print(f"\none step, {blocks} blocks per tower, fresh process each; weights+grads+AdamW = 16 bytes/param\n")
    print(
        table(
            ["latent dim", "batch", "params", "weights+grads+Adam MiB", "activations est. MiB", "step peak MiB"], rows
        )
    )
    print(f"\nload average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
