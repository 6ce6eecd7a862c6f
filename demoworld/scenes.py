"""Scene attributes, rendering and captions of the demo world.

A scene is one shape of one colour and size on a background of another colour.
Everything here is deterministic given its inputs; randomness comes in as a
``numpy.random.Generator`` passed by the caller.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

# Well-separated RGB values so the pixel judge can name a colour even after blur and noise.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
# Words `fusemix hard-negatives` may exchange within a caption ("red circle on blue" -> "blue circle on red"):
# the colours, the one class a caption names twice. `fusemix demo build` writes it as swap_classes.json.
SWAP_CLASSES: dict[str, list[str]] = {"colour": list(COLOURS)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
# Radius of the shape's bounding circle as a fraction of the image side.
SIZE_RADIUS: dict[str, float] = {"small": 0.2, "large": 0.36}
# Words a caption may use for each size.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
# Each size word -> its counterpart of the other size (`fusemix hard-negatives --substitutes`): "a big red circle"
# -> "a little red circle", the negative that differs by size alone.
SIZE_SUBSTITUTES: dict[str, str] = {
    **dict(zip(SIZE_WORDS["small"], SIZE_WORDS["large"], strict=True)),
    **dict(zip(SIZE_WORDS["large"], SIZE_WORDS["small"], strict=True)),
}

# Paraphrase templates. Splits hold some out (see demoworld.splits), so the order is part of the data.
TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} on a {background} background",
    "there is a {size} {colour} {shape}, the background is {background}",
    "a {colour} {shape}, {size}, in front of a {background} background",
    "{background} background with a {size} {colour} {shape}",
    "the picture shows a {size} {colour} {shape} on {background}",
    "a {size} {shape} coloured {colour} on a {background} backdrop",
    "on a {background} background sits a {size} {colour} {shape}",
    "an image of a {size} {colour} {shape} against {background}",
    "the {background} scene has one {size} {colour} {shape} in it",
    # 9-28: more training phrasings (format version 2)
    "a {size} {colour} {shape} sitting on a {background} background",
    "i see a {size} {colour} {shape} on a {background} background",
    "draw a {size} {colour} {shape} on a {background} background",
    "please make a {size} {colour} {shape} on a {background} backdrop",
    "a {background} background and a {size} {colour} {shape}",
    "show me a {size} {colour} {shape} against {background}",
    "a {size} {shape} in {colour} on a {background} background",
    "there is a {size} {colour} {shape} on a {background} background",
    "a {size} {colour} {shape} over a {background} background",
    "a {size} {colour} {shape} drawn on a {background} backdrop",
    "just a {size} {colour} {shape} on {background}",
    "picture a {size} {colour} {shape} on a {background} background",
    "we have a {size} {colour} {shape} and the background is {background}",
    "a {size} {colour} {shape} placed in the middle of a {background} background",
    "one {size} {colour} {shape}, {background} background",
    "my picture has a {size} {colour} {shape} on a {background} backdrop",
    "a {colour} {shape} that is {size} on a {background} background",
    "give me a {size} {colour} {shape} with a {background} background",
    "a {background} backdrop behind a {size} {colour} {shape}",
    "make the background {background} and add a {size} {colour} {shape}",
    # 29-31: validation phrasings
    "a {size} {colour} {shape} resting on a {background} background",
    "i would like a {size} {colour} {shape} on a {background} background",
    "the image is a {size} {colour} {shape} on {background}",
    # 32-35: test phrasings
    "imagine a {size} {colour} {shape} floating on a {background} background",
    "could you paint a {size} {colour} {shape} on a {background} backdrop",
    "{background} backdrop, and on it a {size} {colour} {shape}",
    "a {size} {colour} {shape} set against a {background} background",
    # 36-43: training phrasings that name the background first, each with another word for it (format version 3):
    # with only 4 of 26 such phrasings, S learned "the first colour is the shape's" and swapped held-out ones
    "{background} all around a {size} {colour} {shape}",
    "a {background} canvas holding a {size} {colour} {shape}",
    "the background is {background} and the shape is a {size} {colour} {shape}",
    "{background} everywhere except for a {size} {colour} {shape}",
    "the whole picture is {background} apart from a {size} {colour} {shape}",
    "a {background} field with one {size} {colour} {shape}",
    "a plain {background} wall and a {size} {colour} {shape} in front of it",
    "{background} page, {size} {colour} {shape} in the centre",
)

SUPERSAMPLE = 4  # render at 4x and downsample, for anti-aliased edges


@dataclass(frozen=True)
class Scene:
    """One drawable scene; ``dx``/``dy`` shift the centre by a fraction of the side."""

    shape: str
    colour: str
    size: str
    background: str
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        for field in ("colour", "background"):
            if getattr(self, field) not in COLOURS:
                raise ValueError(f"{field} must be one of {tuple(COLOURS)}, got {getattr(self, field)!r}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        if self.colour == self.background:
            raise ValueError(f"colour and background must differ, both are {self.colour!r}")

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "background": self.background}

    def to_dict(self) -> dict:
        return asdict(self)


def all_attribute_combinations() -> list[tuple[str, str, str, str]]:
    """Every valid (shape, colour, size, background), in a fixed order."""
    return [
        (shape, colour, size, background)
        for shape, colour, size, background in itertools.product(SHAPES, COLOURS, SIZES, COLOURS)
        if colour != background
    ]


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape inscribed in the circle (cx, cy, r); None for a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # pointing up, centroid at the centre
        return [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    if shape == "cross":  # plus sign with arms one third of the extent wide
        h, w = r * 0.95, r * 0.95 / 3
        return [
            (cx - w, cy - h), (cx + w, cy - h), (cx + w, cy - w), (cx + h, cy - w),
            (cx + h, cy + w), (cx + w, cy + w), (cx + w, cy + h), (cx - w, cy + h),
            (cx - w, cy + w), (cx - h, cy + w), (cx - h, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def draw_mask(shape: str, cx: float, cy: float, r: float, resolution: int) -> np.ndarray:
    """Anti-aliased coverage mask in [0, 1] of shape (resolution, resolution); coordinates in pixels."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (resolution * s, resolution * s), 0)
    draw = ImageDraw.Draw(canvas)
    polygon = shape_polygon(shape, cx * s, cy * s, r * s)
    if polygon is None:
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    small = canvas.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """The scene as an RGB uint8 array of shape (resolution, resolution, 3)."""
    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    r = SIZE_RADIUS[scene.size] * resolution
    cx = resolution / 2 + scene.dx * resolution
    cy = resolution / 2 + scene.dy * resolution
    mask = draw_mask(scene.shape, cx, cy, r, resolution)[..., None]
    fg = np.asarray(COLOURS[scene.colour], dtype=np.float32)
    bg = np.asarray(COLOURS[scene.background], dtype=np.float32)
    return np.clip(np.rint(mask * fg + (1 - mask) * bg), 0, 255).astype(np.uint8)


