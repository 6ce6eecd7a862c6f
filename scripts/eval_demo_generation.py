"""Judge images generated for the demo world's test split (unseen voices and templates).

    .venv/bin/python scripts/eval_demo_generation.py --limit 500 --json runs/generation_eval.json
    .venv/bin/python scripts/eval_demo_generation.py --preset checkpoints/demo --limit 64 --conditions text audio

Conditions, same seeds (from --seed and each clip's name) and settings for all, through the pipeline's own steps
(``embed_text``/``embed_audio`` -> ``condition`` -> ``denoise``), scored by ``demoworld.judge.score``:
  text            the caption through the image model's own text encoder (upper bound)
  text-translated the caption -> MiniLM -> shared space -> translator (what the translator loses)
  audio           the spoken caption through the full audio path in translate mode
  audio-retrieve  the spoken caption -> nearest caption in the bank -> text prompt (the demo default)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from demoworld import judge
from fusion.cache import atomic_write_json
from generator.audio_to_image import AudioToImagePipeline, Conditioning
from generator.records import clip_seed

CONDITIONS = ("text", "text-translated", "audio", "audio-retrieve")


def conditioning(pipe: AudioToImagePipeline, condition: str, items: list[dict], root: Path) -> Conditioning:
    """The image model's conditioning for one condition, through the pipeline's own steps."""
    captions = [it["caption"] for it in items]
    if condition == "text":
        return Conditioning.from_prompts(captions)
    if condition == "text-translated":
        return pipe.condition(pipe.embed_text(captions), "translate")
    points = pipe.embed_audio(pipe.load([root / it["audio"] for it in items]))
    return pipe.condition(points, "translate" if condition == "audio" else "retrieve")


def generate(
    pipe: AudioToImagePipeline, condition: str, items: list[dict], root: Path, steps: int, guidance: float, seed: int
) -> list:
    """One image per item; an item's seed depends on the job seed and its audio alone, the same in every condition."""
    seeds = [clip_seed(seed, Path(it["audio"]).stem) for it in items]
    images = pipe.denoise(
        conditioning(pipe, condition, items, root), num_inference_steps=steps, guidance_scale=guidance, seed=seeds
    )
    return [per_clip[0] for per_clip in images]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--split", default="test")
    p.add_argument("--preset", default="demo")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the preset's)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    root = Path(a.data)
    items = [json.loads(x) for x in (root / f"{a.split}.jsonl").read_text().splitlines() if x.strip()][: a.limit]
    pipe = AudioToImagePipeline.from_preset(a.preset)
    a.steps = pipe.preset.steps if a.steps is None else a.steps
    a.guidance = pipe.preset.guidance if a.guidance is None else a.guidance
    results = {}
    for cond in a.conditions:
        t0 = time.time()
        images = []
        for i in tqdm(range(0, len(items), a.batch), desc=cond):
            with torch.no_grad():
                images += generate(pipe, cond, items[i : i + a.batch], root, a.steps, a.guidance, a.seed)
        accuracy = judge.score(images, [it["scene"] for it in items])["accuracy"]
        results[cond] = {k: round(float(v), 3) for k, v in accuracy.items()}
        results[cond]["seconds"] = round(time.time() - t0, 1)
    columns = (*judge.ATTRIBUTES, "all")
    print(f"{'condition':<16}" + "".join(f"{k:>12}" for k in columns) + f"{'seconds':>10}")
    for cond, r in results.items():
        print(f"{cond:<16}" + "".join(f"{r[k]:>12.3f}" for k in columns) + f"{r['seconds']:>10.1f}")
    if a.json:
        atomic_write_json(
            Path(a.json),
            {"split": a.split, "count": len(items), "steps": a.steps, "guidance": a.guidance, "results": results},
        )


if __name__ == "__main__":
    main()
