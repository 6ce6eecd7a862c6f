"""The image model's own text encoding: the targets a translator learns to produce.

``demo``: MiniLM token states (B, 16, 384). ``stable-diffusion``: the pipeline's CLIP ``prompt_embeds``
(B, 77, dim), exactly what its ``encode_prompt`` gives without clip-skip.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fusion.errors import ModelUnavailableError

KINDS = ("demo", "stable-diffusion")


def image_text_encoder(kind: str, image_model: str | Path | None = None, device: str = "cpu"):
    """A callable ``texts -> (B, tokens, dim)`` tensor for the image model of this kind."""
    if kind == "demo":
        from generator.conditioning import TokenStateEncoder

        return TokenStateEncoder(device=device)
    if kind != "stable-diffusion":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(image_model), subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(str(image_model), subfolder="text_encoder", use_safetensors=True)
        encoder = encoder.to(device).eval()
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"cannot load the text encoder of {image_model!r}: the machine is offline or the id is unknown "
            "(download the pipeline where there is a network and pass its folder)"
        ) from err

    max_length = min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))

    @torch.no_grad()
    def encode(texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            ids = tokenizer(
                texts[i : i + batch_size],
                padding="max_length",
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).input_ids.to(device)
            out.append(encoder(ids).last_hidden_state.float())
        return torch.cat(out)

    return encode
