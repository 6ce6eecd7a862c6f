"""Which scene a translator tells the image model, without drawing: each clip's translated conditioning is scored by
the scene of the nearest canonical caption conditioning (the first caption of each caption-bank group), beside the
scene retrieve mode would pick (the nearest bank caption in S). Minutes on a CPU where the images take an hour.

    .venv/bin/python scripts/translator_decisions.py --preset checkpoints/demo --translator runs/tr \\
        --bank-cache runs/w5/latents/text_bank --split val2=runs/latents/audio_val2:runs/val2/test.jsonl

A split is NAME=AUDIO_CACHE:MANIFEST (the cache from `fusemix extract` with the preset's audio encoder). Cells are
background / shape colour / shape / size; "far" is the mean distance from the translated conditioning to its nearest
canonical one (a blend of two scenes lies far from both); a snapping translator (`train-translator --snap`) also
says how many clips it snapped, and a preset with a ``handoff`` how many it handed to retrieve. ``--group-by FIELD``
also scores each value of a manifest field on its own (e.g. the ``change`` of `scripts/accent_probe.py`'s clips), as
rows NAME/VALUE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from demoworld import scenes
from demoworld.judge import ATTRIBUTES
from fusion.adapters import FuseMixAdapters
from fusion.cache import load_latents
from fusion.errors import FusemixError
from generator.caption_bank import group_heads, load_caption_bank
from generator.image_text import image_text_encoder
from generator.presets import load_preset
from generator.translator import Translator


def accuracy(picked: list[dict], truth: list[dict]) -> str:
    """Share of clips whose picked scene has the true value, per attribute."""
    right = {a: sum(p[a] == t[a] for p, t in zip(picked, truth, strict=True)) for a in ATTRIBUTES}
    return " / ".join(f"{right[a] / len(truth):.3f}" for a in ATTRIBUTES)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", help="preset whose adapters and caption bank are used")
    p.add_argument("--translator", help="translator folder (default: the preset's)")
    p.add_argument("--bank-cache", required=True, help="text cache of the caption bank, grouped by scene id")
    p.add_argument("--split", nargs="+", required=True, metavar="NAME=CACHE:MANIFEST")
    p.add_argument("--group-by", metavar="FIELD", help="also score each value of this manifest field on its own")
    a = p.parse_args(argv)
    preset = load_preset(a.preset)
    adapters = FuseMixAdapters.from_pretrained(str(preset.adapters)).eval()
    translator = Translator.from_pretrained(a.translator or str(preset.translator)).eval()
    captions, bank = load_caption_bank(preset.caption_bank)
    cache = load_latents(Path(a.bank_cache))
    heads = list(group_heads(cache.texts, cache.clip_ids).values())  # each group's canonical phrasing
    canonical = image_text_encoder(preset.kind)(heads).flatten(1)
    for spec in a.split:
        try:
            name, rest = spec.split("=", 1)
            folder, manifest = rest.rsplit(":", 1)
            latents = load_latents(Path(folder))
            rows = {r["id"]: r for r in map(json.loads, Path(manifest).open())}
            truth = [rows[i]["scene"] for i in latents.ids]
            groups = {name: list(range(len(truth)))}
            for k, i in enumerate(latents.ids if a.group_by else ()):
                groups.setdefault(f"{name}/{rows[i][a.group_by]}", []).append(k)
        except (FusemixError, ValueError, OSError, KeyError) as err:
            print(f"translator_decisions: --split {spec}: {err}", file=sys.stderr)
            return 1
        points = F.normalize(adapters.embed("audio", torch.from_numpy(latents.array[:]).float()), dim=-1)
        retrieved = (points @ bank.T).argmax(1).tolist()
        raw = translator.translate(points)  # once: what the image model is told is raw, snapped where far
        drawn, far_rows = translator.snapped(raw) if translator.config.snap else (raw, None)
        near = torch.cdist(drawn.flatten(1), canonical).min(1)
        picked = [scenes.parse_caption(captions[i]) for i in retrieved]
        told = [scenes.parse_caption(heads[i]) for i in near.indices.tolist()]
        far = torch.cdist(raw.flatten(1), canonical).min(1).values
        handed = (
            translator.anchor_distance(raw) > preset.handoff
            if preset.handoff > 0
            else torch.zeros(len(raw), dtype=torch.bool)
        )
        told = [picked[k] if handed[k] else t for k, t in enumerate(told)]  # the preset's handoff: drawn as retrieve
        for group, rows_of in groups.items():
            print(f"{group:10s} retrieve   {accuracy([picked[k] for k in rows_of], [truth[k] for k in rows_of])}")
            snapped = f"  snapped {int(far_rows[rows_of].sum())}/{len(rows_of)}" if far_rows is not None else ""
            snapped += f"  handed {int(handed[rows_of].sum())}" if preset.handoff > 0 else ""
            right = accuracy([told[k] for k in rows_of], [truth[k] for k in rows_of])
            print(f"{group:10s} translate  {right}  far {far[rows_of].mean():.3f}{snapped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
