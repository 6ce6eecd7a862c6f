"""Write generated images and their JSON sidecars: shared by `fusemix generate` and `fusemix demo run`."""

from __future__ import annotations

import io
from pathlib import Path

from fusion.cache import atomic_write_bytes, atomic_write_json
from generator.audio_to_image import AudioToImageOutput, upscale


def save_outputs(
    out_dir: Path,
    names: list[str],
    result: AudioToImageOutput,
    sources: list[str],
    settings: dict,
    view_size: int = 256,
) -> list[Path]:
    """``<name>_<j>.png`` (+ ``_view.png`` upscaled when small) and ``<name>_<j>.json`` per image; atomic writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    n = len(names)
    for i, name in enumerate(names):
        for j, image in enumerate(result.images[i]):
            stem = out_dir / f"{name}_{j}"
            written.append(stem.with_suffix(".png"))
            _save_png(stem.with_suffix(".png"), image)
            if image.width < view_size:
                _save_png(stem.parent / f"{stem.name}_view.png", upscale(image, view_size))
            atomic_write_json(
                stem.with_suffix(".json"),
                {
                    "audio": sources[i],
                    "image": stem.with_suffix(".png").name,
                    "seed": result.seeds[i] + j,
                    "heard": [{"caption": c, "score": s} for c, s in result.heard[i]],
                    "prompt": result.prompts[i],
                    "settings": settings,
                    "timing_s": {k: round(v / n, 4) for k, v in result.timings.items()},
                },
            )
    return written


def _save_png(path: Path, image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
