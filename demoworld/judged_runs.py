"""Reading judged runs back (`scripts/eval_demo_generation.py --json` files), named FILE:SPLIT:CONDITION."""

from __future__ import annotations

import json
from pathlib import Path


def _parts(spec: str) -> tuple[str, str, str]:
    file, sep, condition = spec.rpartition(":")
    file, sep2, split = file.rpartition(":")
    if not (sep and sep2 and file):
        raise ValueError(f"expected FILE:SPLIT:CONDITION, got {spec!r}")
    return file, split, condition


def load_clips(spec: str) -> list[dict]:
    """The ``clips`` of one condition of one split, from FILE:SPLIT:CONDITION."""
    file, split, condition = _parts(spec)
    results = json.loads(Path(file).read_text())["results"]
    if split not in results or condition not in results[split]:
        raise ValueError(f"{file} has no {split}:{condition} (it holds {sorted(results)})")
    return results[split][condition]["clips"]


def split_items(spec: str) -> list[dict]:
    """The manifest rows (FOLDER/test.jsonl) of the split that FILE:SPLIT:CONDITION was judged on, found from the
    run's own record of its split folders."""
    file, split, _ = _parts(spec)
    folders = json.loads(Path(file).read_text()).get("splits", {})
    if split not in folders:
        raise ValueError(f"{file} records no folder for split {split!r}")
    lines = (Path(folders[split]) / "test.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]
