"""Rebuild the embedded default in checkpoints/demo from nothing: the recipe behind the shipped weights.

    .venv/bin/python scripts/make_demo_default.py                  # all steps; each one resumes if re-run
    .venv/bin/python scripts/make_demo_default.py --base-image-model runs/image_model_base   # reuse a base run
    .venv/bin/python scripts/eval_demo_generation.py --limit 200   # the README's table

Steps: build the demo world, and a second one (another seed) whose training split triples the training clips ->
extract Whisper (10 s window, 32 tokens per clip) and MiniLM token states (16 per caption) for train/val/test and
for a caption bank (every scene x training template) -> FuseMix with token-level towers on both sides (sparse
pooling: S keeps which colour belongs to the shape and which to the background) -> translator on the bank captions
-> image model (3,000 steps on captions, then 1,200 more with half of each batch conditioned through the
translator) -> copy everything a user needs into checkpoints/demo, with the bank's points in S and `retrieve` as
the preset's default mode (it beats `translate` on every attribute here; README, "How good it is").
The earlier locked-text default is scripts/make_locked_text.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from demo_recipe import (  # same folder
    AUDIO_ENCODER,
    TEXT_ENCODER,
    run,
    train_image_model,
    write_bank_manifest,
    write_preset,
)

from fusion.cache import concat_latents

AUDIO_TOKENS = "32"
AUDIO_KEEP = "16"  # sparse pooling keeps 16 of the 32 tokens (BENCHMARKS.md: k=16 beats all 32 at half the cost)
TEXT_TOKENS = "16"
EXTRA_WORLD = {"size": "4600", "seed": "1"}  # 3000 scenes -> 6000 more training clips (its val/test go unused)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="checkpoints/demo")
    p.add_argument("--image-model", default=None, help="use this trained image model folder")
    p.add_argument("--skip-image-model", action="store_true")
    p.add_argument(
        "--base-image-model", default=None, help="fine-tune a copy of this base run (captions only, 3000 steps)"
    )
    p.add_argument("--fusemix-epochs", type=int, default=40)
    a = p.parse_args()
    data, runs, out = Path(a.data), Path(a.runs), Path(a.out)
    lat = data / "latents"
    extra = Path(str(data) + "_extra")
    run("demo", "build", "--out", str(data))
    run("demo", "build", "--out", str(extra), "--size", EXTRA_WORLD["size"], "--seed", EXTRA_WORLD["seed"])
    jobs = [(data, split, lat) for split in ("train", "val", "test")] + [(extra, "train", extra / "latents")]
    for world, split, folder in jobs:
        manifest = str(world / f"{split}.jsonl")
        run("extract", "--encoder", AUDIO_ENCODER, "--tokens", AUDIO_TOKENS, "--manifest", manifest,
            "--out", str(folder / f"audio_tokens{AUDIO_TOKENS}_{split}"))  # fmt: skip
        run("extract", "--encoder", TEXT_ENCODER, "--tokens", TEXT_TOKENS, "--manifest", manifest,
            "--out", str(folder / f"text_tokens{TEXT_TOKENS}_{split}"))  # fmt: skip
    write_bank_manifest(data / "bank.jsonl")
    bank_latents = lat / f"text_tokens{TEXT_TOKENS}_bank"
    run("extract", "--encoder", TEXT_ENCODER, "--tokens", TEXT_TOKENS, "--manifest", str(data / "bank.jsonl"),
        "--out", str(bank_latents))  # fmt: skip
    train = {}
    for kind, tokens in (("audio", AUDIO_TOKENS), ("text", TEXT_TOKENS)):
        name = f"{kind}_tokens{tokens}_train"
        train[kind] = concat_latents([("", lat / name), ("extra-", extra / "latents" / name)], lat / f"{name}_all")
    resume = ["--resume"] if (runs / "fusemix" / "checkpoint").exists() else []
    run("train", "--audio-latents", str(train["audio"]), "--text-latents", str(train["text"]),
        "--out", str(runs / "fusemix"), "--audio-adapter", "sparse", "--keep", AUDIO_KEEP,
        "--text-adapter", "sparse", "--text-keep", TEXT_TOKENS, "--dropout", "0.2", "--batch-size", "512",
        "--epochs", str(a.fusemix_epochs), *resume)  # fmt: skip
    run("eval", "--checkpoint", str(runs / "fusemix"), "--audio-latents", str(lat / f"audio_tokens{AUDIO_TOKENS}_test"),
        "--text-latents", str(lat / f"text_tokens{TEXT_TOKENS}_test"), "--json", str(runs / "fusemix_eval.json"))  # fmt: skip
    run("train-translator", "--adapters", str(runs / "fusemix" / "checkpoint"), "--text-latents", str(bank_latents),
        "--out", str(runs / "translator"))  # fmt: skip
    image_model = Path(a.image_model) if a.image_model else runs / "image_model"
    if not a.skip_image_model:
        base = Path(a.base_image_model) if a.base_image_model else None
        train_image_model(image_model, runs / "translator", runs / "fusemix" / "checkpoint", base=base)

    write_preset(
        out, runs / "fusemix" / "checkpoint", runs / "translator", image_model, bank_latents, half=True, mode="retrieve"
    )
    print(f"embedded default written to {out}")


if __name__ == "__main__":
    main()
