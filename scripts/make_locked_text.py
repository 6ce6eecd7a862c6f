"""The locked-text variant of the demo default (shipped until the token-tower default replaced it; see README).

    .venv/bin/python scripts/make_locked_text.py --out runs/preset_locked      # all steps; each resumes if re-run
    .venv/bin/python scripts/make_locked_text.py --skip-image-model --image-model runs/image_model --out ...

Steps: build the demo world -> extract Whisper (10 s window) and MiniLM latents for train/val/test and for a caption
bank (every scene x training template) -> FuseMix with a locked text tower (audio lands in MiniLM space) ->
translator on the bank captions -> image model (3,000 steps on captions, then 1,200 more with half of each batch
conditioned through the translator) -> copy everything a user needs into the preset folder.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--runs", default="runs/locked")
    p.add_argument("--out", default="runs/preset_locked")
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
    print(f"locked-text preset written to {out}")


if __name__ == "__main__":
    main()
