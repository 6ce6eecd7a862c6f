"""Conditioning distillation: train the translator against the frozen image model's own denoiser.

MSE to the token states treats every dimension alike, and the small part that tells colours apart gets lost.
Here the image model judges instead: an image of caption ``c`` is noised to ``x_t`` at a random timestep of the
model's own noise schedule, and the denoiser's prediction under the translator's conditioning is pulled toward
its prediction under ``e(c)``, the model's own encoding of ``c`` (the teacher, under ``no_grad``). The denoiser
is frozen (``requires_grad`` off, eval mode): gradients reach only the translator.

Images of a caption (``distill_images``):
- ``render``: the demo world's scene of the caption (``demoworld.scenes.parse_caption``), freshly jittered each
  step, in [-1, 1] pixels (demo) or VAE latents (stable-diffusion);
- ``generate``: drawn once by the image model itself from ``e(c)`` (seeded per caption, so a resumed run draws
  the same images), in the space its denoiser works in (pixels for demo, latents for SD);
- ``auto``: ``render`` for the demo kind, ``generate`` for stable-diffusion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from demoworld import scenes
from fusion.errors import FusemixError, InputError
from fusion.training import torch_generator

logger = logging.getLogger(__name__)

OBJECTIVES = ("mse", "distill", "both")  # MSE to e(c); distillation through the denoiser; MSE + weight x distill
DISTILL_IMAGES = ("auto", "render", "generate")
EVAL_ROWS = 64  # captions in the fixed check of the distillation error (start and end of a run)


@dataclass
class Denoiser:
    """The frozen parts of an image model that distillation runs: UNet, training noise schedule, VAE (SD)."""

    kind: str
    pipe: object  # the loaded pipeline (draws the ``generate`` images)
    unet: torch.nn.Module
    noise_schedule: object  # diffusers DDPMScheduler with the model's own betas and prediction type
    vae: torch.nn.Module | None  # None: the denoiser works on pixels
    resolution: int  # side of the images in pixels
    device: str


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: the image model is the judge, never trained here."""
    module.requires_grad_(False)
    return module.eval()


def load_denoiser(kind: str, image_model: str | None, device: str = "cpu") -> Denoiser:
    """The image model of this kind (demo: ``image_model`` or the shipped one), frozen."""
    from diffusers import DDPMScheduler

    from generator.audio_to_image import load_pipeline
    from generator.presets import CHECKPOINTS

    if kind == "demo":
        pipe = load_pipeline(kind, image_model or CHECKPOINTS / "demo" / "image_model", device)
        vae, resolution = None, int(pipe.unet.config.sample_size)
    else:
        pipe = load_pipeline(kind, image_model, device)
        vae = freeze(pipe.vae)
        resolution = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)  # training schedule: same betas and prediction
    return Denoiser(kind, pipe, freeze(pipe.unet), schedule, vae, resolution, device)


def caption_combos(texts: list[str]) -> np.ndarray:
    """The demo world's attribute combination of each caption; one clear line for a caption naming no scene."""
    index = {combo: i for i, combo in enumerate(scenes.all_attribute_combinations())}
    out = []
    for text in texts:
        found = scenes.parse_caption(text)
        combo = tuple(found.get(k) for k in ("shape", "colour", "size", "background"))
        if combo not in index:
            raise InputError(
                f"--distill-images render: caption {text!r} names no demo-world scene (found {found}); "
                "use --distill-images generate"
            )
        out.append(index[combo])
    return np.asarray(out)


