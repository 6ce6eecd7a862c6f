"""Judge images generated for held-out splits of the demo world: the README's quality table in one command.

    .venv/bin/python scripts/eval_demo_generation.py --limit 200 --json runs/generation_eval.json
    .venv/bin/python scripts/eval_demo_generation.py --split test=runs/v2/world flite=runs/v2/world_flite \\
        neural=runs/v2/world_neural --baseline runs/previous-default --limit 200
    .venv/bin/python scripts/eval_demo_generation.py --preset checkpoints/demo --limit 64 --conditions text audio

Each ``--split NAME=FOLDER`` reads ``FOLDER/test.jsonl`` (a `fusemix demo build`, `build-other` or `build-neural`
folder); a bare folder is read as ``test``. Conditions, same seeds (from --seed and each clip's name) and settings
for all, through the pipeline's own steps (``embed_text``/``embed_audio`` -> ``condition`` -> ``denoise``), scored by
``demoworld.judge.score``:
  text              the caption through the image model's own text encoder (upper bound)
  text-translated   the caption -> MiniLM -> shared space -> translator (what the translator loses)
  audio             the spoken caption through the full audio path in translate mode
  audio-retrieve    the spoken caption -> nearest caption in the bank -> text prompt (the demo default)
  asr-cascade       Whisper tiny.en transcript (beam 5) -> MiniLM -> nearest bank caption -> text prompt
  baseline-retrieve audio-retrieve with the --baseline preset (e.g. the previous shipped default)
  baseline-translate audio with the --baseline preset (its translator; both presets share the image model)
Each row also gives the mean stray-pixel share (``judge.stray_share``: pixels that are no blend of the two colours
the judge read), which the attributes do not score. Besides the images, it prints text->audio R@1 among each
split's evaluated clips in the preset's shared space.
The text conditions do not depend on the voice: a split whose clips have the first split's ids and captions (a
`build-other`/`build-neural` re-speaking of it) skips them, as they would draw the same images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from demoworld import judge
from fusion.asr import AsrSettings, cascade_nearest, transcribe
from fusion.cache import atomic_write_json
from generator.audio_to_image import AudioToImagePipeline, Conditioning
from generator.records import clip_seed

CONDITIONS = (
    "text", "text-translated", "audio", "audio-retrieve", "asr-cascade", "baseline-retrieve", "baseline-translate",
)  # fmt: skip
DEFAULT_CONDITIONS = ("text", "text-translated", "audio", "audio-retrieve", "asr-cascade")


class Split:
    """One held-out split: its clips, and each clip's points in S and transcript, computed once."""

    def __init__(self, name: str, folder: Path, limit: int, transcripts: Path | None) -> None:
        self.name, self.root = name, folder
        lines = (folder / "test.jsonl").read_text().splitlines()
        self.items = [json.loads(x) for x in lines if x.strip()][:limit]
        self.transcripts_cache = transcripts
        self._points: dict[int, torch.Tensor] = {}
        self._transcripts: list[str] | None = None

    def paths(self) -> list[Path]:
        return [self.root / it["audio"] for it in self.items]

    def points(self, pipe: AudioToImagePipeline, batch: int) -> torch.Tensor:
        if id(pipe) not in self._points:
            chunks = [
                pipe.embed_audio(pipe.load(self.paths()[i : i + batch])) for i in range(0, len(self.items), batch)
            ]
            self._points[id(pipe)] = torch.cat(chunks)
        return self._points[id(pipe)]

    def transcripts(self) -> list[str]:
        if self._transcripts is None:
            self._transcripts = transcribe(self.paths(), AsrSettings(), cache=self.transcripts_cache, progress=True)
        return self._transcripts


def conditioning(pipes: dict, condition: str, split: Split, rows: slice, batch: int) -> Conditioning:
    """The image model's conditioning of ``split.items[rows]`` for one condition, through the pipeline's steps."""
    pipe = pipes["baseline" if condition.startswith("baseline-") else "preset"]
    captions = [it["caption"] for it in split.items[rows]]
    if condition == "text":
        return Conditioning.from_prompts(captions)
    if condition == "text-translated":
        return pipe.condition(pipe.embed_text(captions), "translate")
    if condition == "asr-cascade":
        picks = cascade_nearest(split.transcripts()[rows], pipe.bank_captions)
        return Conditioning.from_prompts([pipe.bank_captions[int(i)] for i in picks])
    points = split.points(pipe, batch)[rows]
    return pipe.condition(points, "translate" if condition in ("audio", "baseline-translate") else "retrieve")


