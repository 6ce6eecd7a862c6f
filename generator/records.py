"""What every generated image records, and how its seed is drawn: one schema for generate, batch and the UI.

A record is one JSON object per image (``fusemix generate`` writes it as a sidecar ``<clip>_<k>.json``,
``fusemix batch`` as a line of ``results.jsonl``, the UI shows its ``heard``, ``seed`` and ``timings``)::

    {"clip": "sub/dog", "audio": "sounds/sub/dog.wav", "index": 0, "image": "sub/dog_0.png",
     "view": "sub/dog_0_view.png", "seed": 1734019882, "mode": "retrieve", "prompt": "a dog barks",
     "heard": [["a dog barks", 0.61], ...], "timings": {"load_audio": 0.01, ..., "total": 0.57},
     "settings": {"preset": "demo", "mode": "retrieve", "steps": 20, ...}, "error": null}

``seed`` is the clip's seed (``clip_seed(settings.seed, clip)``); image ``index`` is drawn with ``seed + index``.
A clip that failed has one record with ``index``/``image`` null and its ``error``. ``settings`` holds every option
that decides the images and the record, so a later run can tell whether they are still what it was asked for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

RECORD_KEYS = (
    "clip", "audio", "index", "image", "view", "seed", "mode", "prompt", "heard", "timings", "settings", "error",
)  # fmt: skip


def clip_seed(seed: int, clip_id: str) -> int:
    """A clip's seed from the job's seed and the clip's id: the same whatever the order, the batch or the machine,
    and distinct across clips (no repeats after N clips, as ``seed + 1000 * i`` had)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{clip_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Settings:
    """The options that made an image and its record (stored in each record as ``settings``)."""

    preset: str | None  # preset name or folder the images came from
    mode: str | None  # "translate" or "retrieve"; None: the preset's default
    steps: int | None  # denoising steps; None: the preset's default
    guidance: float | None  # classifier-free guidance scale; None: the preset's default
    seed: int  # the job's seed; each clip's seed is clip_seed(seed, clip id)
    num_images_per_audio: int = 1  # images per clip
    top_k: int = 5  # nearest captions recorded in "heard"
    text: str | None = None  # text prompt mixed with the audio in the shared space
    text_weight: float = 0.0  # its weight in [0, 1]
    view_size: int = 256  # images smaller than this also get an upscaled view; 0: none

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored in records (floats stay floats, so a reread compares equal)."""
        return json.loads(json.dumps(asdict(self)))

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """``name recorded -> now`` for each setting that differs from a record's ``settings``."""
        now = self.as_dict()
        return [
            f"{key} {_show(recorded.get(key))} -> {_show(value)}"
            for key, value in now.items()
            if _normal(recorded.get(key)) != _normal(value)
        ]


def _normal(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _show(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value)


@dataclass
class ClipOutput:
    """One clip's share of a pipeline output."""

    images: list[Image.Image]  # num_images_per_audio images
    heard: list[tuple[str, float]]  # nearest captions with cosine scores, best first
    prompt: str | None  # the caption used as prompt (retrieve mode, or handed to it: preset handoff), else None
    mode: str  # the mode that ran
    seed: int  # image j was drawn with seed + j
    timings: dict[str, float]  # seconds per stage (this clip's share of its call)


def split_output(output: Any) -> list[ClipOutput]:
    """Per-clip parts of an ``AudioToImageOutput``; the call's timings are shared evenly among its clips."""
    n = len(output.images)
    timings = {k: round(float(v) / n, 4) for k, v in output.timings.items()}
    return [
        ClipOutput(
            images=list(output.images[i]),
            heard=[(str(c), float(s)) for c, s in output.heard[i]],
            prompt=output.prompts[i],
            mode=str(output.mode),
            seed=int(output.seeds[i]),
            timings=dict(timings),
        )
        for i in range(n)
    ]


def heard_pairs(heard: list[tuple[str, float]]) -> list[list[Any]]:
    """``heard`` as the records hold it: ``[caption, score]`` pairs, scores rounded to 4 decimals."""
    return [[str(caption), round(float(score), 4)] for caption, score in heard]


def image_record(
    clip_id: str,
    audio: str,
    index: int,
    image: str,
    view: str | None,
    result: ClipOutput,
    settings: Settings,
) -> dict[str, Any]:
    """The record of image ``index`` of a clip (paths relative to the output folder)."""
    return {
        "clip": clip_id,
        "audio": audio,
        "index": index,
        "image": image,
        "view": view,
        "seed": result.seed,
        "mode": result.mode,
        "prompt": result.prompt,
        "heard": heard_pairs(result.heard),
        "timings": dict(result.timings),
        "settings": settings.as_dict(),
        "error": None,
    }


def error_record(clip_id: str, audio: str, seed: int, settings: Settings, error: Exception | str) -> dict[str, Any]:
    """The one record of a clip that failed."""
    return {
        "clip": clip_id,
        "audio": audio,
        "index": None,
        "image": None,
        "view": None,
        "seed": seed,
        "mode": settings.mode,
        "prompt": None,
        "heard": [],
        "timings": {},
        "settings": settings.as_dict(),
        "error": str(error),
    }
