"""Compositional hard negatives (NegCLIP, Yuksekgonul et al., ICLR 2023): captions with two same-class words swapped.

A contrastive model that treats a caption as a bag of words scores "a red circle on a blue background" and "a blue
circle on a red background" alike. Giving each clip's audio the swapped versions of its caption as extra negatives
in the InfoNCE denominator makes the shared space pay for the words' order, i.e. which colour goes with what.
Substitutions (``substitutes``: "big" -> "little") add the caption with one word replaced: for an attribute named
once, whose other value few captions of a batch hold (the demo's size: one scene in 448 differs by size alone).

The flow, all through the ordinary resumable cache::

    fusemix hard-negatives --captions train.jsonl --swap-classes swap_classes.json --out swaps.jsonl
    fusemix extract --encoder all-MiniLM-L6-v2 --manifest swaps.jsonl --out latents/text-swaps
    fusemix train ... --hard-negatives latents/text-swaps

Ids: caption ``k`` of clip ``C`` is ``C#k`` in a text cache (``fusion.extract``); its swapped versions are listed as
clips ``C#k#swap0``, ``C#k#swap1``, ... in the swap manifest, so their cache's ``clip_ids`` name the caption they
come from. The swap-classes file is JSON: ``{"colour": ["red", "green", ...], ...}``, one-word entries, each word
in one class.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.cache import LatentRows, Latents, atomic_write_bytes, open_latents
from fusion.errors import CheckpointError, FusemixError, InputError, MissingFileError
from fusion.manifests import read_manifest
from fusion.mixup import sample_lambda

logger = logging.getLogger(__name__)

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters/digits, with inner apostrophes ("it's"); punctuation stays put
SWAP_ID = re.compile(r"^(?P<caption>.+)#swap(?P<k>\d+)$")


def _read_object(path: Path, flag: str, example: str) -> dict:
    """A non-empty JSON object read from ``path``; one line naming ``flag`` and the file otherwise."""
    if not path.is_file():
        raise MissingFileError(f"{flag} {path}: not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{flag} {path}: not JSON ({err})") from None
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{flag} {path}: expected an object of {example}")
    return raw


def load_swap_classes(path: str | Path) -> dict[str, list[str]]:
    """Read a swap-classes JSON file (class name -> list of one-word entries), lower-cased; one-line errors."""
    raw = _read_object(Path(path), "--swap-classes", 'word lists, e.g. {"colour": ["red", "blue"]}')
    classes: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name, words in raw.items():
        if not isinstance(words, list) or len(words) < 2:
            raise InputError(f"--swap-classes {path}: class {name!r} must be a list of at least 2 words")
        for word in words:
            if not isinstance(word, str) or WORD.fullmatch(word.strip()) is None:
                raise InputError(f"--swap-classes {path}: class {name!r}: {word!r} is not a single word")
            key = word.strip().lower()
            if key in owner:
                raise InputError(f"--swap-classes {path}: {key!r} is in both {owner[key]!r} and {name!r}")
            owner[key] = name
        classes[name] = [w.strip().lower() for w in words]
    return classes


def load_substitutes(path: str | Path) -> dict[str, str]:
    """Read a substitutes JSON file (word -> the word that replaces it), lower-cased; one-line errors."""
    raw = _read_object(Path(path), "--substitutes", 'words, e.g. {"big": "little", "little": "big"}')
    for word, other in raw.items():
        for w in (word, other):
            if not isinstance(w, str) or WORD.fullmatch(w.strip()) is None:
                raise InputError(f"--substitutes {path}: {w!r} is not a single word")
        if word.strip().lower() == other.strip().lower():
            raise InputError(f"--substitutes {path}: {word!r} would replace itself")
    return {word.strip().lower(): other.strip().lower() for word, other in raw.items()}


def _same_case(word: str, like: str) -> str:
    """``word`` written with the case pattern of ``like`` (RED, Red, red)."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:].lower()
    return word.lower()


