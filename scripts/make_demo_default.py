"""Rebuild the embedded default in checkpoints/demo from nothing: the recipe behind the shipped weights.

    .venv/bin/python scripts/make_demo_default.py                 # all steps; each one resumes if re-run
    .venv/bin/python scripts/make_demo_default.py --skip-image-model --image-model runs/image_model

Steps: build the demo world -> extract Whisper (10 s window) and MiniLM latents for train/val/test and for a caption
bank (every scene x training template) -> FuseMix with a locked text tower (audio lands in MiniLM space) ->
translator on the bank captions -> image model (3,000 steps on captions, then 1,200 more with half of each batch
conditioned through the translator) -> copy everything a user needs into checkpoints/demo.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from demoworld import scenes
from fusemix.cli import main as fusemix
from fusion.adapters import FuseMixAdapters
from fusion.cache import load_latents
from generator.caption_bank import save_caption_bank

AUDIO_ENCODER = "whisper-tiny.en-10s"
TEXT_ENCODER = "all-MiniLM-L6-v2"
IMAGE_BASE_STEPS = 3000  # captions only
IMAGE_STEPS = 4200  # then on to here with half of each batch conditioned through the translator


def run(*argv: str) -> None:
    print("$ fusemix " + " ".join(argv), flush=True)
    if fusemix(list(argv)) != 0:
        raise SystemExit(f"step failed: fusemix {' '.join(argv)}")


def write_bank_manifest(path: Path) -> None:
    """Every training-template caption of every scene, both size words: the translator's data and the bank."""
    combos = scenes.all_attribute_combinations()
    by_combo: dict[int, list[str]] = {}
    for text, index in scenes.training_captions():
        by_combo.setdefault(index, []).append(text)
    lines = [
        json.dumps({"id": "{2}_{1}_{0}_on_{3}".format(*combos[index]), "captions": caps})
        for index, caps in by_combo.items()
    ]
    path.write_text("\n".join(lines) + "\n")


def train_image_model(
    image_model: Path, translator: Path, adapters: Path | None = None, noise: float = 0.05, base: Path | None = None
) -> None:
    """Base model on captions, then fine-tuned on the translator's outputs so translated prompts work.

    ``base``: start from this folder (a base run with its training_state at IMAGE_BASE_STEPS) instead of training one.
    Both stages resume when re-run.
    """
    if base is not None and not image_model.exists():
        shutil.copytree(base, image_model)
    run("demo", "train-image-model", "--out", str(image_model), "--steps", str(IMAGE_BASE_STEPS))
    tuned = ["--translator", str(translator), "--translator-noise", str(noise)]
    tuned += ["--adapters", str(adapters)] if adapters is not None else []
    run("demo", "train-image-model", "--out", str(image_model), "--steps", str(IMAGE_STEPS), *tuned)


def write_preset(
    out: Path,
    adapters: Path,
    translator: Path,
    image_model: Path,
    bank_latents: Path,
    half: bool = False,
    mode: str = "translate",
) -> None:
    """Copy the trained parts into a preset folder, with the caption bank's points in S and preset.json.

    ``mode`` is the preset's default generation mode (what `fusemix generate` uses without --mode).
    """
    out.mkdir(parents=True, exist_ok=True)
    for name, src in (("adapters", adapters), ("translator", translator)):
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(src, out / name, ignore=shutil.ignore_patterns("optimizer*", "training_state*", "*.tmp"))
        if half:
            store_half(out / name)
    if image_model.resolve() != (out / "image_model").resolve():
        shutil.rmtree(out / "image_model", ignore_errors=True)
        shutil.copytree(image_model, out / "image_model", ignore=shutil.ignore_patterns("training_state*", ".*"))
    bank = load_latents(bank_latents)
    model = FuseMixAdapters.from_pretrained(out / "adapters").eval()
    points = model.embed("text", torch.from_numpy(np.asarray(bank.array, dtype=np.float32)))
    save_caption_bank(out / "caption_bank", bank.texts, points)
    preset = {
        "kind": "demo",
        "audio_encoder": AUDIO_ENCODER,
        "text_encoder": TEXT_ENCODER,
        "adapters": "adapters",
        "translator": "translator",
        "image_model": "image_model",
        "caption_bank": "caption_bank",
        "steps": 20,
        "guidance": 3.0,
        "mode": mode,
    }
    (out / "preset.json").write_text(json.dumps(preset, indent=1) + "\n")


def store_half(folder: Path) -> None:
    """Rewrite a model folder's safetensors in float16 (loads back into float32 models unchanged, ~1e-4 off)."""
    for path in folder.glob("*.safetensors"):
        tensors = load_file(str(path))
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="checkpoints/demo")
    p.add_argument("--image-model", default=None, help="use this trained image model folder")
    p.add_argument("--skip-image-model", action="store_true")
    p.add_argument("--fusemix-epochs", type=int, default=300)
    a = p.parse_args()
    data, runs, out = Path(a.data), Path(a.runs), Path(a.out)
    lat = data / "latents"
    run("demo", "build", "--out", str(data))
    for split in ("train", "val", "test"):
        run(
            "extract",
            "--encoder",
            AUDIO_ENCODER,
            "--manifest",
            str(data / f"{split}.jsonl"),
            "--out",
            str(lat / f"audio_{split}"),
        )
        run(
            "extract",
            "--encoder",
            TEXT_ENCODER,
            "--manifest",
            str(data / f"{split}.jsonl"),
            "--out",
            str(lat / f"text_{split}"),
        )
    write_bank_manifest(data / "bank.jsonl")
    run("extract", "--encoder", TEXT_ENCODER, "--manifest", str(data / "bank.jsonl"), "--out", str(lat / "text_bank"))
    resume = ["--resume"] if (runs / "fusemix" / "checkpoint").exists() else []
    run(
        "train",
        "--audio-latents",
        str(lat / "audio_train"),
        "--text-latents",
        str(lat / "text_train"),
        "--out",
        str(runs / "fusemix"),
        "--lock-text",
        "--epochs",
        str(a.fusemix_epochs),
        *resume,
    )
    run(
        "eval",
        "--checkpoint",
        str(runs / "fusemix"),
        "--audio-latents",
        str(lat / "audio_test"),
        "--text-latents",
        str(lat / "text_test"),
        "--json",
        str(runs / "fusemix_eval.json"),
    )
    run(
        "train-translator",
        "--adapters",
        str(runs / "fusemix" / "checkpoint"),
        "--text-latents",
        str(lat / "text_bank"),
        "--out",
        str(runs / "translator"),
    )
    image_model = Path(a.image_model) if a.image_model else runs / "image_model"
    if not a.skip_image_model:
        train_image_model(image_model, runs / "translator")

    write_preset(out, runs / "fusemix" / "checkpoint", runs / "translator", image_model, lat / "text_bank")
    print(f"embedded default written to {out}")


if __name__ == "__main__":
    main()
