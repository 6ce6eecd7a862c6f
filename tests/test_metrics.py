"""Retrieval metrics against a plain argsort reference, on random similarity matrices."""

import numpy as np
import pytest
import torch

from fusion.metrics import format_table, recall_curve, retrieval_metrics


def reference(sim: np.ndarray, caption_clip: np.ndarray) -> dict:
    """One query at a time with argsort: the textbook definitions."""
    num_captions, num_clips = sim.shape
    t2a_ranks, t2a_rr = [], []
    for i in range(num_captions):
        order = np.argsort(-sim[i])
        rank = int(np.where(order == caption_clip[i])[0][0]) + 1
        t2a_ranks.append(rank)
        t2a_rr.append(1.0 / rank if rank <= 10 else 0.0)
    a2t_ranks, a2t_ap = [], []
    for c in range(num_clips):
        order = np.argsort(-sim[:, c])
        relevant = caption_clip[order] == c
        a2t_ranks.append(int(np.where(relevant)[0][0]) + 1)
        hits, ap = 0, 0.0
        for i in range(min(10, num_captions)):
            if relevant[i]:
                hits += 1
                ap += hits / (i + 1)
        a2t_ap.append(ap / min(int((caption_clip == c).sum()), 10))
    t2a_ranks, a2t_ranks = np.array(t2a_ranks), np.array(a2t_ranks)
    out = {}
    for name, ranks, ap in (("text_to_audio", t2a_ranks, t2a_rr), ("audio_to_text", a2t_ranks, a2t_ap)):
        out[name] = {f"R@{k}": float(np.mean(ranks <= k)) for k in (1, 5, 10)}
        out[name]["mAP@10"] = float(np.mean(ap))
    return out


@pytest.mark.parametrize("captions_per_clip", [1, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_argsort_reference(captions_per_clip, seed):
    rng = np.random.default_rng(seed)
    num_clips = 40
    caption_clip = np.repeat(np.arange(num_clips), captions_per_clip)
    rng.shuffle(caption_clip)
    # informative but imperfect scores, so every metric lands strictly between 0 and 1
    sim = rng.standard_normal((len(caption_clip), num_clips))
    sim[np.arange(len(caption_clip)), caption_clip] += 1.5
    got = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(caption_clip))
    want = reference(sim, caption_clip)
    assert got["num_clips"] == num_clips and got["num_captions"] == num_clips * captions_per_clip
    for direction in ("text_to_audio", "audio_to_text"):
        assert set(got[direction]) == {"R@1", "R@5", "R@10", "mAP@10"}
        for key, value in want[direction].items():
            assert got[direction][key] == pytest.approx(value, abs=1e-6), (direction, key)
    assert 0 < got["text_to_audio"]["R@1"] < 1


def test_perfect_and_uneven_captions():
    caption_clip = torch.tensor([0, 0, 1, 2, 2, 2])
    sim = torch.full((6, 3), -1.0)
    sim[torch.arange(6), caption_clip] = 1.0
    m = retrieval_metrics(sim, caption_clip)
    assert m["text_to_audio"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP@10": 1.0}
    assert m["audio_to_text"]["mAP@10"] == pytest.approx(1.0)
    ref = reference(sim.numpy() + 1e-6 * np.random.default_rng(0).standard_normal((6, 3)), caption_clip.numpy())
    assert ref["audio_to_text"]["mAP@10"] == pytest.approx(1.0)


def test_recall_curve_is_monotone_and_ends_consistent():
    rng = np.random.default_rng(3)
    caption_clip = np.repeat(np.arange(60), 2)
    sim = torch.from_numpy(rng.standard_normal((120, 60)))
    curve = recall_curve(sim, torch.from_numpy(caption_clip), max_k=50)
    m = retrieval_metrics(sim, torch.from_numpy(caption_clip))
    assert curve["k"] == list(range(1, 51))
    for direction in ("text_to_audio", "audio_to_text"):
        values = curve[direction]
        assert all(a <= b for a, b in zip(values, values[1:], strict=False))
        assert values[0] == pytest.approx(m[direction]["R@1"]) and values[9] == pytest.approx(m[direction]["R@10"])


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match="num_captions"):
        retrieval_metrics(torch.zeros(3, 2), torch.tensor([0, 1]))


def test_large_matrix_is_fast():
    import time

    caption_clip = torch.arange(1000).repeat_interleave(5)
    sim = torch.randn(5000, 1000)
    start = time.process_time()  # CPU time: a shared, loaded machine stretches wall time, not work
    retrieval_metrics(sim, caption_clip)
    assert time.process_time() - start < 2.0  # ~0.1 s measured


def test_table_lists_methods():
    m = retrieval_metrics(torch.eye(3), torch.arange(3))
    table = format_table({"fusemix": m, "linear": m})
    assert "fusemix" in table and "linear" in table and "100.00" in table