def jittered_scene(combo: tuple[str, str, str, str], rng: np.random.Generator, jitter: float = 0.08) -> Scene:
    """The scene of ``combo``, its centre shifted by up to ``jitter`` of the side (large shapes a third of it)."""
    shape, colour, size, background = combo
    room = jitter if size == "small" else jitter / 3
    dx, dy = rng.uniform(-room, room, size=2)
    return Scene(shape, colour, size, background, float(dx), float(dy))


def random_scene(rng: np.random.Generator, jitter: float = 0.08) -> Scene:
    """A uniformly drawn scene with a jittered centre."""
    combos = all_attribute_combinations()
    return jittered_scene(combos[rng.integers(len(combos))], rng, jitter)


def training_captions() -> list[tuple[str, int]]:
    """Every training-template caption of every scene with both size words, and the index of its combination.

    The image model trains on these; the demo translator and caption bank are built from the same list.
    """
    out = []
    for index, (shape, colour, size, background) in enumerate(all_attribute_combinations()):
        for template in IMAGE_TEMPLATES:
            for word in SIZE_WORDS[size]:
                text = TEMPLATES[template].format(size=word, colour=colour, shape=shape, background=background)
                out.append((text, index))
    return out


def caption(scene: Scene, template: int, rng: np.random.Generator) -> str:
    """The scene described with template number ``template``; the size word is drawn from ``rng``."""
    if not 0 <= template < len(TEMPLATES):
        raise ValueError(f"template must be in [0, {len(TEMPLATES)}), got {template}")
    words = SIZE_WORDS[scene.size]
    size_word = words[int(rng.integers(len(words)))]
    return TEMPLATES[template].format(
        size=size_word, colour=scene.colour, shape=scene.shape, background=scene.background
    )


# Words that follow the background's colour in the templates ("red backdrop", "red all around", "a red canvas").
BACKGROUND_WORDS: tuple[str, ...] = ("background", "backdrop", "scene", "canvas", "field", "wall", "page", "all",
                                     "everywhere")  # fmt: skip


def parse_caption(text: str) -> dict[str, str]:
    """Attributes named in a caption written from the templates (used to score prompts).

    The background colour is the one before a background word (``BACKGROUND_WORDS``) or after
    "is"/"against"/"background"/"backdrop"/"on"; the other colour is the shape's.
    """
    words = text.lower().replace(",", " ").split()
    found: dict[str, str] = {}
    colours = [(i, w) for i, w in enumerate(words) if w in COLOURS]
    for i, w in colours:
        nxt = words[i + 1] if i + 1 < len(words) else ""
        prev = words[i - 1] if i > 0 else ""
        is_bg = (
            nxt in BACKGROUND_WORDS
            or prev in ("is", "against", "background", "backdrop")
            or (prev == "on" and nxt not in SHAPES)
        )
        if is_bg and "background" not in found:
            found["background"] = w
        elif "colour" not in found:
            found["colour"] = w
    for w in words:
        if w in SHAPES:
            found["shape"] = w
        for size, syn in SIZE_WORDS.items():
            if w in syn:
                found["size"] = size
    return found


# Template splits: the test split's templates (and voices, see demoworld.speech) are never seen in training.
# 34 training phrasings (12 name the background first), 4 for validation, 6 held out for test (disjoint sets).
TRAIN_TEMPLATES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, *range(9, 29), *range(36, 44))
VAL_TEMPLATES: tuple[int, ...] = (6, 29, 30, 31)
TEST_TEMPLATES: tuple[int, ...] = (7, 8, 32, 33, 34, 35)
# The phrasings the image model, the caption bank and the translator are trained on (every scene x these x both
# size words): the first six training templates keep the bank small; the adapters see all of TRAIN_TEMPLATES.
IMAGE_TEMPLATES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
# The bundled example prompts (examples/) were spoken from these test templates.
EXAMPLE_TEMPLATES: tuple[int, ...] = (7, 8)
