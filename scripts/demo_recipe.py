"""Steps the demo recipes share: run a `fusemix` subcommand, the caption bank manifest, the image model's two
stages, and writing a preset folder (parts, the bank's points in S, preset.json)."""

from __future__ import annotations

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
