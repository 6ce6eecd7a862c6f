"""Paired comparison of two judged runs on the same clips: which clips each got right alone, and an exact McNemar
test, so a lead of a few clips out of 200 is read as the noise it may be before a checkpoint is shipped for it."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

from demoworld.judge import ATTRIBUTES
from fusion.errors import InputError


def exact_mcnemar(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: under "neither is better" the discordant clips split like fair coin flips."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"counts must be >= 0, got a_only={a_only}, b_only={b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_counts(a: Sequence[dict], b: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per attribute: clips only ``a`` got right, only ``b``, both, neither, and the McNemar p. ``a`` and ``b`` are
    the ``clips`` lists that ``scripts/eval_demo_generation.py --json`` keeps ({"id", "correct": {attribute: bool}})."""
    right_a = {c["id"]: c["correct"] for c in a}
    right_b = {c["id"]: c["correct"] for c in b}
    if len(right_a) != len(a) or len(right_b) != len(b):
        raise InputError("a run lists one clip twice")
    if right_a.keys() != right_b.keys():
        missing = sorted(right_a.keys() ^ right_b.keys())
        raise InputError(f"the runs judged different clips ({len(missing)} in one only, e.g. {missing[0]})")
    table = {}
    for attribute in ATTRIBUTES:
        pairs = [(right_a[i][attribute], right_b[i][attribute]) for i in right_a]
        row = {
            "a_only": sum(x and not y for x, y in pairs),
            "b_only": sum(y and not x for x, y in pairs),
            "both": sum(x and y for x, y in pairs),
            "neither": sum(not x and not y for x, y in pairs),
        }
        row["p"] = exact_mcnemar(row["a_only"], row["b_only"])
        table[attribute] = row
    return table
