"""A stand-in with the interface of ``generator.audio_to_image.AudioToImagePipeline`` for fast tests of its callers.

It really decodes each clip with ``fusion.audio.load_audio`` (so bad files fail the way they do in the real
pipeline: ``AudioError`` naming the file), and draws images whose pixels depend on the audio and the seed.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fusion.audio import load_audio
from fusion.errors import InputError

CAPTIONS = ["a red circle on blue", "a small green square on white", "a large black cross on yellow"]


@dataclass
class FakeOutput:
    images: list[list[Image.Image]]
    heard: list[list[tuple[str, float]]]
    prompts: list[str | None]
    timings: dict[str, float]
    seeds: list[int]
    mode: str


class FakeAudioToImagePipeline:
    sample_rate = 16000
    max_seconds = 30.0

    def __init__(self, size: int = 32, default_mode: str = "translate"):
        self.size, self.default_mode = size, default_mode
        self.calls: list[dict] = []

    @classmethod
    def from_preset(cls, preset: str = "demo", device: str = "cpu") -> FakeAudioToImagePipeline:
        return cls()

    def __call__(
        self,
        audio,
        *,
        mode=None,
        text=None,
        text_weight=0.0,
        num_inference_steps=20,
        guidance_scale=3.0,
        num_images_per_audio=1,
        seed=None,
        top_k=5,
        progress=False,
    ) -> FakeOutput:
        mode = self.default_mode if mode is None else mode  # the preset's default, as the real pipeline does
        if mode not in ("translate", "retrieve"):
            raise InputError(f"mode must be 'translate' or 'retrieve', got {mode!r}")
        if not 0.0 <= text_weight <= 1.0:
            raise InputError(f"text_weight must be in [0, 1], got {text_weight}")
        self.calls.append({"audio": list(audio), "seed": seed, "mode": mode, "text": text, "n": num_images_per_audio})
        start = time.perf_counter()
        waves = [a if isinstance(a, np.ndarray) else load_audio(a, self.sample_rate, self.max_seconds) for a in audio]
        if seed is None:  # one seed per clip, or one int for all, as AudioToImagePipeline.resolve_seeds
            seeds = [int(s) for s in np.random.default_rng().integers(2**31, size=len(waves))]
        else:
            seeds = [int(seed)] * len(waves) if isinstance(seed, int) else [int(s) for s in seed]
        images, heard = [], []
        for wave, clip_seed in zip(waves, seeds, strict=True):
            rng = np.random.default_rng([clip_seed, int(abs(wave).sum() * 1000) % 2**31])
            images.append(
                [
                    Image.fromarray(rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8))
                    for _ in range(num_images_per_audio)
                ]
            )
            scores = np.sort(rng.random(len(CAPTIONS)))[::-1]
            heard.append([(c, float(s)) for c, s in zip(CAPTIONS, scores, strict=True)][:top_k])
        prompts = [h[0][0] if mode == "retrieve" else None for h in heard]
        total = time.perf_counter() - start
        timings = {"load_audio": total, "encode": 0.0, "translate": 0.0, "diffusion": 0.0, "total": total}
        return FakeOutput(images, heard, prompts, timings, seeds, mode)


def upscale(image: Image.Image, size: int = 256) -> Image.Image:
    factor = max(1, size // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def install_if_missing(monkeypatch) -> bool:
    """For one test, stand in for ``generator.audio_to_image`` when the real one is not there; True if it did."""
    try:
        import generator.audio_to_image  # noqa: F401
    except ImportError:
        module = types.ModuleType("generator.audio_to_image")
        module.AudioToImagePipeline = FakeAudioToImagePipeline
        module.AudioToImageOutput = FakeOutput
        module.upscale = upscale
        monkeypatch.setitem(sys.modules, "generator.audio_to_image", module)
        return True
    return False


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
