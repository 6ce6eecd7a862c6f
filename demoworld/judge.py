"""The pixel judge: reads a demo-world image back into attributes, to score generated images.

Background = nearest palette colour of the border's median; the shape mask = pixels closer to the
shape's colour than to the background along the line between them; the shape = the best IoU among
templates of each shape drawn at the mask's centroid and area; the size from that template's radius.
It needs no model, so it is an honest quality metric for the demo world's image generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from demoworld import scenes
from fusion.errors import InputError, MissingFileError

ATTRIBUTES: tuple[str, ...] = ("background", "colour", "shape", "size")
NONE = "none"  # what the judge says when it finds no shape
_NAMES = list(scenes.COLOURS)
_PALETTE = np.asarray([scenes.COLOURS[name] for name in _NAMES], dtype=np.float32)
MIN_SHAPE_FRACTION = 0.01  # a mask below 1 % of the image is "no shape"
# Radius (fraction of the side) between small and large: geometric mean of the two sizes.
SIZE_THRESHOLD = math.sqrt(scenes.SIZE_RADIUS["small"] * scenes.SIZE_RADIUS["large"])
SCALES = (0.92, 1.0, 1.08)  # template radii tried around the area estimate
# Blur (Gaussian sigma in pixels per 32 px of side) applied to templates: blurred renders lose their corners.
BLURS = (0.0, 1.0)
STRAY_TOLERANCE = 48.0  # RGB distance from the bg-to-shape colour line beyond which a pixel is stray


def nearest_colour(rgb: np.ndarray, exclude: str | None = None) -> str:
    """The palette name nearest to one RGB value (optionally never ``exclude``)."""
    d = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float32), axis=1)
    if exclude is not None:
        d[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(np.argmin(d))]


@cache
def unit_area(shape: str) -> float:
    """Area of a shape of radius 1, measured on the same raster the renderer uses."""
    r, res = 48.0, 128
    return float(scenes.draw_mask(shape, res / 2, res / 2, r, res).sum()) / (r * r)


def as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    """An (H, W, 3) float32 array in 0..255 from a PIL image or a uint8/float array (floats in 0..1)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must have shape (H, W, 3), got {arr.shape}")
    arr = arr[..., :3].astype(np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.floating) and arr.max() <= 1.0:
        arr = arr * 255.0
    return arr


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """Drop specks: keep connected pieces at least a fifth of the largest one."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= 0.2 * sizes.max()) + 1
    return np.isin(labels, keep)


def _fit_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best-matching shape (by IoU) and its radius in pixels, templates centred on the mask's centroid."""
    res = mask.shape[0]
    ys, xs = np.nonzero(mask)
    cx, cy, area = xs.mean() + 0.5, ys.mean() + 0.5, float(mask.sum())
    best = ("", -1.0, 0.0)
    for shape in scenes.SHAPES:
        r0 = math.sqrt(area / unit_area(shape))
        for scale in SCALES:
            coverage = scenes.draw_mask(shape, cx, cy, r0 * scale, res)
            for blur in BLURS:
                soft = ndimage.gaussian_filter(coverage, blur * res / 32, mode="nearest") if blur else coverage
                template = soft > 0.5
                union = np.logical_or(template, mask).sum()
                iou = float(np.logical_and(template, mask).sum()) / max(1, union)
                if iou > best[1]:
                    best = (shape, iou, r0 * scale)
    return best[0], best[2]


