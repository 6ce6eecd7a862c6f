"""Pair a caption cache with an audio cache by clip id, once, as index arrays (no per-batch Python work)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fusion.cache import Latents
from fusion.errors import FusemixError

logger = logging.getLogger(__name__)


@dataclass
class Pairing:
    """Caption rows grouped by clip: clip ``c`` owns caption rows ``caption_order[starts[c]:starts[c] + counts[c]]``.

    ``audio_rows[c]`` is the audio cache row of clip ``c`` and ``caption_clip[j]`` the clip (0..num_clips-1) of
    caption row ``caption_rows[j]``. Clips are those audio rows that have at least one caption.
    """

    audio_rows: np.ndarray  # (num_clips,) rows of the audio cache
    caption_rows: np.ndarray  # (num_captions,) rows of the text cache, grouped by clip
    caption_clip: np.ndarray  # (num_captions,) clip index 0..num_clips-1 of each caption in caption_rows
    starts: np.ndarray  # (num_clips,) first position in caption_rows of each clip
    counts: np.ndarray  # (num_clips,) captions per clip

    @property
    def num_clips(self) -> int:
        return len(self.audio_rows)

    @property
    def num_captions(self) -> int:
        return len(self.caption_rows)

    def sample_captions(self, rng: np.random.Generator | None = None, u: np.ndarray | None = None) -> np.ndarray:
        """One caption row (of the text cache) per clip, drawn uniformly; ``u`` in [0, 1) may be given instead."""
        if u is None:
            u = rng.random(self.num_clips)
        pick = self.starts + np.minimum((u * self.counts).astype(np.int64), self.counts - 1)
        return self.caption_rows[pick]


def pair_by_clip(audio: Latents, text: Latents, audio_name: str = "audio", text_name: str = "text") -> Pairing:
    """Match each caption to the audio row of its clip; clear errors when the caches do not belong together."""
    audio_ids = np.asarray(audio.ids, dtype=object).astype(str)
    if len(set(audio.ids)) != len(audio.ids):
        raise FusemixError(f"{audio_name} latents: clip ids repeat; expected one row per clip")
    if len(text) == 0 or len(audio) == 0:
        raise FusemixError(f"empty latent cache: {audio_name} has {len(audio)} rows, {text_name} {len(text)}")
    text_clips = np.asarray(text.clip_ids, dtype=object).astype(str)
    sorter = np.argsort(audio_ids, kind="stable")
    sorted_ids = audio_ids[sorter]
    pos = np.clip(np.searchsorted(sorted_ids, text_clips), 0, len(sorted_ids) - 1)
    found = sorted_ids[pos] == text_clips
    if not found.all():
        missing = sorted(set(text_clips[~found].tolist()))
        raise FusemixError(
            f"{int((~found).sum())} captions in {text_name} belong to {len(missing)} clips absent from {audio_name} "
            f"(e.g. {missing[:3]}): the caches do not match"
        )
    audio_row_of_caption = sorter[pos]
    used, clip_of_caption = np.unique(audio_row_of_caption, return_inverse=True)
    if len(used) < len(audio_ids):
        logger.warning(
            "%d of %d clips in %s have no caption and are left out",
            len(audio_ids) - len(used),
            len(audio_ids),
            audio_name,
        )
    order = np.argsort(clip_of_caption, kind="stable")
    counts = np.bincount(clip_of_caption, minlength=len(used))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return Pairing(
        audio_rows=used, caption_rows=order, caption_clip=clip_of_caption[order], starts=starts, counts=counts
    )
