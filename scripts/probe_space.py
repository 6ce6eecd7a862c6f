"""Linear probes on the raw audio latents and on the shared space S: how much of what the encoder hears survives.

    .venv/bin/python scripts/probe_space.py --adapters runs/v2/fusemix/checkpoint \\
        --train runs/v2/latents/audio_train runs/v2/world/train.jsonl \\
        --test runs/v2/latents/audio_test runs/v2/world/test.jsonl --json runs/probes.json

Labels are each clip's scene attributes (background, colour, shape, size) from its manifest. Raw token latents are
probed mean-pooled over tokens (and, for a ``concat:`` encoder, each part alone as well); S is the adapters' output.
Probes are fit on the training clips and scored on the test clips (unseen voices and phrasings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from demoworld.judge import ATTRIBUTES
from fusion.adapters import FuseMixAdapters
from fusion.cache import atomic_write_json, load_latents
from fusion.probes import linear_probe


def clips(cache: str, manifest: str, limit: int | None) -> tuple[np.ndarray, list[dict], dict]:
    """A cache's rows (first ``limit``), the scene of each (matched by clip id), and the cache's metadata."""
    latents = load_latents(Path(cache))
    scenes = {}
    for line in Path(manifest).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            scenes[item["id"]] = item["scene"]
    rows = np.asarray(latents.array[:limit], np.float32)
    return rows, [scenes[c] for c in latents.clip_ids[: len(rows)]], latents.meta


def views(model: FuseMixAdapters, rows: np.ndarray, encoder: str) -> dict[str, np.ndarray]:
    """The representations probed: raw latents (pooled over tokens; each concat part too) and S."""
    pooled = rows.mean(axis=1) if rows.ndim == 3 else rows
    out = {"raw audio latents": pooled}
    if encoder.startswith("concat:") and pooled.shape[1] % 2 == 0:
        first, second = encoder[len("concat:") :].split("+")
        half = pooled.shape[1] // 2  # the demo's parts have equal width (384 + 384)
        out[f"  {first}"], out[f"  {second}"] = pooled[:, :half], pooled[:, half:]
    with torch.no_grad():
        out["shared space S"] = model.encode({"audio": torch.from_numpy(rows)})["audio"].numpy()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapters", required=True)
    p.add_argument("--train", nargs=2, required=True, metavar=("CACHE", "MANIFEST"))
    p.add_argument("--test", nargs=2, required=True, metavar=("CACHE", "MANIFEST"))
    p.add_argument("--limit", type=int, default=None, help="training clips used (default all)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    model = FuseMixAdapters.from_pretrained(a.adapters).eval()
    train_rows, train_scenes, meta = clips(*a.train, a.limit)
    test_rows, test_scenes, _ = clips(*a.test, None)
    encoder = meta.get("encoder", "")
    train_views, test_views = views(model, train_rows, encoder), views(model, test_rows, encoder)
    results = {}
    print(f"{'representation':<34}" + "".join(f"{k:>12}" for k in ATTRIBUTES))
    for name in train_views:
        results[name.strip()] = {
            k: round(
                linear_probe(
                    train_views[name], [s[k] for s in train_scenes], test_views[name], [s[k] for s in test_scenes]
                ),
                3,
            )  # fmt: skip
            for k in ATTRIBUTES
        }
        print(f"{name:<34}" + "".join(f"{results[name.strip()][k]:>12.3f}" for k in ATTRIBUTES))
    if a.json:
        atomic_write_json(Path(a.json), {"train": a.train, "test": a.test, "probes": results})


if __name__ == "__main__":
    main()
