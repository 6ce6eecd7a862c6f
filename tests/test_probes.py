"""Linear probes read a linearly coded attribute and fail on one that is not there."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.errors import InputError
from fusion.probes import linear_probe


def test_probe_reads_a_linear_attribute_and_not_a_random_one():
    rng = np.random.default_rng(0)
    colours = np.array(["red", "green", "blue"])
    labels = colours[rng.integers(3, size=600)]
    centres = rng.standard_normal((3, 16)) * 2.0
    x = centres[np.searchsorted(np.sort(colours), labels)] + rng.standard_normal((600, 16))
    tokens = x.reshape(600, 4, 4)  # token latents are probed flattened
    assert linear_probe(tokens[:400], labels[:400], tokens[400:], labels[400:]) > 0.9
    shuffled = rng.permutation(labels)
    chance = linear_probe(x[:400], shuffled[:400], x[400:], shuffled[400:])
    assert chance < 0.5


def test_probe_rejects_mismatched_rows_and_counts_unseen_labels_as_misses():
    x = np.eye(4)
    with pytest.raises(InputError, match="differ"):
        linear_probe(x, ["a", "b"], x, ["a"] * 4)
    assert linear_probe(x[:2], ["a", "b"], x[2:], ["c", "c"]) == 0.0
