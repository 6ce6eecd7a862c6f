"""Audio-text retrieval metrics as LAION-CLAP reports them on AudioCaps and Clotho.

text -> audio: every caption is a query, its clip the one relevant item; R@k = share of captions whose clip
ranks <= k; mAP@10 = mean of 1/rank over captions (0 when rank > 10).
audio -> text: every clip is a query; R@k uses the best rank among the clip's captions; mAP@10 is the standard
AP@10 over the clip's captions: sum over the top 10 of precision@i at each relevant caption, divided by
min(number of the clip's captions, 10). With one caption per clip both reduce to 1/rank.
Ties are broken in the query's favour (rank = 1 + number of strictly higher scores).
"""

from __future__ import annotations

import torch

KS = (1, 5, 10)


def _summary(ranks: torch.Tensor, map10: torch.Tensor) -> dict[str, float]:
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in KS}
    out["mAP@10"] = float(map10.double().mean())
    return out


CHUNK_ELEMENTS = 1 << 24  # temporaries of at most this many elements (64 MiB of float32) per chunk


def _row_chunks(num_rows: int, num_cols: int) -> range:
    return range(0, num_rows, max(1, CHUNK_ELEMENTS // max(1, num_cols)))


def text_to_audio_ranks(sim: torch.Tensor, caption_clip: torch.Tensor) -> torch.Tensor:
    """Rank (1-based) of each caption's clip; ``sim`` is (num_captions, num_clips). Chunked over captions."""
    num_captions, num_clips = sim.shape
    ranks = torch.empty(num_captions, dtype=torch.long, device=sim.device)
    chunks = _row_chunks(num_captions, num_clips)
    for start in chunks:
        rows = sim[start : start + chunks.step]
        own = rows.gather(1, caption_clip[start : start + chunks.step, None])
        ranks[start : start + chunks.step] = (rows > own).sum(1) + 1
    return ranks


def audio_to_text_best_ranks(sim: torch.Tensor, caption_clip: torch.Tensor) -> torch.Tensor:
    """Best rank (1-based) among each clip's captions; ``sim`` is (num_captions, num_clips).

    The best rank is 1 + the number of captions scoring strictly above the clip's best own caption, counted in
    chunks of caption rows: no transposed copy or (clips, captions) mask of the whole matrix.
    """
    num_captions, num_clips = sim.shape
    own = sim.gather(1, caption_clip[:, None])[:, 0]
    best = torch.full((num_clips,), float("-inf"), dtype=sim.dtype, device=sim.device)
    best = best.scatter_reduce(0, caption_clip, own, reduce="amax")
    above = torch.zeros(num_clips, dtype=torch.long, device=sim.device)
    chunks = _row_chunks(num_captions, num_clips)
    for start in chunks:
        above += (sim[start : start + chunks.step] > best).sum(0)
    return above + 1


def audio_to_text_ap10(sim: torch.Tensor, caption_clip: torch.Tensor) -> torch.Tensor:
    """AP@10 of each clip over its captions (top 10 captions per clip, chunked over clips)."""
    num_captions, num_clips = sim.shape
    k = min(10, num_captions)
    clips = torch.arange(num_clips, device=sim.device)
    cols = max(1, CHUNK_ELEMENTS // max(1, num_captions))
    top = torch.cat(
        [sim[:, c : c + cols].topk(k, dim=0).indices.T for c in range(0, num_clips, cols)]
    )  # (clips, k) caption indices
    relevant = (caption_clip[top] == clips[:, None]).float()
    precision = relevant.cumsum(1) / torch.arange(1, k + 1, device=sim.device)
    num_relevant = torch.bincount(caption_clip, minlength=num_clips).clamp(max=10).float()
    return (precision * relevant).sum(1) / num_relevant.clamp(min=1)


def retrieval_metrics(sim: torch.Tensor, caption_clip: torch.Tensor) -> dict:
    """All metrics from a (num_captions, num_clips) similarity matrix and each caption's clip index."""
    if sim.ndim != 2 or sim.shape[0] != len(caption_clip):
        raise ValueError(
            f"sim must be (num_captions, num_clips) with {len(caption_clip)} captions, got {tuple(sim.shape)}"
        )
    caption_clip = caption_clip.to(sim.device).long()
    t2a = text_to_audio_ranks(sim, caption_clip)
    a2t = audio_to_text_best_ranks(sim, caption_clip)
    return {
        "text_to_audio": _summary(t2a, torch.where(t2a <= 10, 1.0 / t2a.float(), 0.0)),
        "audio_to_text": _summary(a2t, audio_to_text_ap10(sim, caption_clip)),
        "num_clips": int(sim.shape[1]),
        "num_captions": int(sim.shape[0]),
    }


def recall_curve(sim: torch.Tensor, caption_clip: torch.Tensor, max_k: int = 50) -> dict[str, list[float]]:
    """R@k for k = 1..max_k in both directions (for the retrieval-curve plot)."""
    caption_clip = caption_clip.to(sim.device).long()
    ks = torch.arange(1, max_k + 1, device=sim.device)
    t2a = text_to_audio_ranks(sim, caption_clip)
    a2t = audio_to_text_best_ranks(sim, caption_clip)
    return {
        "k": ks.tolist(),
        "text_to_audio": (t2a[None, :] <= ks[:, None]).float().mean(1).tolist(),
        "audio_to_text": (a2t[None, :] <= ks[:, None]).float().mean(1).tolist(),
    }


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per method, R@1/5/10 and mAP@10 (in %) for both directions."""
    cols = [f"R@{k}" for k in KS] + ["mAP@10"]
    head = f"{'method':<12} | {'text->audio':^31} | {'audio->text':^31} | clips | captions"
    sub = f"{'':<12} | " + " ".join(f"{c:>7}" for c in cols) + " | " + " ".join(f"{c:>7}" for c in cols) + " |"
    lines = [head, sub, "-" * len(head)]
    for name, m in results.items():
        t2a = " ".join(f"{100 * m['text_to_audio'][c]:7.2f}" for c in cols)
        a2t = " ".join(f"{100 * m['audio_to_text'][c]:7.2f}" for c in cols)
        lines.append(f"{name:<12} | {t2a} | {a2t} | {m['num_clips']:>5} | {m['num_captions']:>8}")
    return "\n".join(lines)
