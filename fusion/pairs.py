"""Pair a caption cache with an audio cache by clip id, once, as index arrays (no per-batch Python work).

An audio cache holds one row per clip, and with ``fusemix extract --augment K`` also K rows of augmented views per
clip (id ``<clip id>#aug<k>``, clip id the clip's). A clip's own row is the one evaluation uses; training draws
one of its rows (own or view) per epoch with ``Pairing.sample_audio``.
"""

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

    ``audio_rows[c]`` is the audio cache row of clip ``c`` (its own, clean row) and ``caption_clip[j]`` the clip
    (0..num_clips-1) of caption row ``caption_rows[j]``. Clips are those audio rows that have at least one caption.
    With augmented views in the audio cache, clip ``c`` owns audio rows
    ``view_rows[view_starts[c]:view_starts[c] + view_counts[c]]``, its own row first; without, these are None.
    """

    audio_rows: np.ndarray  # (num_clips,) rows of the audio cache
    caption_rows: np.ndarray  # (num_captions,) rows of the text cache, grouped by clip
    caption_clip: np.ndarray  # (num_captions,) clip index 0..num_clips-1 of each caption in caption_rows
    starts: np.ndarray  # (num_clips,) first position in caption_rows of each clip
    counts: np.ndarray  # (num_clips,) captions per clip
    view_rows: np.ndarray | None = None  # (num_audio_rows,) audio cache rows grouped by clip, own row first
    view_starts: np.ndarray | None = None  # (num_clips,) first position in view_rows of each clip
    view_counts: np.ndarray | None = None  # (num_clips,) audio rows per clip (1 + its views)

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

    @property
    def has_views(self) -> bool:
        return self.view_rows is not None

    def sample_audio(self, rng: np.random.Generator | None = None, u: np.ndarray | None = None) -> np.ndarray:
        """One audio row per clip, drawn uniformly among its own row and its views; its own row if it has none.

        Without views nothing is drawn (``rng`` is left untouched) and ``audio_rows`` comes back as it is.
        """
        if not self.has_views:
            return self.audio_rows
        if u is None:
            u = rng.random(self.num_clips)
        pick = self.view_starts + np.minimum((u * self.view_counts).astype(np.int64), self.view_counts - 1)
        return self.view_rows[pick]

    def views_of(self, clips: np.ndarray) -> dict:
        """The view fields of the pairing restricted to ``clips`` (in that order), as keyword arguments of
        ``Pairing``; empty without views."""
        if not self.has_views:
            return {}
        positions, starts, counts = regroup(self.view_starts, self.view_counts, clips)
        return {"view_rows": self.view_rows[positions], "view_starts": starts, "view_counts": counts}


def regroup(starts: np.ndarray, counts: np.ndarray, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by clip (``starts``/``counts``) restricted to ``clips`` in that order: the positions of the kept
    rows, and the new groups' starts and counts."""
    counts = counts[clips]
    new_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    positions = np.repeat(starts[clips] - new_starts, counts) + np.arange(int(counts.sum()))
    return positions, new_starts, counts


def pair_by_clip(audio: Latents, text: Latents, audio_name: str = "audio", text_name: str = "text") -> Pairing:
    """Match each caption to the audio row of its clip; clear errors when the caches do not belong together.

    Rows of augmented views (``<clip id>#aug<k>``) are grouped under their clip's own row (``Pairing.view_rows``).
    """
    if len(set(audio.ids)) != len(audio.ids):
        raise FusemixError(f"{audio_name} latents: clip ids repeat; expected one row per clip")
    if len(text) == 0 or len(audio) == 0:
        raise FusemixError(f"empty latent cache: {audio_name} has {len(audio)} rows, {text_name} {len(text)}")
    is_view = _view_mask(audio)
    own = np.flatnonzero(~is_view)  # each clip's own row
    audio_ids = np.asarray(audio.ids, dtype=object)[own].astype(str)
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
    pairing = Pairing(
        audio_rows=own[used], caption_rows=order, caption_clip=clip_of_caption[order], starts=starts, counts=counts
    )
    if is_view.any():
        views = _group_views(audio, is_view, own, pairing, audio_name)
        pairing.view_rows, pairing.view_starts, pairing.view_counts = views
    return pairing


def _view_mask(audio: Latents) -> np.ndarray:
    """Rows that are augmented views: id ``<clip id>#aug<k>`` with k >= 1 and that clip id recorded."""

    def is_view(row_id: str, clip_id: str) -> bool:
        suffix = row_id[len(clip_id) + 4 :]
        return row_id.startswith(f"{clip_id}#aug") and suffix.isdigit() and int(suffix) >= 1

    return np.fromiter(
        (is_view(str(i), str(c)) for i, c in zip(audio.ids, audio.clip_ids, strict=True)), bool, len(audio.ids)
    )


def _group_views(
    audio: Latents, is_view: np.ndarray, own: np.ndarray, pairing: Pairing, audio_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every audio row of each paired clip, its own row first then its views in cache order."""
    views = np.flatnonzero(is_view)
    view_clip_ids = np.asarray(audio.clip_ids, dtype=object)[views].astype(str)
    own_ids = set(np.asarray(audio.ids, dtype=object)[own].astype(str).tolist())
    orphans = sorted(set(view_clip_ids.tolist()) - own_ids)
    if orphans:
        raise FusemixError(
            f"{audio_name} latents: augmented views of {len(orphans)} clips without their own row "
            f"(e.g. {orphans[:3]}); re-extract the cache"
        )
    clip_ids = np.asarray(audio.ids, dtype=object)[pairing.audio_rows].astype(str)
    sorter = np.argsort(clip_ids, kind="stable")
    pos = np.clip(np.searchsorted(clip_ids[sorter], view_clip_ids), 0, len(clip_ids) - 1)
    paired = clip_ids[sorter][pos] == view_clip_ids  # views of clips left out (no caption) are left out too
    clip_of_row = np.concatenate([np.arange(pairing.num_clips), sorter[pos][paired]])
    rows = np.concatenate([pairing.audio_rows, views[paired]])
    order = np.lexsort((rows, clip_of_row))  # by clip, then by row: the own row comes before its views
    counts = np.bincount(clip_of_row, minlength=pairing.num_clips)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return rows[order], starts, counts
