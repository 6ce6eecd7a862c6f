"""The metric a snapping translator judges far outputs by: Mahalanobis, from its errors on clips it never trained on.

Far from every anchor, the nearest anchor by L2 weighs each direction of the conditioning alike, also the ones an
unheard voice throws off. Fitted on held-aside clips (the accented world's training clips, which the translator
never reads), the covariance of the errors says which directions those are; the metric discounts them.

Only the anchors' span matters (the rest adds the same to every anchor's distance), so the errors are projected
there, their covariance shrunk toward its mean variance (``shrink``: 0 = the raw covariance, 1 = plain L2), and
the metric stored as two buffers of the translator: ``metric_anchors[i] = M (a_i - mean)`` and ``metric_offsets``,
so that ``2 x . metric_anchors[i] - metric_offsets[i]`` is, up to a constant, minus the squared distance.
"""

from __future__ import annotations

import torch

from generator.translator import Translator


@torch.no_grad()
def fit_snap_metric(model: Translator, points: torch.Tensor, anchor_index: torch.Tensor, shrink: float) -> int:
    """Set ``model``'s metric buffers from its errors on ``points`` (S points of clips it did not train on), whose
    right anchors are ``anchor_index``; returns the number of points used. ``shrink`` in [0, 1]."""
    if not model.config.metric:
        raise ValueError("this translator has no metric buffers: build it with metric=True")
    if not 0 <= shrink <= 1 or len(points) != len(anchor_index) or len(points) < 2:
        raise ValueError(f"shrink must be in [0, 1] and points (>= 2) must match anchor_index, got {shrink}")
    was_training = model.training
    model.eval()
    anchors = model.anchor_embeds.float().flatten(1)
    errors = torch.cat([model.translate(part).flatten(1) for part in points.split(1024)]) - anchors[anchor_index]
    model.train(was_training)
    mean = anchors.mean(0)
    _, sizes, basis = torch.linalg.svd(anchors - mean, full_matrices=False)
    basis = basis[sizes > sizes[0] * 1e-4]  # (k, dims): the anchors' span
    cov = torch.cov((errors @ basis.T).T.double())
    cov = (1 - shrink) * cov + shrink * cov.trace() / len(cov) * torch.eye(len(cov), dtype=cov.dtype)
    precision = torch.linalg.pinv(cov, hermitian=True).float()
    centred = (anchors - mean) @ basis.T  # (anchors, k)
    metric_anchors = centred @ precision @ basis  # M (a_i - mean), M = basis^T precision basis
    offsets = 2 * metric_anchors @ mean + (metric_anchors * (anchors - mean)).sum(1)
    model.metric_anchors.copy_(metric_anchors.view_as(model.metric_anchors))
    model.metric_offsets.copy_(offsets)
    return len(points)
