"""Symmetric InfoNCE over cosine similarities with a learnable logit scale (CLIP's loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """Mean of audio->text and text->audio cross-entropy; row i of each side is the positive of row i.

    Under data parallelism pass ``all_text``/``all_audio`` (features gathered from every process with gradient)
    and ``offset`` (index of this process's first row in the gathered batch): each process then scores its own
    rows against the whole global batch, and averaging the per-process losses gives the global-batch loss.

    ``logits_dtype``: dtype of the logits matmul (bfloat16 under ``--bf16``, as open_clip runs it under autocast);
    the scale and the softmax cross-entropy stay float32.

    ``hard_text`` (B, M, D) and ``hard_mask`` (B, M) bool: hard negatives of each row's audio (NegCLIP; e.g. its
    caption with two colours swapped, ``fusion.hard_negatives``). Row i of the audio->text logits gains M columns
    ``scale * a_i . h_im`` (-inf where the mask is False); text->audio is unchanged. Under data parallelism each
    process passes its own rows' negatives: nothing to gather. Without them the loss is exactly the plain one.
    """

    def __init__(self, logits_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.logits_dtype = logits_dtype

    def _logits(self, scale: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        dtype = self.logits_dtype
        return scale * (rows.to(dtype) @ columns.to(dtype).T).float()

    def forward(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        all_audio: torch.Tensor | None = None,
        all_text: torch.Tensor | None = None,
        offset: int = 0,
        hard_text: torch.Tensor | None = None,
        hard_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        labels = torch.arange(len(audio), device=audio.device) + offset
        if all_audio is None and all_text is None:
            # one process: text->audio logits are the transpose of audio->text ones; one matmul instead of two
            # (and two fewer in backward): a third of a large batch's loss arithmetic
            logits_a2t = self._logits(logit_scale, audio, text)
            a2t = self._with_hard(logits_a2t, logit_scale, audio, hard_text, hard_mask)
            return 0.5 * (F.cross_entropy(a2t, labels) + F.cross_entropy(logits_a2t.T, labels))
        all_audio = audio if all_audio is None else all_audio
        all_text = text if all_text is None else all_text
        logits_a2t = self._logits(logit_scale, audio, all_text)
        logits_t2a = self._logits(logit_scale, text, all_audio)
        logits_a2t = self._with_hard(logits_a2t, logit_scale, audio, hard_text, hard_mask)
        return 0.5 * (F.cross_entropy(logits_a2t, labels) + F.cross_entropy(logits_t2a, labels))

    def _with_hard(
        self,
        logits: torch.Tensor,
        scale: torch.Tensor,
        audio: torch.Tensor,
        hard_text: torch.Tensor | None,
        hard_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Audio->text logits (B, N) with M columns more per row: row i's own hard negatives (-inf where missing)."""
        if hard_text is None or hard_text.shape[1] == 0:
            return logits
        if hard_text.shape[:1] != audio.shape[:1] or (hard_mask is not None and hard_mask.shape != hard_text.shape[:2]):
            raise ValueError(f"hard_text {tuple(hard_text.shape)} / hard_mask must be (B={len(audio)}, M[, D])")
        dtype = self.logits_dtype
        hard = scale * torch.einsum("bd,bmd->bm", audio.to(dtype), hard_text.to(dtype)).float()
        if hard_mask is not None:
            hard = hard.masked_fill(~hard_mask, float("-inf"))
        return torch.cat([logits, hard], dim=1)
