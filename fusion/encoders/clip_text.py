"""CLIP text encoders: any `openai/clip-vit-*` id, any folder whose config is CLIP, or a diffusers pipeline folder.

Pooled latent: CLIP's projected text embedding (`text_embeds`); a text tower saved without its projection (as in
Stable Diffusion pipelines) gives its pooled output instead. Token latents follow the Stable Diffusion convention: the
prompt is padded to K tokens with the tokenizer's pad token and all K hidden states are kept, because that is what
an SD UNet was trained to read (its pad positions are not zeros).
"""

from __future__ import annotations

import numpy as np

from fusion.encoders.base import check_texts, check_tokens, l2_normalize
from fusion.encoders.hub import from_pretrained, from_pretrained_strict, local_folder, read_config
from fusion.errors import InputError


class ClipTextEncoder:
    """CLIP's text tower."""

    modality = "text"
    sample_rate = None
    batch_size = 64

    def __init__(self, name: str, device: str = "cpu") -> None:
        import torch
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        self.name = name
        self.torch = torch
        self.device = device
        folder = local_folder(name)
        sub = {}
        if folder is not None and (folder / "model_index.json").is_file():
            sub = {"subfolder": "text_encoder"}
            config = read_config(str(folder / "text_encoder"))
            self.tokenizer = from_pretrained(AutoTokenizer, name, subfolder="tokenizer")
        else:
            config = read_config(name)
            self.tokenizer = from_pretrained(AutoTokenizer, name)
        archs = config.get("architectures") or []
        projected = config.get("model_type") == "clip" or any("WithProjection" in a for a in archs)
        cls = CLIPTextModelWithProjection if projected else CLIPTextModel
        self.model = from_pretrained_strict(cls, name, **sub).to(device).eval()
        self.projected = projected
        text_config = self.model.config
        self.pooling = "eos+projection+l2" if projected else "eos+l2"
        self.dim = int(text_config.projection_dim if projected else text_config.hidden_size)
        self.token_dim = int(text_config.hidden_size)
        self.max_length = int(min(text_config.max_position_embeddings, self.tokenizer.model_max_length or 77))

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        """(B, dim) unit-norm text embeddings, or (B, tokens, token_dim) hidden states of the prompt padded to K."""
        check_tokens(tokens)
        if tokens is not None and tokens > self.max_length:
            raise InputError(f"{self.name}: tokens must be at most {self.max_length} for CLIP, got {tokens}")
        texts = check_texts(batch, self.name)
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                if tokens is None:
                    enc = self.tokenizer(
                        chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                    )
                else:
                    enc = self.tokenizer(
                        chunk, padding="max_length", truncation=True, max_length=tokens, return_tensors="pt"
                    )
                result = self.model(input_ids=enc["input_ids"].to(self.device))
                if tokens is not None:
                    out.append(result.last_hidden_state.float().cpu().numpy())
                    continue
                pooled = result.text_embeds if self.projected else result.pooler_output
                out.append(l2_normalize(pooled.float().cpu().numpy()))
        if not out:
            shape = (0, self.dim) if tokens is None else (0, tokens, self.token_dim)
            return np.zeros(shape, np.float32)
        return np.concatenate(out).astype(np.float32)


def load_clip_text(name: str, device: str = "cpu") -> ClipTextEncoder:
    """A CLIP text tower by hub id, folder, or diffusers pipeline folder."""
    return ClipTextEncoder(name, device=device)
