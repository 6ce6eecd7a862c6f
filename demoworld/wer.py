"""Word error rate: how far a transcript is from the caption that was spoken.

Used to check that the spoken captions are intelligible (Whisper tiny.en transcribes them).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9']+")


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation, so "Red, circle." matches "red circle"."""
    return _WORD.findall(text.lower())


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two token lists (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: total word edits over total reference words (not a mean of per-sentence rates)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"references and hypotheses must have one length, got {len(references)} and {len(hypotheses)}")
    edits = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_words = normalize_words(ref)
        edits += edit_distance(ref_words, normalize_words(hyp))
        words += len(ref_words)
    if words == 0:
        raise ValueError("references hold no words; WER is undefined")
    return edits / words
