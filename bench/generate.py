"""Generation overhead: audio -> image vs the same prompt as text -> image, same image pipeline and settings.

    .venv/bin/python bench/generate.py                  # 8 example clips, 20 steps, 3 interleaved rounds
    .venv/bin/python bench/generate.py --quick          # CI-size smoke run

Stages are timed inside one process, variants interleaved (A, B, A, B, ...). The audio path adds: loading and
resampling the clip, the audio encoder's forward pass (reported apart), the adapter, the translator. The text path
adds the image model's own text encoder. The overhead figure is (audio path - audio encoder - diffusion) as a
share of the audio path's total.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load_average, machine_line, table
from generator.audio_to_image import AudioToImagePipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--clips", type=int, default=8, help="clips per call (example clips, repeated as needed)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--quick", action="store_true", help="2 clips, 2 steps, 1 round")
    a = p.parse_args(argv)
    if a.quick:
        a.clips, a.steps, a.rounds = 2, 2, 1
    if a.clips < 1 or a.steps < 1 or a.rounds < 1:
        raise SystemExit("--clips, --steps and --rounds must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    items = [json.loads(x) for x in (EXAMPLES / "prompts.jsonl").read_text().splitlines() if x.strip()]
    items = (items * (a.clips // len(items) + 1))[: a.clips]
    files = [str(EXAMPLES / it["audio"]) for it in items]
    captions = [it["caption"] for it in items]
    pipe = AudioToImagePipeline.from_preset(a.preset)
    pipe([files[0]], mode="translate", num_inference_steps=1, seed=0)  # warm-up: first-call allocations
    audio_runs, text_runs = [], []
    for r in range(a.rounds):
        out = pipe(files, mode="translate", num_inference_steps=a.steps, seed=r)  # the translator path
        audio_runs.append(out.timings)
        gens = [torch.Generator().manual_seed(r + i) for i in range(len(captions))]
        t0 = time.perf_counter()
        cond = pipe.image_pipe.encode_prompt(captions)
        t1 = time.perf_counter()
        pipe.image_pipe(
            prompt_embeds=cond, num_inference_steps=a.steps, guidance_scale=pipe.preset.guidance, generator=gens
        )
        t2 = time.perf_counter()
        text_runs.append({"encode": t1 - t0, "diffusion": t2 - t1, "total": t2 - t0})

    def mean(runs: list[dict], key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)

    audio_total, text_total = mean(audio_runs, "total"), mean(text_runs, "total")
    encoder = mean(audio_runs, "encode")  # audio encoder + adapter (+ text mix); the adapter is ~1 % of it
    glue = audio_total - mean(audio_runs, "diffusion") - encoder - mean(audio_runs, "load_audio")
    print(machine_line())
    print(f"load average: {load_average()}; {a.clips} clips per call, {a.steps} steps, {a.rounds} rounds")
    rows = [
        [
            "audio -> image",
            f"{mean(audio_runs, 'load_audio'):.3f}",
            f"{encoder:.3f}",
            f"{mean(audio_runs, 'translate'):.4f}",
            f"{mean(audio_runs, 'diffusion'):.3f}",
            f"{audio_total:.3f}",
        ],
        [
            "text -> image",
            "-",
            f"{mean(text_runs, 'encode'):.3f}",
            "-",
            f"{mean(text_runs, 'diffusion'):.3f}",
            f"{text_total:.3f}",
        ],
    ]
    print(table(["path", "load audio s", "encode s", "translate s", "diffusion s", "total s"], rows))
    print(f"audio path / text path: {audio_total / text_total:.2f}x")
    print(
        f"overhead beyond the audio encoder, loading and diffusion (translator + glue): {glue:.4f} s = "
        f"{100 * glue / audio_total:.2f} % of the audio path"
    )
    print(
        f"audio loading + encoder: {mean(audio_runs, 'load_audio') + encoder:.3f} s = "
        f"{100 * (mean(audio_runs, 'load_audio') + encoder) / audio_total:.1f} % of the audio path"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