def judge_image(rgb: np.ndarray | Image.Image) -> dict[str, str]:
    """Attributes seen in one image: background, colour, shape, size ("none" where there is no shape)."""
    img = as_rgb(rgb)
    h, w = img.shape[:2]
    if h != w or h < 8:
        raise InputError(f"image must be square and at least 8 px, got {w}x{h}")
    band = max(1, h // 16)
    border = np.concatenate(
        [
            img[:band].reshape(-1, 3),
            img[-band:].reshape(-1, 3),
            img[:, :band].reshape(-1, 3),
            img[:, -band:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)
    result = {"background": background, "colour": NONE, "shape": NONE, "size": NONE}

    dist = np.linalg.norm(img - bg_rgb, axis=2)
    others = np.linalg.norm(_PALETTE - _PALETTE[_NAMES.index(background)], axis=1)
    threshold = 0.5 * float(np.min(others[others > 0]))
    rough = dist > threshold
    min_pixels = max(3, int(MIN_SHAPE_FRACTION * h * w))
    if rough.sum() < min_pixels:
        return result
    core = rough & (dist >= np.percentile(dist[rough], 75))  # far from the edges: the shape's own colour
    fg_rgb = np.median(img[core], axis=0)
    result["colour"] = nearest_colour(fg_rgb, exclude=background)

    axis = fg_rgb - bg_rgb
    alpha = ((img - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6)  # estimated coverage of each pixel
    mask = _clean_mask(alpha > 0.5)
    if mask.sum() < min_pixels:
        return result
    shape, radius = _fit_shape(mask)
    result["shape"] = shape
    result["size"] = "small" if radius / h < SIZE_THRESHOLD else "large"
    return result


def stray_share(rgb: np.ndarray | Image.Image, seen: Mapping[str, str], tolerance: float = STRAY_TOLERANCE) -> float:
    """Share of pixels that are no blend of the two colours the judge read (``seen``): blotches and smears that
    the attributes do not score. A clean render scores 0 (its anti-aliased edges are blends)."""
    img = as_rgb(rgb)
    bg = _PALETTE[_NAMES.index(seen["background"])]
    fg = _PALETTE[_NAMES.index(seen["colour"])] if seen.get("colour", NONE) != NONE else bg
    axis = fg - bg
    t = np.clip(((img - bg) @ axis) / max(float(axis @ axis), 1e-6), 0.0, 1.0)
    dist = np.linalg.norm(img - (bg + t[..., None] * axis), axis=2)
    return float((dist > tolerance).mean())


def expected_attributes(prompt: Mapping | str) -> dict[str, str]:
    """The attributes a prompt asks for: a scene dict, or a caption parsed with scenes.parse_caption."""
    if isinstance(prompt, str):
        return scenes.parse_caption(prompt)
    return {k: str(prompt[k]) for k in ATTRIBUTES if k in prompt}


def compare(seen: Mapping[str, str], want: Mapping[str, str]) -> dict[str, bool]:
    """For each attribute the prompt names (in ATTRIBUTES order): whether the judge saw it in the image."""
    return {attr: seen[attr] == want[attr] for attr in ATTRIBUTES if attr in want}


def score(images: Sequence[np.ndarray | Image.Image], prompts: Sequence[Mapping | str]) -> dict:
    """Accuracy per attribute over the images (each attribute counted where its prompt names it): the one scorer
    of generated demo-world images (``fusemix demo judge``, ``fusemix demo run``, scripts/eval_demo_generation.py).

    Returns {"accuracy": {attribute: fraction, "all": fraction fully right}, "count": n, "named": {attribute: n},
    "judged": [attributes seen, per image], "correct": [{attribute: bool}, per image],
    "stray": [stray_share, per image]}.
    """
    if len(images) != len(prompts):
        raise ValueError(f"images and prompts must have one length, got {len(images)} and {len(prompts)}")
    if not images:
        raise InputError("nothing to score: no images")
    judged = [judge_image(image) for image in images]
    correct = [compare(seen, expected_attributes(p)) for seen, p in zip(judged, prompts, strict=True)]
    named = {a: sum(a in c for c in correct) for a in ATTRIBUTES}
    accuracy = {a: sum(c.get(a, False) for c in correct) / named[a] for a in ATTRIBUTES if named[a]}
    accuracy["all"] = sum(all(c.values()) for c in correct) / len(images)
    stray = [stray_share(image, seen) for image, seen in zip(images, judged, strict=True)]
    return {"accuracy": accuracy, "count": len(images), "named": named, "judged": judged, "correct": correct,
            "stray": stray}  # fmt: skip


def load_image(path: Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image not found: {path}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