def swapped_captions(caption: str, classes: dict[str, list[str]], limit: int | None = None) -> list[str]:
    """Every caption made by exchanging two different words of one class at their positions, at most ``limit``.

    Word-level: punctuation and spacing stay where they were, and each position keeps its case pattern. Pairs
    of positions come in text order ((0, 1), (0, 2), (1, 2), ...); repeated results are listed once. A caption
    without two different words of one class gives ``[]``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    owner = {word: name for name, words in classes.items() for word in words}
    spans = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(caption)]
    spans = [s for s in spans if s[2] in owner]
    out: list[str] = []
    for i, (start_i, end_i, word_i) in enumerate(spans):
        for start_j, end_j, word_j in spans[i + 1 :]:
            if word_i == word_j or owner[word_i] != owner[word_j]:
                continue
            swapped = (
                caption[:start_i]
                + _same_case(word_j, caption[start_i:end_i])
                + caption[end_i:start_j]
                + _same_case(word_i, caption[start_j:end_j])
                + caption[end_j:]
            )
            if swapped not in out:
                out.append(swapped)
            if limit is not None and len(out) >= limit:
                return out
    return out


def substituted_captions(caption: str, substitutes: dict[str, str]) -> list[str]:
    """Every caption made by replacing one word that ``substitutes`` names with its substitute, in text order.

    "a big red dot" -> "a little red dot". A swap keeps every word and changes what goes with what; a substitution
    changes one attribute a caption names once (the demo's size), whose only other value a batch rarely holds.
    Word-level and case-keeping as ``swapped_captions``; repeated results are listed once.
    """
    lowered = {word.lower(): other for word, other in substitutes.items()}
    out: list[str] = []
    for match in WORD.finditer(caption):
        other = lowered.get(match.group().lower())
        if other is None:
            continue
        changed = caption[: match.start()] + _same_case(other, match.group()) + caption[match.end() :]
        if changed not in out:
            out.append(changed)
    return out


def write_swap_manifest(
    caption_manifest: str | Path,
    classes: dict[str, list[str]],
    out: str | Path,
    limit: int = 2,
    substitutes: dict[str, str] | None = None,
) -> dict[str, int]:
    """Write the swapped captions of a manifest's captions as a caption-only JSONL (ids ``<caption id>#swap<k>``).

    With ``substitutes``, each caption's substituted versions (``substituted_captions``) follow its swaps. ``fusemix
    extract`` reads it like any manifest. Returns counts (captions, captions with swaps, lines written).
    """
    clips = read_manifest(caption_manifest)
    lines: list[str] = []
    captions = swappable = 0
    for clip in clips:
        for k, caption in enumerate(clip.captions):
            captions += 1
            swaps = swapped_captions(caption, classes, limit)
            swaps += [s for s in substituted_captions(caption, substitutes or {}) if s not in swaps]
            swappable += bool(swaps)
            caption_id = f"{clip.id}#{k}"  # the id fusion.extract gives this caption
            lines += [json.dumps({"id": f"{caption_id}#swap{j}", "caption": s}) + "\n" for j, s in enumerate(swaps)]
    if not lines:
        raise InputError(
            f"--captions {caption_manifest}: none of its {captions} captions has two different words of one "
            f"swap class ({', '.join(classes)})" + (" nor a word to substitute" if substitutes else "")
        )
    atomic_write_bytes(Path(out), "".join(lines).encode())
    logger.info("%d of %d captions have swaps; %d swapped captions in %s", swappable, captions, len(lines), out)
    return {"captions": captions, "swappable": swappable, "swapped": len(lines)}


@dataclass
class HardNegatives:
    """The swapped captions' latents (left on disk) and, per text-cache row, the rows of its swaps (-1: none)."""

    rows: LatentRows  # the hard-negative cache
    index: np.ndarray  # (text cache rows, M) int64: row of swap m of each caption, -1 where it has fewer

    @property
    def limit(self) -> int:
        return int(self.index.shape[1])

    def take(self, captions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, M, ...) of the swaps of text-cache rows ``captions`` (zeros where missing) and mask (B, M)."""
        index = self.index[captions]
        mask = index >= 0
        latents = np.zeros((*index.shape, *self.rows.shape[1:]), dtype=np.float32)
        latents[mask] = self.rows.take(index[mask])
        return torch.from_numpy(latents), torch.from_numpy(mask)


def load_hard_negatives(
    folder: str | Path, text: Latents, limit: int, used_rows: np.ndarray, mmap: bool = True
) -> HardNegatives:
    """Open a swapped-caption cache and map each caption of ``text`` to its first ``limit`` swaps.

    ``used_rows``: the text-cache rows training draws from; none of them having a swap is an error (the cache was
    built from another manifest, or the swap classes match no caption).
    """
    if limit < 1:
        raise InputError(f"--hard-negative-limit must be >= 1, got {limit}")
    hard = open_latents(Path(folder), mmap=mmap)
    if hard.array.shape[1:] != text.array.shape[1:]:
        raise CheckpointError(
            f"--hard-negatives {folder}: rows of shape {tuple(hard.array.shape[1:])}, the caption cache has "
            f"{tuple(text.array.shape[1:])} (extract both with the same encoder and --tokens)"
        )
    for key in ("encoder", "pooling"):
        if hard.meta.get(key) != text.meta.get(key):
            raise CheckpointError(
                f"--hard-negatives {folder}: {key} {hard.meta.get(key)!r}, the caption cache has {text.meta.get(key)!r}"
            )
    swaps: dict[str, list[tuple[int, int]]] = {}
    for row, clip_id in enumerate(hard.clip_ids):
        match = SWAP_ID.match(clip_id)
        if match is not None:
            swaps.setdefault(match["caption"], []).append((int(match["k"]), row))
    index = np.full((len(text.ids), limit), -1, dtype=np.int64)
    for i, caption_id in enumerate(text.ids):
        found = [row for _, row in sorted(swaps.get(caption_id, ()))[:limit]]
        index[i, : len(found)] = found
    with_swaps = int((index[used_rows, 0] >= 0).sum())
    if with_swaps == 0:
        raise FusemixError(
            f"--hard-negatives {folder}: no training caption has swapped captions there (ids like "
            f"'{text.ids[int(used_rows[0])]}#swap0'); build it with `fusemix hard-negatives --captions` on the manifest "
            "the caption cache was extracted from"
        )
    logger.info("hard negatives: %d of %d training captions have swaps (up to %d)", with_swaps, len(used_rows), limit)
    return HardNegatives(rows=hard.array, index=index)


def fusemix_mix_with_negatives(
    audio: torch.Tensor,
    text: torch.Tensor,
    hard: torch.Tensor,
    mask: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fusion.mixup.fusemix_mix`` that also mixes each pair's hard negatives with the same λ and partner.

    Row i mixes rows i and i + B//2, as for the positives; a mixed negative exists where both rows have one.
    Draws λ from ``generator`` exactly as ``fusemix_mix`` does, so audio and text come out the same.
    """
    half = len(audio) // 2
    if half == 0 or len(text) != len(audio) or hard.shape[:2] != mask.shape or len(hard) != len(audio):
        raise ValueError(f"batches of one length >= 2 needed, got {len(audio)}, {len(text)}, {tuple(hard.shape)}")
    lam = sample_lambda(alpha, generator)

    def mix(x: torch.Tensor) -> torch.Tensor:
        return lam * x[:half] + (1.0 - lam) * x[half : 2 * half]

    return mix(audio), mix(text), mix(hard), mask[:half] & mask[half : 2 * half]


def encode_with_negatives(
    model: torch.nn.Module, audio: torch.Tensor, text: torch.Tensor, hard: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(audio, text, logit scale, hard-negative features (B, M, D)) from one forward of ``model``.

    The present negatives go through the text tower in the same call as the positives (one forward, so data-parallel
    wrappers see every use of the weights); missing ones are zero rows, masked out by the loss.
    """
    fa, ft_all, scale = model(audio, torch.cat([text, hard[mask]]))
    n = len(text)
    zeros = ft_all.new_zeros((*mask.shape, ft_all.shape[-1]))
    return fa, ft_all[:n], scale, zeros.index_put((mask,), ft_all[n:])