def judge_condition(pipes: dict, condition: str, split: Split, a: argparse.Namespace) -> dict:
    """Generate one image per clip (its seed from the job seed and the clip's name) and score them."""
    t0, images = time.time(), []
    for i in tqdm(range(0, len(split.items), a.batch), desc=f"{split.name} {condition}"):
        rows = slice(i, i + a.batch)
        seeds = [clip_seed(a.seed, Path(it["audio"]).stem) for it in split.items[rows]]
        with torch.no_grad():
            cond = conditioning(pipes, condition, split, rows, a.batch)
            out = pipes["preset"].denoise(cond, num_inference_steps=a.steps, guidance_scale=a.guidance, seed=seeds)
        images += [per_clip[0] for per_clip in out]
    scored = judge.score(images, [it["scene"] for it in split.items])
    result = {k: round(float(v), 3) for k, v in scored["accuracy"].items()}
    result["stray"] = round(sum(scored["stray"]) / len(images), 4)  # blotches the attributes do not score
    result["seconds"] = round(time.time() - t0, 1)
    # what the judge saw in each picture, for the misses: the JSON report's "clips"
    result["clips"] = [{"id": it["id"], "seen": seen, "correct": ok}
                       for it, seen, ok in zip(split.items, scored["judged"], scored["correct"], strict=True)]  # fmt: skip
    return result


def text_to_audio_r1(pipe: AudioToImagePipeline, split: Split, batch: int) -> float:
    """Share of captions whose own clip is the nearest of the split's evaluated clips in S."""
    captions = [it["caption"] for it in split.items]
    text = torch.cat([pipe.embed_text(captions[i : i + batch]) for i in range(0, len(captions), batch)])
    nearest = (text @ split.points(pipe, batch).T).argmax(dim=1)
    return round(float((nearest == torch.arange(len(captions))).float().mean()), 3)


def parse_splits(values: list[str]) -> list[tuple[str, Path]]:
    out = []
    for value in values:
        name, _, folder = value.rpartition("=")
        out.append((name or "test", Path(folder)))
    return out


def print_table(results: dict) -> None:
    columns = (*judge.ATTRIBUTES, "all")
    print(f"{'split':<8}{'condition':<18}" + "".join(f"{k:>12}" for k in columns) + f"{'stray':>8}{'seconds':>10}")
    for split, conds in results.items():
        for cond, r in conds.items():
            if cond == "text_to_audio_R@1":
                print(f"{split:<8}{'text->audio R@1':<18}{r:>12.3f}")
                continue
            row = "".join(f"{r[k]:>12.3f}" for k in columns) + f"{r['stray']:>8.4f}{r['seconds']:>10.1f}"
            print(f"{split:<8}{cond:<18}" + row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", nargs="+", default=["test=data/demo"], help="NAME=FOLDER (FOLDER/test.jsonl) ...")
    p.add_argument("--preset", default="demo")
    p.add_argument(
        "--baseline",
        default=None,
        help="a second preset: adds the baseline-retrieve condition (and allows baseline-translate)",
    )
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the preset's)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=None)
    p.add_argument("--transcripts", default="runs/transcripts.json", help="cache of the cascade's transcripts")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    pipes = {"preset": AudioToImagePipeline.from_preset(a.preset)}
    if a.baseline:
        pipes["baseline"] = AudioToImagePipeline.from_preset(a.baseline)
    conditions = a.conditions or [*DEFAULT_CONDITIONS, *(["baseline-retrieve"] if a.baseline else [])]
    if any(c.startswith("baseline-") for c in conditions) and not a.baseline:
        p.error("baseline-retrieve and baseline-translate need --baseline PRESET")
    a.steps = pipes["preset"].preset.steps if a.steps is None else a.steps
    a.guidance = pipes["preset"].preset.guidance if a.guidance is None else a.guidance
    results: dict[str, dict] = {}
    first: list | None = None
    for name, folder in parse_splits(a.split):
        split = Split(name, folder, a.limit, Path(a.transcripts) if a.transcripts else None)
        same_text = [(it["id"], it["caption"]) for it in split.items]
        first = same_text if first is None else first
        todo = [c for c in conditions if not (c.startswith("text") and same_text == first and results)]
        results[name] = {cond: judge_condition(pipes, cond, split, a) for cond in todo}
        results[name]["text_to_audio_R@1"] = text_to_audio_r1(pipes["preset"], split, a.batch)
        print_table({name: results[name]})
    print_table(results)
    if a.json:
        atomic_write_json(Path(a.json), {"splits": {n: str(f) for n, f in parse_splits(a.split)}, "count": a.limit,
                                         "steps": a.steps, "guidance": a.guidance, "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
