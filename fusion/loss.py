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
    """

    def forward(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        all_audio: torch.Tensor | None = None,
        all_text: torch.Tensor | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        labels = torch.arange(len(audio), device=audio.device) + offset
        if all_audio is None and all_text is None:
            # one process: text->audio logits are the transpose of audio->text ones; one matmul instead of two
            # (and two fewer in backward): a third of a large batch's loss arithmetic
            logits_a2t = logit_scale * audio.float() @ text.float().T
            return 0.5 * (F.cross_entropy(logits_a2t, labels) + F.cross_entropy(logits_a2t.T, labels))
        all_audio = audio if all_audio is None else all_audio
        all_text = text if all_text is None else all_text
        logits_a2t = logit_scale * audio.float() @ all_text.float().T
        logits_t2a = logit_scale * text.float() @ all_audio.float().T
        return 0.5 * (F.cross_entropy(logits_a2t, labels) + F.cross_entropy(logits_t2a, labels))
