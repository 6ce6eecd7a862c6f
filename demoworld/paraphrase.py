"""More captions per training clip: its scene said in other training phrasings (the recipe's ``paraphrases``).

A demo-world clip's caption is exactly what its audio says, so contrastive training rewards S for keeping the
wording: the nearest bank caption is then often one worded alike with the two colours swapped (on the training
clips themselves, the nearest bank caption had the right background 0.64 of the time). Pairing each clip with its
caption and N captions of the same scene in other *training* phrasings (training draws one per clip per epoch)
leaves the content as the only thing audio and caption share, as a dataset with several captions per clip does.
No validation or test phrasing is used.

    write_paraphrases(Path("world/train.jsonl"), Path("work/paraphrases_train.jsonl"), n=5, seed=0)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from demoworld import scenes
from fusion.cache import atomic_write_bytes
from fusion.errors import InputError


def paraphrases(item: dict, n: int, rng: np.random.Generator) -> list[str]:
    """The clip's own caption, then its scene in ``n`` other training phrasings (distinct, drawn from ``rng``)."""
    others = [t for t in scenes.TRAIN_TEMPLATES if t != item.get("template")]
    if not 0 <= n <= len(others):
        raise InputError(f"paraphrases must be in [0, {len(others)}] (training phrasings), got {n}")
    scene = scenes.Scene(**item["scene"])
    picked = rng.choice(others, size=n, replace=False)
    return [item["caption"], *(scenes.caption(scene, int(t), rng) for t in picked)]


def write_paraphrases(manifest: Path, out: Path, n: int, seed: int) -> Path:
    """``manifest`` (a world's train.jsonl) as a captions-only manifest: each clip's id and ``captions`` list."""
    rng = np.random.default_rng([seed, 17])
    lines = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if "scene" not in item or "caption" not in item:
            raise InputError(f"{manifest}: clip {item.get('id')!r} has no scene or caption (a demo world's manifest?)")
        record = {"id": item["id"], "captions": paraphrases(item, n, rng)}
        lines.append(json.dumps(record))
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode("utf-8"))
    return out
