"""Write generated images and their JSON sidecars: shared by `fusemix generate` and `fusemix demo run`.

Each sidecar ``<name>_<j>.json`` is the same record ``fusemix batch`` appends to ``results.jsonl``
(``generator.records``).
"""

from __future__ import annotations

import io
from pathlib import Path

from fusion.cache import atomic_write_bytes, atomic_write_json
from generator.audio_to_image import AudioToImageOutput, upscale
from generator.records import Settings, image_record, split_output


def save_outputs(
    out_dir: Path,
    names: list[str],
    result: AudioToImageOutput,
    sources: list[str],
    settings: Settings,
) -> list[Path]:
    """``<name>_<j>.png`` (+ ``_view.png`` upscaled when small) and ``<name>_<j>.json`` per image; atomic writes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source, clip in zip(names, sources, split_output(result), strict=True):
        for j, image in enumerate(clip.images):
            png = out_dir / f"{name}_{j}.png"  # names are file stems: no sub-folders
            _save_png(png, image)
            view = None
            if settings.view_size and max(image.size) < settings.view_size:
                view = f"{name}_{j}_view.png"
                _save_png(out_dir / view, upscale(image, settings.view_size))
            atomic_write_json(png.with_suffix(".json"), image_record(name, source, j, png.name, view, clip, settings))
            written.append(png)
    return written


def _save_png(path: Path, image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
