"""Audio -> image: audio encoder -> FuseMix audio adapter -> shared space -> translator -> stock image pipeline.

    pipe = AudioToImagePipeline.from_preset("demo")
    out = pipe(["examples/large_red_circle_on_blue.ogg"], seed=0)
    out.images[0][0].save("red.png"); print(out.heard[0][:3])

Modes: ``translate`` (default) feeds the translator's ``prompt_embeds`` to the image pipeline; ``retrieve`` uses
the nearest caption of the caption bank as a text prompt (the baseline). Either way ``heard`` lists the nearest
captions with cosine scores. An optional text prompt is mixed with the audio in the shared space.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fusion.adapters import FuseMixAdapters
from fusion.audio import load_audio
from fusion.encoders import load_encoder
from fusion.errors import ModelUnavailableError
from generator.caption_bank import load_caption_bank, nearest
from generator.presets import MODES, Preset, load_preset
from generator.translator import Translator

logger = logging.getLogger(__name__)


@dataclass
class AudioToImageOutput:
    images: list[list[Image.Image]]  # per clip: num_images_per_audio images
    heard: list[list[tuple[str, float]]]  # per clip: nearest captions with cosine scores, best first
    prompts: list[str | None]  # per clip: the caption used as prompt in retrieve mode, else None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage and "total"
    seeds: list[int] = field(default_factory=list)  # per clip: image j of clip i is drawn with seed seeds[i] + j
    mode: str = "translate"  # the mode used (the preset's default when none was asked for)


def upscale(image: Image.Image, size: int = 256) -> Image.Image:
    """Nearest-neighbour upscale of a small output, for viewing."""
    return image if image.width >= size else image.resize((size, size), Image.Resampling.NEAREST)


def load_image_pipeline(preset: Preset, device: str):
    """The stock diffusers pipeline named by the preset (demo pipeline folder or any SD-family id/folder)."""
    if preset.kind == "demo":
        from generator.demo_pipeline import load_demo_pipeline

        return load_demo_pipeline(preset.image_model, device=device)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(preset.image_model)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"cannot load image model {preset.image_model!r}: the machine is offline or the id is unknown "
            "(download it where there is a network and give its folder in preset.json)"
        ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class AudioToImagePipeline:
    """All parts of one preset, loaded once; call it with audio files or waveforms."""

    def __init__(self, preset: Preset, device: str = "cpu"):
        self.preset = preset
        self.device = device
        self.audio_encoder = load_encoder(preset.audio_encoder, device=device)
        self.text_encoder = load_encoder(preset.text_encoder, device=device)
        self.adapters = FuseMixAdapters.from_pretrained(preset.adapters).to(device).eval()
        self.translator = Translator.from_pretrained(preset.translator).to(device).eval()
        if self.translator.config.in_dim != self.adapters.shared_dim:
            raise ModelUnavailableError(
                f"translator {preset.translator} takes dim {self.translator.config.in_dim} but adapters "
                f"{preset.adapters} give {self.adapters.shared_dim}"
            )
        self.image_pipe = load_image_pipeline(preset, device)
        self.sample_rate = int(self.audio_encoder.sample_rate)
        self.max_seconds = 30.0
        self.audio_tokens = self.adapters.tokens_for("audio")  # K for a sparse adapter, None for mlp
        self.text_tokens = self.adapters.tokens_for("text")
        self.bank_captions: list[str] = []
        self.bank = torch.zeros(0, self.adapters.shared_dim)
        if preset.caption_bank:
            self.bank_captions, points = load_caption_bank(preset.caption_bank)
            if points.shape[1] != self.adapters.shared_dim:
                raise ModelUnavailableError(
                    f"caption bank {preset.caption_bank} holds points of dim {points.shape[1]} but adapters "
                    f"{preset.adapters} map into dim {self.adapters.shared_dim}: rebuild the bank with these adapters"
                )
            self.bank = points.to(device)

    @classmethod
    def from_preset(cls, preset: str = "demo", device: str = "cpu") -> AudioToImagePipeline:
        return cls(load_preset(preset), device=device)

    def check_inputs(
        self,
        audio,
        mode: str,
        text: str | None,
        text_weight: float,
        num_inference_steps: int,
        num_images_per_audio: int,
        top_k: int,
    ) -> None:
        if isinstance(audio, (str, Path, np.ndarray)):
            raise ValueError("audio must be a list of files or waveforms, got a single item")
        if not audio:
            raise ValueError("audio is empty: give at least one clip")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= text_weight <= 1.0:
            raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
        if text_weight > 0 and not (text and text.strip()):
            raise ValueError("text_weight > 0 needs a text prompt")
        if num_inference_steps < 1 or num_images_per_audio < 1 or top_k < 1:
            raise ValueError("num_inference_steps, num_images_per_audio and top_k must be >= 1")
        if mode == "retrieve" and not self.bank_captions:
            raise ValueError("retrieve mode needs a caption bank in the preset")

    @torch.no_grad()
    def embed_audio(self, waves: list[np.ndarray]) -> torch.Tensor:
        """Waveforms -> L2-normalised points of the shared space."""
        latents = torch.from_numpy(self.audio_encoder.encode(waves, tokens=self.audio_tokens)).to(self.device)
        return self.adapters.encode({"audio": latents})["audio"]

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        latents = torch.from_numpy(self.text_encoder.encode(texts, tokens=self.text_tokens)).to(self.device)
        return self.adapters.encode({"text": latents})["text"]

    @torch.no_grad()
    def __call__(
        self,
        audio: list[str | Path | np.ndarray],
        *,
        mode: str | None = None,
        text: str | None = None,
        text_weight: float = 0.0,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_audio: int = 1,
        seed: int | None = None,
        top_k: int = 5,
        progress: bool = False,
    ) -> AudioToImageOutput:
        mode = self.preset.mode if mode is None else mode
        steps = self.preset.steps if num_inference_steps is None else num_inference_steps
        guidance = self.preset.guidance if guidance_scale is None else guidance_scale
        # 1. check inputs
        self.check_inputs(audio, mode, text, text_weight, steps, num_images_per_audio, top_k)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        # 2. load audio
        waves = [
            a.astype(np.float32) if isinstance(a, np.ndarray) else load_audio(a, self.sample_rate, self.max_seconds)
            for a in audio
        ]
        timings["load_audio"] = time.perf_counter() - t0

        # 3. audio -> shared space (mixed with the text prompt if any)
        t = time.perf_counter()
        points = self.embed_audio(waves)
        if text_weight > 0:
            points = torch.nn.functional.normalize(
                (1 - text_weight) * points + text_weight * self.embed_text([text]), dim=-1
            )
        heard = nearest(points, self.bank, self.bank_captions, top_k) if self.bank_captions else [[] for _ in waves]
        timings["encode"] = time.perf_counter() - t

        # 4. shared space -> image model conditioning
        t = time.perf_counter()
        n = len(waves)
        if mode == "translate":
            cond = {
                "prompt_embeds": self.translator(points),
                "negative_prompt_embeds": self.translator.negative_embeds(n),
            }
            prompts: list[str | None] = [None] * n
        else:
            prompts = [h[0][0] for h in heard]
            cond = {"prompt": prompts}
        timings["translate"] = time.perf_counter() - t

        # 5. denoise with the stock pipeline; image j of clip i is drawn with seed seeds[i] + j
        t = time.perf_counter()
        base = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
        seeds = [base + 1000 * i for i in range(n)]
        generators = [torch.Generator().manual_seed(s + j) for s in seeds for j in range(num_images_per_audio)]
        out = self.image_pipe(
            **cond,
            num_inference_steps=steps,
            guidance_scale=guidance,
            num_images_per_prompt=num_images_per_audio,
            generator=generators,
        )
        flat = list(out.images)
        images = [flat[i * num_images_per_audio : (i + 1) * num_images_per_audio] for i in range(n)]
        timings["diffusion"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return AudioToImageOutput(images=images, heard=heard, prompts=prompts, timings=timings, seeds=seeds, mode=mode)
