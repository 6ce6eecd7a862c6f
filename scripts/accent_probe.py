"""Probe clips for simulated accents: the same scenes, captions and voices spoken plain and under each sound change
(or set of changes), so a preset's decisions can be compared change by change on paired clips.

    .venv/bin/python scripts/accent_probe.py --out runs/probe                        # plain + each single change
    .venv/bin/python scripts/accent_probe.py --out runs/combo --changes "w-to-v,full-schwa" "w-to-v,rhotic-r"
    .venv/bin/fusemix extract --encoder concat:whisper-tiny.en-10s+whisper-tiny.en-transcript --tokens 32 \\
        --manifest runs/probe/probe.jsonl --out runs/probe/latents_audio
    .venv/bin/fusemix extract --encoder all-MiniLM-L6-v2 --tokens 16 --manifest runs/probe/bank.jsonl \\
        --out runs/probe/latents_bank
    .venv/bin/python scripts/translator_decisions.py --bank-cache runs/probe/latents_bank \\
        --split probe=runs/probe/latents_audio:runs/probe/probe.jsonl --group-by change

Captions use the validation phrasings and voices (what no training run hears). Needs espeak-ng.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from demoworld import accents, scenes, speech
from fusion.errors import FusemixError
from generator.recipe import DEFAULT, bank_captions


def plan(count: int, seed: int) -> list[tuple[scenes.Scene, str, speech.SpeechSettings]]:
    """``count`` (scene, caption, settings) drawn as a validation split draws them."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(count):
        scene = scenes.random_scene(rng)
        template = scenes.VAL_TEMPLATES[int(rng.integers(len(scenes.VAL_TEMPLATES)))]
        items.append((scene, scenes.caption(scene, template, rng), speech.draw_settings(speech.VAL_VOICES, rng)))
    return items


def write_probe(out: Path, changes: list[str], count: int, seed: int) -> int:
    """Speak every planned clip under each entry of ``changes`` ("none": plain); returns the clips written."""
    for change in changes:
        accents.bend("", "" if change == "none" else change, np.random.default_rng(0))  # unknown names fail first
    (out / "audio").mkdir(parents=True, exist_ok=True)
    bank = "".join(json.dumps({"id": i, "captions": c}) + "\n" for i, c in bank_captions(DEFAULT))
    (out / "bank.jsonl").write_text(bank)
    lines = []
    for change in changes:
        for k, (scene, text, settings) in enumerate(plan(count, seed)):
            clip = f"{change}-{k}"
            accented = replace(settings, accent="" if change == "none" else change)
            wave = speech.speak(text, accented, np.random.default_rng([seed, k]))  # same noise for every change
            sf.write(out / "audio" / f"{clip}.wav", wave, speech.SAMPLE_RATE)
            row = {"id": clip, "audio": f"audio/{clip}.wav", "caption": text, "scene": scene.to_dict()}
            lines.append(json.dumps({**row, "voice": settings.voice, "change": change}))
    tmp = out / ".probe.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "probe.jsonl")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for audio/, probe.jsonl and bank.jsonl")
    parser.add_argument("--changes", nargs="+", help='change sets, e.g. "w-to-v,full-schwa" (default: none + each)')
    parser.add_argument("--clips", type=int, default=32, help="clips per change set (default 32)")
    parser.add_argument("--seed", type=int, default=36)
    args = parser.parse_args(argv)
    changes = args.changes or ["none", *sorted(accents.SOUND_CHANGES)]
    try:
        written = write_probe(args.out, changes, args.clips, args.seed)
    except (ValueError, FusemixError) as err:
        print(f"accent_probe: {err}", file=sys.stderr)
        return 2
    print(f"{written} clips ({len(changes)} change sets x {args.clips}) in {args.out / 'probe.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
