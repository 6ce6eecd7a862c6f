"""`fusemix demo judge`: score generated demo-world images against the prompts they came from.

    fusemix demo judge --images outputs/demo --manifest outputs/demo/prompts.jsonl
    fusemix demo judge --images data/demo --manifest data/demo/test.jsonl --json judge.json

Each manifest line names its image ("image": a path relative to --images, else to the manifest's folder;
or "id", read as --images/<id>.png) and what was asked for: a "scene" dict of attributes, or a
"caption"/"prompt"/"text" parsed with the caption templates. Prints accuracy per attribute.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from demoworld.judge import ATTRIBUTES, load_image, score
from fusion.cache import atomic_write_json
from fusion.errors import InputError, MissingFileError

PROMPT_KEYS = ("caption", "prompt", "text")


@dataclass
class JudgeConfig:
    images: Path  # folder the manifest's image paths are relative to
    manifest: Path  # JSONL, one image per line
    json_out: Path | None = None  # where to write the scores as JSON


def parse_args(argv: list[str] | None) -> JudgeConfig:
    parser = argparse.ArgumentParser(prog="fusemix demo judge", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of the images")
    parser.add_argument("--manifest", type=Path, required=True, help="JSONL: image + scene attributes or caption")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the scores here")
    args = parser.parse_args(argv)
    return JudgeConfig(images=args.images, manifest=args.manifest, json_out=args.json_out)


def read_manifest(config: JudgeConfig) -> tuple[list[Path], list]:
    """Image paths and prompts (scene dicts or captions) from the manifest; errors name the line."""
    if not config.manifest.is_file():
        raise MissingFileError(f"--manifest {config.manifest} not found")
    if not config.images.is_dir():
        raise InputError(f"--images {config.images} is not a folder")
    paths, prompts = [], []
    for number, raw in enumerate(config.manifest.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{config.manifest}:{number}"
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not JSON ({err.msg})") from None
        if "image" in line:
            name = Path(line["image"])
            candidates = [config.images / name, config.manifest.parent / name]
        elif "id" in line:
            candidates = [config.images / f"{line['id']}.png"]
        else:
            raise InputError(f"{where}: needs an 'image' path or an 'id'")
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise MissingFileError(f"{where}: image not found at {candidates[0]}")
        if isinstance(line.get("scene"), dict):
            prompt = line["scene"]
        else:
            key = next((k for k in PROMPT_KEYS if isinstance(line.get(k), str)), None)
            if key is None:
                raise InputError(f"{where}: needs a 'scene' dict or one of {PROMPT_KEYS}")
            prompt = line[key]
        paths.append(path)
        prompts.append(prompt)
    if not paths:
        raise InputError(f"--manifest {config.manifest} holds no lines")
    return paths, prompts


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    paths, prompts = read_manifest(config)
    result = score([load_image(p) for p in paths], prompts)
    print(f"{'attribute':<12}{'accuracy':>10}{'named':>8}")
    for attr in ATTRIBUTES:
        if attr in result["accuracy"]:
            print(f"{attr:<12}{100 * result['accuracy'][attr]:>9.1f}%{result['named'][attr]:>8}")
    print(f"{'all four':<12}{100 * result['accuracy']['all']:>9.1f}%{result['count']:>8}")
    print(f"images judged: {result['count']}")
    if config.json_out is not None:
        per_image = [{"image": str(p), "judged": j} for p, j in zip(paths, result["judged"], strict=True)]
        atomic_write_json(config.json_out, {"accuracy": result["accuracy"], "count": result["count"],
                                            "named": result["named"], "images": per_image})  # fmt: skip
    return 0
