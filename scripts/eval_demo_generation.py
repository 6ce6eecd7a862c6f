"""Judge images generated for the demo world's test split (unseen voices and templates).

    .venv/bin/python scripts/eval_demo_generation.py --limit 500 --json runs/generation_eval.json
    .venv/bin/python scripts/eval_demo_generation.py --preset checkpoints/demo --limit 64 --conditions text audio

Conditions, same seeds and settings for all:
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

import numpy as np
import torch
from tqdm.auto import tqdm

from demoworld.judge import judge_image
from fusion.cache import atomic_write_json
from generator.audio_to_image import AudioToImagePipeline

ATTRS = ("background", "colour", "shape", "size")
CONDITIONS = ("text", "text-translated", "audio", "audio-retrieve")


def generate(
    pipe: AudioToImagePipeline, condition: str, items: list[dict], root: Path, steps: int, guidance: float, seed: int
):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(items))]
    captions = [it["caption"] for it in items]
    if condition == "text":
        return pipe.image_pipe(
            prompt=captions, num_inference_steps=steps, guidance_scale=guidance, generator=gens
        ).images
    if condition == "text-translated":
        points = pipe.embed_text(captions)
        return pipe.image_pipe(
            prompt_embeds=pipe.translator(points),
            negative_prompt_embeds=pipe.translator.negative_embeds(len(items)),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
        ).images
    mode = "translate" if condition == "audio" else "retrieve"
    out = pipe(
        [str(root / it["audio"]) for it in items],
        mode=mode,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
    )
    return [imgs[0] for imgs in out.images]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--split", default="test")
    p.add_argument("--preset", default="demo")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    root = Path(a.data)
    items = [json.loads(x) for x in (root / f"{a.split}.jsonl").read_text().splitlines() if x.strip()][: a.limit]
    pipe = AudioToImagePipeline.from_preset(a.preset)
    results = {}
    for cond in a.conditions:
        t0 = time.time()
        hits = {k: [] for k in ATTRS}
        for i in tqdm(range(0, len(items), a.batch), desc=cond):
            chunk = items[i : i + a.batch]
            with torch.no_grad():
                images = generate(pipe, cond, chunk, root, a.steps, a.guidance, a.seed + i)
            for image, it in zip(images, chunk, strict=True):
                seen = judge_image(image)
                for k in ATTRS:
                    hits[k].append(seen[k] == it["scene"][k])
        results[cond] = {k: round(float(np.mean(v)), 3) for k, v in hits.items()}
        results[cond]["seconds"] = round(time.time() - t0, 1)
    print(f"{'condition':<16}" + "".join(f"{k:>12}" for k in ATTRS) + f"{'seconds':>10}")
    for cond, r in results.items():
        print(f"{cond:<16}" + "".join(f"{r[k]:>12.3f}" for k in ATTRS) + f"{r['seconds']:>10.1f}")
    if a.json:
        atomic_write_json(
            Path(a.json),
            {"split": a.split, "count": len(items), "steps": a.steps, "guidance": a.guidance, "results": results},
        )


if __name__ == "__main__":
    main()
