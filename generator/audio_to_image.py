"""Audio -> image: audio encoder -> FuseMix audio adapter -> shared space -> translator -> stock image pipeline.

    pipe = AudioToImagePipeline.from_preset("demo")
    out = pipe(["examples/large_red_circle_on_blue.ogg"], seed=0)
    out.images[0][0].save("red.png"); print(out.heard[0][:3])

Modes: ``translate`` (default) feeds the translator's ``prompt_embeds`` to the image pipeline; ``retrieve`` uses
the nearest caption of the caption bank as a text prompt (the baseline). Either way ``heard`` lists the nearest
captions with cosine scores. An optional text prompt is mixed with the audio in the shared space. A preset with
``handoff`` > 0 hands translate mode's clips whose translation lies farther than that from every scene anchor to
retrieve (their ``prompts`` entry names the caption drawn): far off every scene, the nearest caption in S picks the
scene more often than the translator does (README, stop 36).

A call runs public steps that can also be used one by one, e.g. from points of the shared space::

    points = pipe.embed_text(["a red circle on blue"])          # or pipe.embed_audio(pipe.load(files))
    images = pipe.denoise(pipe.condition(points, "translate"), seed=[0], progress=True)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fusion.adapters import FuseMixAdapters
from fusion.audio import load_audio
from fusion.encoders import load_encoder
from fusion.errors import InputError, ModelUnavailableError
from generator.caption_bank import load_caption_bank, nearest
from generator.preset_parts import load_model_part
from generator.presets import MODES, Preset, load_preset
from generator.translator import Translator

logger = logging.getLogger(__name__)


@dataclass
class AudioToImageOutput:
    images: list[list[Image.Image]]  # per clip: num_images_per_audio images
    heard: list[list[tuple[str, float]]]  # per clip: nearest captions with cosine scores, best first
    prompts: list[str | None]  # per clip: the caption used as prompt (retrieve mode, or handed to it), else None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage and "total"
    seeds: list[int] = field(default_factory=list)  # per clip: image j of clip i is drawn with seed seeds[i] + j
    mode: str = "translate"  # the mode used (the preset's default when none was asked for)


@dataclass
class Conditioning:
    """What the image model is conditioned on for some clips, and what each of them "heard"."""

    inputs: dict[str, Any]  # image pipeline arguments: prompt_embeds + negative_prompt_embeds, or prompt
    heard: list[list[tuple[str, float]]]  # per clip: nearest bank captions with cosine scores, best first
    prompts: list[str | None]  # per clip: the text prompt used (retrieve mode, or handed to it: preset handoff)
    mode: str  # "translate" or "retrieve"

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_prompts(cls, prompts: Sequence[str]) -> Conditioning:
        """Plain text prompts through the image model's own text encoder (no audio, no shared space)."""
        prompts = list(prompts)
        return cls({"prompt": prompts}, [[] for _ in prompts], list(prompts), "retrieve")


def upscale(image: Image.Image, size: int = 256) -> Image.Image:
    """Nearest-neighbour upscale of a small output, for viewing."""
    return image if image.width >= size else image.resize((size, size), Image.Resampling.NEAREST)


def load_image_pipeline(preset: Preset, device: str):
    """The stock diffusers pipeline named by the preset (demo pipeline folder or any SD-family id/folder)."""
    return load_pipeline(preset.kind, preset.image_model, device, where="give its folder in preset.json")


