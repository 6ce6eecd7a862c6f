"""Retrieval eval speed: ``fusion.metrics.retrieval_metrics`` at 1k clips x 5k captions and 10k x 50k.

Features are random unit vectors in a 512-d shared space; each clip has 5 captions that are noisy copies of it, so
every metric lands between 0 and 1. The similarity matrix (captions x clips, float32) is computed first (its time
and size are reported apart: it is the input of the metrics), then the metrics are timed and their peak memory
above the matrix measured (RSS sampling, see bench/common.py). ``dense`` is the earlier whole-matrix
implementation (a transposed masked copy and (clips x captions) masks), kept here as the reference it was;
``chunked`` is ``fusion.metrics`` (chunks of 2^24 elements over caption rows / clip columns). Rounds interleave.
Times are CPU seconds of the process with one torch thread (the default ``--threads 1``; see bench/common.py).

    .venv/bin/python bench/retrieval.py                       # 1000x5000 and 10000x50000
    .venv/bin/python bench/retrieval.py --sizes 1000 --repeats 5
    .venv/bin/python bench/retrieval.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import load_average, machine_line, measure, mib, quiet_malloc, table, track_peak
from fusion.metrics import audio_to_text_ap10, audio_to_text_best_ranks, retrieval_metrics, text_to_audio_ranks


def dense_metrics(sim: torch.Tensor, caption_clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole-matrix version of the three rank computations (before chunking), for comparison."""
    own = sim.gather(1, caption_clip[:, None])
    t2a = (sim > own).sum(1) + 1
    num_clips = sim.shape[1]
    sim_t = sim.T
    mask = caption_clip[None, :] == torch.arange(num_clips)[:, None]
    best = sim_t.masked_fill(~mask, float("-inf")).amax(1, keepdim=True)
    a2t = (sim_t > best).sum(1) + 1
    top = sim_t.topk(min(10, sim.shape[0]), dim=1).indices
    return t2a, a2t, top


def make_sim(num_clips: int, per_clip: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(captions x clips similarity, caption -> clip index, seconds of the matmul)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.nn.functional.normalize(torch.randn(num_clips, dim, generator=g), dim=-1)
    caption_clip = torch.arange(num_clips).repeat_interleave(per_clip)
    text = audio[caption_clip] + 0.08 * torch.randn(len(caption_clip), dim, generator=g)
    text = torch.nn.functional.normalize(text, dim=-1)
    _, cpu, sim = measure(lambda: text @ audio.T)
    return sim, caption_clip, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000", help="clip counts (captions = 5x), comma-separated")
    p.add_argument("--captions-per-clip", type=int, default=5)
    p.add_argument("--dim", type=int, default=512, help="shared-space width")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--dense-max", type=int, default=10_000, help="largest clip count the dense reference runs at")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = the work)")
    p.add_argument("--quick", action="store_true", help="200 and 1000 clips, one round")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    repeats = a.repeats
    if a.quick:
        sizes, repeats = [200, 1000], 1
    if min(sizes) < 1 or repeats < 1 or a.captions_per_clip < 1:
        raise ValueError("--sizes, --repeats and --captions-per-clip must be >= 1")
    torch.set_num_threads(a.threads)
    quiet_malloc()
    print(machine_line())
    rows = []
    for n in sizes:
        sim, caption_clip, mm_s = make_sim(n, a.captions_per_clip, a.dim, seed=n)
        variants = {"chunked": retrieval_metrics}
        if n <= a.dense_max:
            variants["dense"] = dense_metrics
        cpus: dict[str, list[float]] = {v: [] for v in variants}
        walls: dict[str, list[float]] = {v: [] for v in variants}
        peaks: dict[str, int] = dict.fromkeys(variants, 0)
        for _ in range(repeats):
            for v, fn in variants.items():
                with track_peak() as mem:
                    wall, cpu, _ = measure(lambda fn=fn, sim=sim, cc=caption_clip: fn(sim, cc))
                walls[v].append(wall)
                cpus[v].append(cpu)
                peaks[v] = max(peaks[v], mem.bytes)
        # the parts of the chunked version, for where the time goes
        parts = [
            measure(lambda f=f, sim=sim, cc=caption_clip: f(sim, cc))[1]
            for f in (text_to_audio_ranks, audio_to_text_best_ranks, audio_to_text_ap10)
        ]
        chunked = statistics.mean(cpus["chunked"])
        for v in variants:
            c = statistics.mean(cpus[v])
            rows.append(
                [
                    f"{n} x {n * a.captions_per_clip}",
                    v,
                    mib(sim.numel() * 4),
                    f"{mm_s:.2f}",
                    f"{c:.2f}",
                    f"{statistics.mean(walls[v]):.2f}",
                    mib(peaks[v]),
                    f"{c / chunked:.2f}x",
                    " / ".join(f"{x:.2f}" for x in parts) if v == "chunked" else "",
                ]
            )
        print(f"  {n} clips done (load avg {load_average()})", flush=True)
        del sim
    print(f"\nmean of {repeats} interleaved rounds; peak = memory the metrics add above the similarity matrix\n")
    print(
        table(
            [
                "clips x captions",
                "variant",
                "sim MiB",
                "matmul CPU s",
                "metrics CPU s",
                "metrics wall s",
                "peak MiB",
                "CPU time vs chunked",
                "t2a / a2t rank / AP@10 CPU s",
            ],
            rows,
        )
    )
    print(f"\nload average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