@torch.no_grad()
def draw_images(
    den: Denoiser, targets: torch.Tensor, negative: torch.Tensor, seed: int, steps: int, batch_size: int = 16
) -> torch.Tensor:
    """Each caption drawn once by the image model from its own encoding, in the denoiser's input space."""
    out = []
    for i in range(0, len(targets), batch_size):
        cond = targets[i : i + batch_size].to(den.device)
        gens = [torch_generator(seed, "distill-image", i + j) for j in range(len(cond))]
        neg = negative.to(den.device).expand(len(cond), -1, -1)
        images = den.pipe(
            prompt_embeds=cond, negative_prompt_embeds=neg, num_inference_steps=steps, generator=gens,
            output_type="np" if den.vae is None else "latent",  # pixels for demo, latents for SD
        ).images  # fmt: skip
        if den.vae is None:
            out.append(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
        else:
            out.append(images.float().cpu())
    return torch.cat(out)


class Distiller:
    """The distillation loss for one run: frozen denoiser, the teacher conditions and the images of each caption."""

    def __init__(self, den: Denoiser, targets: torch.Tensor, combos: np.ndarray | None, cached: torch.Tensor | None):
        self.den, self.targets, self.combos, self.cached = den, targets, combos, cached

    def images(self, captions: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Clean images (x_0) of the given caption indices, in the denoiser's input space."""
        if self.cached is not None:
            return self.cached[captions].to(self.den.device)
        from generator.train_image_model import render_batch

        x = render_batch(self.combos[captions.numpy()], rng, self.den.resolution).to(self.den.device)
        if self.den.vae is None:
            return x
        with torch.no_grad():
            return self.den.vae.encode(x).latent_dist.mode() * self.den.vae.config.scaling_factor

    def loss(self, cond: torch.Tensor, captions: torch.Tensor, gen: torch.Generator, rng: np.random.Generator):
        """Mean squared distance of the denoiser's predictions under ``cond`` and under the captions' own encoding,
        at timesteps and noise drawn from ``gen`` (render jitter from ``rng``)."""
        x0 = self.images(captions, rng)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        steps = self.den.noise_schedule.config.num_train_timesteps
        t = torch.randint(0, steps, (len(x0),), generator=gen).to(x0.device)
        x_t = self.den.noise_schedule.add_noise(x0, noise, t)
        unet = self.den.unet
        with torch.no_grad():
            teacher = unet(x_t, t, encoder_hidden_states=self.targets[captions].to(x0.device)).sample
        student = unet(x_t, t, encoder_hidden_states=cond.to(x0.device)).sample
        return F.mse_loss(student.float(), teacher.float())

    @torch.no_grad()
    def error(self, model: torch.nn.Module, points: torch.Tensor, seed: int) -> float:
        """The loss of ``model`` (eval mode) on a fixed draw of up to ``EVAL_ROWS`` captions: comparable across runs."""
        gen = torch_generator(seed, "distill-eval")
        n = min(EVAL_ROWS, len(points))
        captions = torch.randperm(len(points), generator=gen)[:n]
        was = model.training
        model.eval()
        value = self.loss(model(points[captions]), captions, gen, np.random.default_rng(0)).item()
        model.train(was)
        return value


def build_distiller(
    kind: str, image_model: str | None, mode: str, texts: list[str], targets: torch.Tensor, negative: torch.Tensor,
    seed: int, steps: int, device: str = "cpu", cached: torch.Tensor | None = None,
) -> Distiller:  # fmt: skip
    """Load the frozen image model, check it takes the targets' conditioning, and prepare each caption's images.

    ``cached``: images a previous run of the same configuration drew (``generate``), reused instead of drawing.
    """
    if mode not in DISTILL_IMAGES:
        raise ValueError(f"distill_images must be one of {DISTILL_IMAGES}, got {mode!r}")
    den = load_denoiser(kind, image_model, device)
    want = int(den.unet.config.cross_attention_dim)
    if targets.shape[-1] != want:
        raise FusemixError(
            f"{image_model_name(kind, image_model)}: its UNet takes conditioning of dim {want}, its text encoding "
            f"gives {targets.shape[-1]}: the image model and its text encoder do not belong together"
        )
    if mode == "auto":
        mode = "render" if kind == "demo" else "generate"
    if mode == "render":
        return Distiller(den, targets, caption_combos(texts), None)
    if cached is None or len(cached) != len(texts):
        logger.info("drawing %d caption images with the image model (%d steps each)", len(texts), steps)
        cached = draw_images(den, targets, negative, seed, steps)
    return Distiller(den, targets, None, cached)


def image_model_name(kind: str, image_model: str | Path | None) -> str:
    """How messages name the image model."""
    return str(image_model) if image_model else f"the shipped {kind} image model"
