"""Scale: the trainer's memory depends on the latent dims and the batch, never on the encoder that made the latents.

Training reads only cached latents, so a 1.5 B-parameter audio encoder and whisper-tiny cost the trainer the same
if their latents have the same width. This bench measures the peak memory (RSS above the start, see
bench/common.py) of one FuseMix training step (mixing, adapters forward + backward, InfoNCE, AdamW) for a grid of
latent widths and batch sizes, each in a fresh process so that no measurement inherits another's pages, and prints
it next to the model's parameter + optimizer bytes and the activation estimate.

    .venv/bin/python bench/memory.py                      # dims 384, 768, 1536 x batch 1024, 4096, 10240
    .venv/bin/python bench/memory.py --dims 384,1024 --batches 2048
    .venv/bin/python bench/memory.py --quick
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="384,768,1536", help="latent widths (audio = text), comma-separated")
    p.add_argument("--batches", default="1024,4096,10240", help="pairs per step before mixing")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="dims 64,128 x batch 256")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "dim,batch,blocks": run in this process
    a = p.parse_args(argv)
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