def load_pipeline(kind: str, image_model, device: str, where: str = "pass its folder"):
    """A demo pipeline folder or an SD-family id/folder, on ``device``; ``where`` tells an offline user where the
    downloaded folder goes."""
    if kind == "demo":
        from generator.demo_pipeline import load_demo_pipeline

        return load_demo_pipeline(image_model, device=device)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(image_model), use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"cannot load image model {str(image_model)!r}: the machine is offline or the id is unknown "
            f"(download it where there is a network and {where})"
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
        self.adapters = load_model_part(FuseMixAdapters, preset.adapters, "adapters").to(device).eval()
        self.translator = load_model_part(Translator, preset.translator, "translator").to(device).eval()
        if self.translator.config.in_dim != self.adapters.shared_dim:
            raise ModelUnavailableError(
                f"translator {preset.translator} takes dim {self.translator.config.in_dim} but adapters "
                f"{preset.adapters} give {self.adapters.shared_dim}"
            )
        if preset.handoff > 0 and not self.translator.config.anchors:
            raise ModelUnavailableError(
                f"preset handoff {preset.handoff} needs a translator with scene anchors (train-translator --snap); "
                f"{preset.translator} has none"
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
            raise InputError("audio must be a list of files or waveforms, got a single item")
        if not audio:
            raise InputError("audio is empty: give at least one clip")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= text_weight <= 1.0:
            raise InputError(f"text_weight must be in [0, 1], got {text_weight}")
        if text_weight > 0 and not (text and text.strip()):
            raise InputError("text_weight > 0 needs a text prompt")
        if num_inference_steps < 1 or num_images_per_audio < 1 or top_k < 1:
            raise InputError("num_inference_steps, num_images_per_audio and top_k must be >= 1")
        if mode == "retrieve" and not self.bank_captions:
            raise InputError("retrieve mode needs a caption bank in the preset")

    def load(self, audio: Sequence[str | Path | np.ndarray]) -> list[np.ndarray]:
        """Files -> mono float32 waveforms at the audio encoder's rate (waveforms are taken as they are)."""
        return [
            a.astype(np.float32) if isinstance(a, np.ndarray) else load_audio(a, self.sample_rate, self.max_seconds)
            for a in audio
        ]

    @torch.no_grad()
    def embed_audio(self, waves: list[np.ndarray]) -> torch.Tensor:
        """Waveforms -> L2-normalised points of the shared space."""
        latents = torch.from_numpy(self.audio_encoder.encode(waves, tokens=self.audio_tokens)).to(self.device)
        return self.adapters.encode({"audio": latents})["audio"]

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Captions or prompts -> L2-normalised points of the shared space (where they meet the audio)."""
        latents = torch.from_numpy(self.text_encoder.encode(texts, tokens=self.text_tokens)).to(self.device)
        return self.adapters.encode({"text": latents})["text"]

    @torch.no_grad()
    def mix(self, points: torch.Tensor, text: str | None, text_weight: float) -> torch.Tensor:
        """Points moved toward a text prompt in the shared space (weight 0: the points alone, 1: the text alone)."""
        if text_weight <= 0:
            return points
        mixed = (1 - text_weight) * points + text_weight * self.embed_text([text or ""])
        return torch.nn.functional.normalize(mixed, dim=-1)

    @torch.no_grad()
    def condition(self, points: torch.Tensor, mode: str | None = None, top_k: int = 5) -> Conditioning:
        """Points of the shared space -> what the image model is conditioned on, and the captions each "heard".

        ``translate``: the translator's ``prompt_embeds`` (+ its learnt negative embeds); ``retrieve``: the nearest
        caption of the bank becomes a text prompt. Either way ``heard`` lists the ``top_k`` nearest bank captions.
        """
        mode = self.preset.mode if mode is None else mode
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "retrieve" and not self.bank_captions:
            raise InputError("retrieve mode needs a caption bank in the preset")
        n = points.shape[0]
        heard = nearest(points, self.bank, self.bank_captions, top_k) if self.bank_captions else [[] for _ in range(n)]
        if mode == "retrieve":
            prompts: list[str | None] = [h[0][0] for h in heard]
            return Conditioning({"prompt": prompts}, heard, prompts, mode)
        raw = self.translator.translate(points)
        embeds = self.translator.snapped(raw)[0] if self.translator.config.snap > 0 else raw
        negative = self.translator.negative_embeds(n)
        prompts: list[str | None] = [None] * n
        if self.preset.handoff > 0:  # far off every scene: drawn as retrieve mode draws it
            handed = (self.translator.anchor_distance(raw) > self.preset.handoff).nonzero().flatten().tolist()
            if handed:
                embeds, negative = embeds.clone(), negative.clone()
                for i in handed:
                    prompts[i] = heard[i][0][0]
                text = self.prompt_embeds([prompts[i] for i in handed] + [""]).to(embeds.dtype)
                embeds[handed], negative[handed] = text[:-1], text[-1:].expand(len(handed), -1, -1)
        inputs = {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
        return Conditioning(inputs, heard, prompts, mode)

    @torch.no_grad()
    def prompt_embeds(self, texts: list[str]) -> torch.Tensor:
        """The image model's own conditioning of text prompts (what it is given for a prompt in retrieve mode)."""
        if self.preset.kind == "demo":
            return self.image_pipe.encode_prompt(texts)
        return self.image_pipe.encode_prompt(texts, self.device, 1, False)[0]

    @torch.no_grad()
    def denoise(
        self,
        conditioning: Conditioning,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        generator: list[torch.Generator] | None = None,
        num_images_per_audio: int = 1,
        progress: bool = False,
    ) -> list[list[Image.Image]]:
        """Run the stock image pipeline on a conditioning; per clip, ``num_images_per_audio`` images.

        Image j of clip i is drawn with ``seeds[i] + j`` (see ``resolve_seeds``), unless ``generator`` gives one
        ``torch.Generator`` per image (clip-major). ``progress`` shows the pipeline's denoising progress bar.
        """
        n, per = len(conditioning), num_images_per_audio
        if generator is None:
            generator = [torch.Generator().manual_seed(s + j) for s in self.resolve_seeds(seed, n) for j in range(per)]
        if len(generator) != n * per:
            raise InputError(f"generator: need one per image ({n * per}), got {len(generator)}")
        self.image_pipe.set_progress_bar_config(disable=not progress)
        extra = {"progress": progress} if self.preset.kind == "demo" else {}  # the demo pipeline's own switch
        out = self.image_pipe(
            **conditioning.inputs,
            num_inference_steps=self.preset.steps if num_inference_steps is None else num_inference_steps,
            guidance_scale=self.preset.guidance if guidance_scale is None else guidance_scale,
            num_images_per_prompt=per,
            generator=generator,
            **extra,
        )
        flat = list(out.images)
        return [flat[i * per : (i + 1) * per] for i in range(n)]

    @staticmethod
    def resolve_seeds(seed: int | Sequence[int] | None, n: int) -> list[int]:
        """One seed per clip: a list is taken as it is, an int seeds every clip alike, None draws them at random.

        Callers that name their clips derive per-clip seeds with ``generator.records.clip_seed``.
        """
        if seed is None:
            rng = random.SystemRandom()
            return [rng.randrange(2**31) for _ in range(n)]
        if isinstance(seed, (int, np.integer)):
            return [int(seed)] * n
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise InputError(f"seed: need one per clip ({n}), got {len(seeds)}")
        return seeds

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
        seed: int | Sequence[int] | None = None,
        top_k: int = 5,
        progress: bool = False,
    ) -> AudioToImageOutput:
        """Audio files or waveforms -> images; ``seed``: one per clip, or one int for all (see ``resolve_seeds``)."""
        # 1. check inputs; resolve the preset's defaults
        mode = self.preset.mode if mode is None else mode
        steps = self.preset.steps if num_inference_steps is None else num_inference_steps
        guidance = self.preset.guidance if guidance_scale is None else guidance_scale
        self.check_inputs(audio, mode, text, text_weight, steps, num_images_per_audio, top_k)
        seeds = self.resolve_seeds(seed, len(audio))
        timings: dict[str, float] = {}
        start = t = time.perf_counter()

        # 2. load audio
        waves = self.load(audio)
        timings["load_audio"], t = time.perf_counter() - t, time.perf_counter()

        # 3. audio -> shared space, mixed with the text prompt if any
        points = self.mix(self.embed_audio(waves), text, text_weight)
        timings["encode"], t = time.perf_counter() - t, time.perf_counter()

        # 4. shared space -> the image model's conditioning (and what each clip "heard")
        conditioning = self.condition(points, mode, top_k)
        timings["translate"], t = time.perf_counter() - t, time.perf_counter()

        # 5. denoise with the stock pipeline
        images = self.denoise(
            conditioning,
            num_inference_steps=steps,
            guidance_scale=guidance,
            seed=seeds,
            num_images_per_audio=num_images_per_audio,
            progress=progress,
        )
        timings["diffusion"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        return AudioToImageOutput(
            images=images,
            heard=conditioning.heard,
            prompts=conditioning.prompts,
            timings=timings,
            seeds=seeds,
            mode=mode,
        )
