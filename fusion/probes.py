"""Linear probes: how much of an attribute a representation keeps, measured by a classifier that can only be linear.

Probing the raw audio latents and the shared space S with the same probe shows how much of what the encoder hears
survives the adapters (a drop means S threw it away; a rise means the adapters made it easier to read).

    >>> accuracy = linear_probe(train_x, train_labels, test_x, test_labels)   # share of test rows classified right
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fusion.errors import InputError


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return torch.from_numpy((train - mean) / std).float(), torch.from_numpy((test - mean) / std).float()


def linear_probe(
    train_x: np.ndarray,
    train_labels: Sequence[str],
    test_x: np.ndarray,
    test_labels: Sequence[str],
    weight_decay: float = 1e-3,
    steps: int = 300,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic regression fit on standardised training rows (full-batch L-BFGS).

    Rows are flattened, so token latents (n, K, D) are probed as one vector per item. A test label never seen in
    training counts as a miss.
    """
    if len(train_x) != len(train_labels) or len(test_x) != len(test_labels):
        raise InputError("linear_probe: rows and labels differ in number")
    if len(train_x) < 2 or len(test_x) < 1:
        raise InputError("linear_probe: need at least 2 training rows and 1 test row")
    classes = sorted(set(train_labels))
    index = {c: i for i, c in enumerate(classes)}
    x, xt = _standardise(np.asarray(train_x, np.float64).reshape(len(train_x), -1),
                         np.asarray(test_x, np.float64).reshape(len(test_x), -1))  # fmt: skip
    y = torch.tensor([index[c] for c in train_labels])
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], len(classes))
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = probe(xt).argmax(dim=1).tolist()
    return float(np.mean([classes[p] == label for p, label in zip(predicted, test_labels, strict=True)]))
