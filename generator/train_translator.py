"""Train the translator: a point of S -> the image model's conditioning.

Inputs are the captions' points (text latent -> text adapter -> S, + Gaussian noise) and, with ``audio_latents``,
the points of the audio clips paired with them (audio adapter -> S, clean): where audio really lands. The target
of a row is the image model's own encoding e(c) of its caption. The noise (TR0N's trick) makes the translator
tolerant of the gap between where audio and text land in S, also when no audio is given ("captions only").

``objective``: ``mse`` regresses e(c); ``distill`` makes the frozen image model denoise alike under the
translator's conditioning and under e(c) (``generator.translator_distill``); ``both`` adds the two
(``mse + distill_weight * distill``).

The output folder is the translator (``config.json`` + weights, ``translator_config.json``) and its checkpoint
(``fusion.training.CheckpointManager``: ``optimizer.safetensors``, ``trainer_state.json``, ``train_config.json``),
rewritten atomically after every epoch; ``resume=True`` continues an interrupted run. The order and noise of
epoch ``e`` come from generators seeded by ``derive_seed(seed, ..., e)``, so a resumed run repeats exactly what
the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fusion.adapters import FuseMixAdapters
from fusion.cache import load_latents
from fusion.crash import maybe_crash
from fusion.errors import FusemixError, InputError
from fusion.pairs import pair_by_clip, regroup
from fusion.training import (
    Checkpoint,
    CheckpointManager,
    WarmupCosine,
    numpy_generator,
    reseed_global,
    restore_optimizer,
    torch_generator,
)
from generator.caption_bank import group_heads
from generator.image_text import image_text_encoder
from generator.snap_metric import fit_snap_metric
from generator.translator import ARCHS, Translator
from generator.translator_distill import DISTILL_IMAGES, OBJECTIVES, Distiller, build_distiller

logger = logging.getLogger(__name__)

REPORT_FILE = "translator_config.json"  # the configuration, the number of captions and (at the end) the fit
RESUMABLE_CHANGES = frozenset({"out", "progress", "device"})  # fields a resumed run may set differently
# values of fields added after checkpoints were first written: what those runs did
ADDED_DEFAULTS = {"objective": "mse", "distill_weight": 1.0, "distill_images": "auto", "distill_steps": 20}
ADDED_DEFAULTS["audio_latents"] = None
ADDED_DEFAULTS["arch"] = "mlp"
ADDED_DEFAULTS["canonical_bank"] = None
ADDED_DEFAULTS["audio_views"] = False
ADDED_DEFAULTS["init_from"] = None
ADDED_DEFAULTS["neighbour_mix"] = 0.0
ADDED_DEFAULTS["components"] = 2
ADDED_DEFAULTS["audio_noise"] = 0.0
ADDED_DEFAULTS["snap"] = 0.0
ADDED_DEFAULTS.update(metric_audio_latents=None, metric_text_latents=None, metric_shrink=0.5)
ADDED_DEFAULTS["width"] = None
NEIGHBOURS = 4  # targets a row may be moved toward with neighbour_mix
RELAX_FLOOR = 0.05  # share of every candidate's error kept in a mixture translator's loss (fit_loss)
OWN_BUFFERS = ("anchor_embeds", "metric_anchors", "metric_offsets")  # a run's own, never taken from --init-from
CACHED_IMAGES = "distill.images"  # key of the drawn caption images in the checkpoint's extra tensors


@dataclass
class TranslatorConfig:
    adapters: str  # FuseMixAdapters folder; its text tower maps caption latents into S
    text_latents: str  # caption latent cache (fusemix extract with the adapters' text encoder); holds the texts
    out: str  # translator folder to write
    kind: str = "demo"  # image model kind: "demo" or "stable-diffusion"
    image_model: str | None = None  # SD pipeline folder or id (its CLIP text encoder gives the targets); demo
    # pipeline folder for distillation (None: the shipped checkpoints/demo/image_model)
    audio_latents: str | None = None  # audio cache paired by clip id with text_latents; None: captions only
    # caption cache grouped by id whose first caption per group is written in one phrasing (a caption bank): its
    # captions join the rows, and every row targets the encoding of the first caption of the bank group nearest
    # its caption in S, so the translator learns what is said, not how; None: each row its own caption's encoding
    canonical_bank: str | None = None
    audio_views: bool = True  # with augmented views in audio_latents, each view of a clip is a row too
    objective: str = "mse"  # "mse" (to e(c)), "distill" (through the frozen denoiser) or "both"
    distill_weight: float = 1.0  # weight of the distillation term in "both"
    distill_images: str = "auto"  # images of a caption: "render" (demo-world scene), "generate" (drawn once), "auto"
    distill_steps: int = 20  # inference steps of each image drawn with distill_images "generate"
    epochs: int = 60  # passes over the captions
    batch_size: int = 256
    lr: float = 1e-3  # AdamW, cosine decay to lr/100
    weight_decay: float = 0.01
    noise: float = 0.05  # std of Gaussian noise added per dimension to the unit-norm S inputs (then renormalised)
    audio_noise: float = 0.0  # the same for the audio rows' points; 0: as they land
    # share of each batch's rows moved part of the way (up to the midpoint) toward a neighbouring target's point in
    # S, keeping their own target: meant to teach a step between neighbouring scenes instead of a blend that draws
    # neither (on the demo it moved the blend rather than removing it: README)
    neighbour_mix: float = 0.0
    num_blocks: int = 2  # residual blocks (mlp) or transformer blocks (queries) of the translator
    arch: str = "mlp"  # "mlp", "queries" or "mixture" (generator.translator)
    width: int | None = None  # hidden width of an mlp or mixture translator; None: the shared space's width
    components: int = 2  # candidate conditionings of a "mixture" translator (trained winner-take-all)
    init_from: str | None = None  # translator folder whose weights start the run (e.g. an mse run, then distill)
    # at inference, an output farther than this (L2) from every canonical target snaps to the nearest one
    # (generator.translator; needs canonical_bank, whose targets the translator keeps as anchors); 0: never
    snap: float = 0.0
    # paired audio/caption caches of clips the run does not train on (e.g. the accented world's): the far outputs
    # snap by the Mahalanobis metric of the translator's errors on them (generator.snap_metric), not L2; None: L2
    metric_audio_latents: str | None = None
    metric_text_latents: str | None = None
    metric_shrink: float = 0.5  # the metric's covariance shrunk toward isotropic (0: raw, 1: plain L2)
    dropout: float = 0.1
    seed: int = 0
    progress: bool = True
    device: str = "cpu"


def noisy(points: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Unit-norm points jittered by isotropic Gaussian noise, back on the sphere."""
    if std <= 0:
        return points
    noise = torch.randn(points.shape, generator=generator, device=points.device) * std
    return F.normalize(points + noise, dim=-1)


@dataclass
class _Data:
    """Training rows (each unique caption, then each paired audio clip) and the image model's caption encodings."""

    texts: list[str]
    points: torch.Tensor  # (rows, shared dim): the captions' points, then the audio clips' points
    targets: torch.Tensor  # (captions, tokens, token dim)
    negative: torch.Tensor  # (1, tokens, token dim) the empty prompt's encoding
    row_caption: torch.Tensor  # (rows,) the caption whose encoding is each row's target

    @property
    def num_rows(self) -> int:
        return len(self.points)

    @property
    def caption_points(self) -> torch.Tensor:
        return self.points[: len(self.texts)]

    @cached_property
    def neighbours(self) -> torch.Tensor:
        """(captions, NEIGHBOURS): for each target caption, the other targets nearest its point in S (cosine)."""
        heads = torch.unique(self.row_caption)
        unit = F.normalize(self.caption_points[heads], dim=-1)
        sims = (unit @ unit.T).fill_diagonal_(-2.0)
        k = max(1, min(NEIGHBOURS, len(heads) - 1))
        table = torch.zeros(len(self.texts), k, dtype=torch.long)
        table[heads] = heads[sims.topk(k, dim=1).indices]
        return table


def toward_neighbours(
    inputs: torch.Tensor, captions: torch.Tensor, data: _Data, share: float, gen: torch.Generator
) -> torch.Tensor:
    """A ``share`` of the rows moved a random part of the way (up to the midpoint) from their input toward the
    point of one of their target's nearest other targets; their targets stay. Meant to teach the translator to
    pick the nearer scene, as retrieval does, where a clip lands between two."""
    n = len(inputs)
    chosen = torch.rand(n, generator=gen) < share
    table = data.neighbours[captions]
    partner = table[torch.arange(n), torch.randint(table.shape[1], (n,), generator=gen)]
    keep = 0.5 + 0.5 * torch.rand(n, 1, generator=gen)  # >= 0.5: the input stays nearer its own target
    mixed = F.normalize(keep * inputs + (1 - keep) * data.caption_points[partner], dim=-1)
    return torch.where(chosen[:, None], mixed, inputs)


def checkpoint_manager(cfg: TranslatorConfig) -> CheckpointManager:
    """The translator folder is its own checkpoint; a resumed run may change only ``RESUMABLE_CHANGES``."""
    return CheckpointManager(Path(cfg.out), asdict(cfg), may_change=RESUMABLE_CHANGES, defaults=ADDED_DEFAULTS)


def check_config(cfg: TranslatorConfig) -> None:
    """One clear line for a value or combination the trainer cannot use."""
    if cfg.arch not in ARCHS:
        raise InputError(f"--arch must be one of {ARCHS}, got {cfg.arch!r}")
    if cfg.objective not in OBJECTIVES:
        raise InputError(f"--objective must be one of {OBJECTIVES}, got {cfg.objective!r}")
    if cfg.distill_images not in DISTILL_IMAGES:
        raise InputError(f"--distill-images must be one of {DISTILL_IMAGES}, got {cfg.distill_images!r}")
    if cfg.distill_weight < 0 or cfg.distill_steps < 1:
        raise InputError("--distill-weight must be >= 0 and --distill-steps >= 1")
    if cfg.noise < 0 or cfg.audio_noise < 0:
        raise InputError("--noise and --audio-noise must be >= 0")
    if cfg.components < 1:
        raise InputError(f"--components must be >= 1, got {cfg.components}")
    if cfg.width is not None and (cfg.width < 1 or cfg.arch == "queries"):
        raise InputError(f"--width must be >= 1, and is for --arch mlp or mixture; got {cfg.width} with {cfg.arch}")
    if cfg.snap < 0 or (cfg.snap > 0 and not cfg.canonical_bank):
        raise InputError(
            f"--snap must be >= 0, and needs --canonical-bank (its scenes are the anchors), got {cfg.snap}"
        )
    if (cfg.metric_audio_latents is None) != (cfg.metric_text_latents is None) or not 0 <= cfg.metric_shrink <= 1:
        raise InputError(
            "--snap-metric-audio and --snap-metric-text go together, and --snap-metric-shrink is in [0, 1]"
        )
    if cfg.metric_audio_latents and cfg.snap <= 0:
        raise InputError("--snap-metric-audio needs --snap (the metric judges where far outputs snap)")
    if not 0 <= cfg.neighbour_mix <= 1:
        raise InputError(f"--neighbour-mix must be in [0, 1], got {cfg.neighbour_mix}")
    if cfg.objective == "mse" and cfg.distill_images != "auto":
        raise InputError("--distill-images needs --objective distill or both (mse does not use images)")


def train_translator(cfg: TranslatorConfig, resume: bool = False) -> Path:
    """Train (or, with ``resume``, continue) and return the translator folder; an existing one needs ``resume``."""
    check_config(cfg)
    manager = checkpoint_manager(cfg)
    resumed = manager.start(resume)
    data = _load_data(cfg)
    model, opt, state = _build(cfg, data, resumed)
    distiller = _distiller(cfg, data, resumed)
    steps_per_epoch = math.ceil(data.num_rows / cfg.batch_size)
    schedule = WarmupCosine(cfg.lr, cfg.epochs * steps_per_epoch, 0, cfg.lr * 0.01)
    if state["epoch"] >= cfg.epochs:
        logger.info("%s already trained for %d epochs; nothing to do", cfg.out, state["epoch"])
        return manager.folder
    held = _metric_rows(cfg, data) if cfg.metric_audio_latents else None  # read now: a bad cache fails at once
    if distiller is not None and "distill_error_start" not in state:
        state["distill_error_start"] = distiller.error(model, data.caption_points, cfg.seed)
    scale = data.targets.pow(2).mean().item()  # report loss relative to the targets' power
    report = {**asdict(cfg), "num_captions": len(data.texts), "num_rows": data.num_rows}
    extra = {CACHED_IMAGES: distiller.cached} if distiller is not None and distiller.cached is not None else None
    bar = tqdm(range(state["epoch"], cfg.epochs), disable=not cfg.progress, desc="translator", unit="epoch")
    for epoch in bar:
        losses = _run_epoch(cfg, model, opt, schedule, data, epoch, distiller)
        entry = {"epoch": epoch + 1, "relative_mse": losses["mse"] / scale}
        if distiller is not None:
            entry["distill"] = losses["distill"]
        bar.set_postfix({k: f"{v:.4f}" for k, v in entry.items() if k != "epoch"})
        state["history"].append(entry)
        state.update(epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch)
        if epoch + 1 == cfg.epochs:
            if held is not None:
                report["metric_clips"] = fit_snap_metric(model, *held, cfg.metric_shrink)
            report.update(_final_report(cfg, model, data, distiller, scale, state))
        manager.save(state, optimizer=opt, model=model, extra=extra, files={REPORT_FILE: report})
    return manager.folder


def _final_report(cfg, model: Translator, data: _Data, distiller: Distiller | None, scale: float, state: dict):
    """The fit at the end of the run: relative MSE on the captions (and audio rows), distillation error."""
    captions = data.caption_points, data.targets[data.row_caption[: len(data.texts)]]
    out = {"relative_mse": _clean_error(model, *captions) / scale}
    if data.num_rows > len(data.texts):
        audio = data.points[len(data.texts) :], data.targets[data.row_caption[len(data.texts) :]]
        out["relative_mse_audio"] = _clean_error(model, *audio) / scale
    logger.info("translator: relative MSE %.4f on %d training captions", out["relative_mse"], len(data.texts))
    if distiller is not None:
        out["distill_error_start"] = state["distill_error_start"]
        out["distill_error"] = distiller.error(model, data.caption_points, cfg.seed)
        logger.info("translator: distillation error %.5f (%.5f at the start)", out["distill_error"],
                    out["distill_error_start"])  # fmt: skip
    return out


def _load_data(cfg: TranslatorConfig) -> _Data:
    """Unique captions of the cache, their points through the adapters' text tower, and their targets."""
    adapters = FuseMixAdapters.from_pretrained(cfg.adapters, use_safetensors=True).eval()
    cache = _caption_cache(cfg.text_latents, adapters)
    texts, points = _caption_points(cache, adapters)
    row_caption = torch.arange(len(texts))
    if cfg.audio_latents:
        captions = {t: i for i, t in enumerate(texts)}
        audio_points, audio_captions = _audio_rows(cfg, adapters, cache, captions, "--audio-latents")
        points, row_caption = torch.cat([points, audio_points]), torch.cat([row_caption, audio_captions])
    if cfg.canonical_bank:
        texts, points, row_caption = _canonical_rows(cfg, adapters, texts, points, row_caption)
    logger.info("encoding %d captions with the image model's text encoder", len(texts))
    encode = image_text_encoder(cfg.kind, cfg.image_model, cfg.device)
    targets = encode(texts).cpu()
    negative = encode([""]).cpu()
    return _Data(texts, points, targets, negative, row_caption)


def _metric_rows(cfg: TranslatorConfig, data: _Data) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``--snap-metric`` clips' points in S and, for each, the anchor of its caption's bank scene (the rule the
    training rows follow), which ``fit_snap_metric`` measures the translator's errors against."""
    adapters = FuseMixAdapters.from_pretrained(cfg.adapters, use_safetensors=True).eval()
    held = replace(cfg, audio_latents=cfg.metric_audio_latents, text_latents=cfg.metric_text_latents)
    cache = _caption_cache(held.text_latents, adapters)
    texts, points = _caption_points(cache, adapters)
    captions = {t: i for i, t in enumerate(texts)}
    audio_points, caption = _audio_rows(held, adapters, cache, captions, "--snap-metric-audio")
    index = {t: i for i, t in enumerate(data.texts)}
    canonical = torch.tensor(
        [index[h] for h in _scene_heads(texts, points, _bank_groups(cfg.canonical_bank, adapters))]
    )
    logger.info("snap metric: %d clips of %s (shrink %.2f)", len(audio_points), cfg.metric_audio_latents,
                cfg.metric_shrink)  # fmt: skip
    return audio_points, torch.searchsorted(anchor_rows(data), canonical[caption])


def _caption_cache(folder: str, adapters: FuseMixAdapters):
    """A caption cache the adapters' text tower can read, with its texts; one clear line otherwise."""
    cache = load_latents(Path(folder))
    if not cache.texts:
        raise FusemixError(f"{folder} holds no caption texts: extract it with a text encoder")
    tokens = adapters.tokens_for("text")
    if (cache.array.ndim == 3) != (tokens is not None):
        want = f"token latents (extract --tokens {tokens})" if tokens else "pooled caption latents"
        raise FusemixError(f"{folder} has shape {cache.array.shape}; the adapters' text tower takes {want}")
    return cache


def _caption_points(cache, adapters: FuseMixAdapters) -> tuple[list[str], torch.Tensor]:
    """The cache's unique captions (first-seen order) and their points in S."""
    texts = list(dict.fromkeys(cache.texts))
    first = {t: i for i, t in reversed(list(enumerate(cache.texts)))}
    latents = torch.from_numpy(cache.array[[first[t] for t in texts]].astype("float32"))
    return texts, adapters.embed("text", latents).detach()


def _canonical_rows(cfg: TranslatorConfig, adapters: FuseMixAdapters, texts, points, row_caption):
    """Add the bank's captions as rows, and point every row's target at the first caption of the bank group
    nearest (cosine in S) its caption; a bank caption's group is its own. Returns texts, points, row_caption."""
    bank = _bank_groups(cfg.canonical_bank, adapters)
    bank_texts, bank_points, _, head = bank
    known = set(texts)
    added = [i for i, t in enumerate(bank_texts) if t not in known]
    all_texts = texts + [bank_texts[i] for i in added]
    index = {t: i for i, t in enumerate(all_texts)}
    caption_points = torch.cat([points[: len(texts)], bank_points[added]])
    canonical = torch.tensor([index[h] for h in _scene_heads(all_texts, caption_points, bank)])
    rows = torch.cat([row_caption[: len(texts)], torch.arange(len(texts), len(all_texts)), row_caption[len(texts) :]])
    moved = int((canonical != torch.arange(len(all_texts))).sum())
    logger.info("canonical targets from %s: %d groups, %d bank captions added, %d of %d captions retargeted",
                cfg.canonical_bank, len(head), len(added), moved, len(all_texts))  # fmt: skip
    return all_texts, torch.cat([caption_points, points[len(texts) :]]), canonical[rows]


def _bank_groups(folder: str, adapters: FuseMixAdapters):
    """A caption bank's unique captions, their points in S, each caption's group and each group's first caption."""
    bank = _caption_cache(folder, adapters)
    texts, points = _caption_points(bank, adapters)
    head = group_heads(bank.texts, bank.clip_ids)
    return texts, points, dict(zip(bank.texts, bank.clip_ids, strict=True)), head


def _scene_heads(texts: list[str], points: torch.Tensor, bank) -> list[str]:
    """For each caption, the first caption of its bank group: its own group for a bank caption, else the group of
    the bank caption nearest it (cosine in S). ``bank`` is ``_bank_groups``'s answer."""
    bank_texts, bank_points, group_of, head = bank
    nearest = (F.normalize(points, dim=-1) @ F.normalize(bank_points, dim=-1).T).argmax(1).tolist()
    return [head[group_of.get(t, group_of[bank_texts[j]])] for t, j in zip(texts, nearest, strict=True)]


def _audio_rows(cfg: TranslatorConfig, adapters: FuseMixAdapters, text_cache, caption_index: dict[str, int], flag: str):
    """One row per (clip, caption) pair of the audio cache and the text cache: the clip's point in S (through
    the adapters' audio tower) and the index of the caption whose encoding is its target. ``flag`` names the
    option the cache came from in errors."""
    audio = load_latents(Path(cfg.audio_latents), mmap=True)
    _check_audio_cache(cfg, adapters, audio, flag)
    pairing = pair_by_clip(audio, text_cache, audio_name=cfg.audio_latents, text_name=cfg.text_latents)
    rows, clip = pairing.audio_rows, np.arange(pairing.num_clips)  # each clip's own row
    if cfg.audio_views and pairing.has_views:  # and its augmented views: where other rooms and voices land
        rows, clip = pairing.view_rows, np.repeat(clip, pairing.view_counts)
    chunk = 1024
    points = torch.cat([
        adapters.embed("audio", torch.from_numpy(np.asarray(audio.array[part], dtype=np.float32)))
        for part in (rows[i : i + chunk] for i in range(0, len(rows), chunk))
    ])  # fmt: skip
    caption_of_pair = np.array([caption_index[text_cache.texts[r]] for r in pairing.caption_rows])
    # one row per (audio row, caption of its clip): the clip's captions, in caption order, for each audio row
    positions, _, per_row = regroup(pairing.starts, pairing.counts, clip)
    pair_row = torch.from_numpy(np.repeat(np.arange(len(rows)), per_row))
    logger.info("%d audio rows of %d clips paired with %d captions", len(rows), pairing.num_clips,
                pairing.num_captions)  # fmt: skip
    return points[pair_row].detach(), torch.from_numpy(caption_of_pair[positions])


def _check_audio_cache(cfg: TranslatorConfig, adapters: FuseMixAdapters, audio, flag: str) -> None:
    """One clear line when the audio cache (given as ``flag``) is not what the adapters' audio tower was trained
    on."""
    want_dim, tokens = int(adapters.config.audio_dim), adapters.tokens_for("audio")
    shape = tuple(audio.array.shape)
    if shape[-1] != want_dim:
        raise InputError(f"{flag} {cfg.audio_latents}: dim {shape[-1]}, the adapters' audio tower takes {want_dim}")
    if (len(shape) == 3) != (tokens is not None) or (tokens is not None and shape[1] != tokens):
        want = f"token latents (extract --tokens {tokens})" if tokens else "pooled audio latents"
        raise InputError(f"{flag} {cfg.audio_latents} has shape {shape}; the adapters' audio tower takes {want}")
    trained = _trained_audio_encoder(Path(cfg.adapters))
    given = audio.meta.get("encoder")
    if trained and given and trained != given:
        raise InputError(
            f"{flag} {cfg.audio_latents} comes from encoder {given!r}; the adapters were trained on {trained!r}"
        )


def _trained_audio_encoder(adapters: Path) -> str | None:
    """The audio encoder the adapters were trained on, when their training record still points at its cache."""
    try:
        record = json.loads((adapters / "train_config.json").read_text())
        manifest = json.loads((Path(record["audio_latents"]) / "manifest.json").read_text())
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return manifest.get("encoder")


def _distiller(cfg: TranslatorConfig, data: _Data, resumed: Checkpoint | None) -> Distiller | None:
    """The distillation loss of the run (None for the mse objective); drawn images come back from a checkpoint."""
    if cfg.objective == "mse":
        return None
    cached = resumed.extra.get(CACHED_IMAGES) if resumed is not None else None
    return build_distiller(
        cfg.kind, cfg.image_model, cfg.distill_images, data.texts, data.targets, data.negative, cfg.seed,
        cfg.distill_steps, cfg.device, cached,
    )  # fmt: skip


def new_translator(cfg: TranslatorConfig, in_dim: int, num_tokens: int, token_dim: int, anchors: int = 0) -> Translator:
    """An untrained translator of the run's shape (``--components`` counts only for a mixture, ``anchors`` only
    with ``--snap``: other runs keep the model config they always had)."""
    return Translator(
        in_dim, num_tokens, token_dim, cfg.num_blocks, dropout=cfg.dropout, arch=cfg.arch,
        components=cfg.components if cfg.arch == "mixture" else 1,
        anchors=anchors if cfg.snap > 0 else 0, snap=cfg.snap, metric=cfg.metric_audio_latents is not None,
        width=cfg.width,
    )  # fmt: skip


def anchor_rows(data: _Data) -> torch.Tensor:
    """The captions some row targets (with a canonical bank: one per scene), whose encodings a snapping
    translator keeps as anchors."""
    return data.row_caption.unique()


def _build(cfg: TranslatorConfig, data: _Data, resumed: Checkpoint | None):
    """A fresh translator (seeded; its mean and negative from the targets) and optimizer, or both read back."""
    reseed_global(cfg.seed, "init")
    anchors = anchor_rows(data)
    model = new_translator(cfg, data.points.shape[1], data.targets.shape[1], data.targets.shape[2], len(anchors))
    with torch.no_grad():
        model.mean.copy_(data.targets.mean(0))
        model.negative.copy_(data.negative)
        if cfg.snap > 0:
            model.anchor_embeds.copy_(data.targets[anchors])
    if resumed is not None:  # copied into the fresh model: same memory layout, so the same arithmetic as before
        model.load_state_dict(
            Translator.from_pretrained(str(resumed.folder), use_safetensors=True).state_dict(), strict=True
        )
    elif cfg.init_from:  # the run's own anchors (and metric) stay
        start = {k: v for k, v in _warm_start(cfg.init_from, model).state_dict().items() if k not in OWN_BUFFERS}
        model.load_state_dict({**model.state_dict(), **start}, strict=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "step": 0, "history": []}
    if resumed is not None:
        restore_optimizer(opt, resumed)
        state = resumed.state
    return model, opt, state


def _warm_start(folder: str, model: Translator) -> Translator:
    """The translator in ``folder``, when it has the shape of ``model``; one clear line otherwise."""
    if not (Path(folder) / "config.json").is_file():
        raise InputError(f"--init-from {folder}: no translator there (config.json missing)")
    try:
        start = Translator.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise InputError(f"--init-from {folder}: not a translator folder ({str(err).splitlines()[0]})") from None
    want = {k: v.shape for k, v in model.state_dict().items() if k not in OWN_BUFFERS}
    have = {k: v.shape for k, v in start.state_dict().items() if k not in OWN_BUFFERS}
    if want != have:
        diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        raise InputError(
            f"--init-from {folder}: its weights do not fit this run's translator (--arch, --num-blocks, --width, the "
            f"shared and image model's dims): {', '.join(diff[:3])}"
        )
    return start


def _run_epoch(
    cfg: TranslatorConfig, model: Translator, opt, schedule: WarmupCosine, data: _Data, epoch: int,
    distiller: Distiller | None = None,
) -> dict[str, float]:  # fmt: skip
    """One pass over the rows in the order and with the noise of (seed, epoch); returns the mean losses.

    Order and input noise come from one stream, the distillation's timesteps, noise and render jitter from
    others: the mse objective draws exactly what it drew before distillation existed.
    """
    gen = torch_generator(cfg.seed, "epoch", epoch)
    reseed_global(cfg.seed, "dropout", epoch)
    dgen, rng = torch_generator(cfg.seed, "distill", epoch), numpy_generator(cfg.seed, "render", epoch)
    mgen = torch_generator(cfg.seed, "neighbour", epoch)
    agen = torch_generator(cfg.seed, "audio-noise", epoch)
    steps_per_epoch = math.ceil(data.num_rows / cfg.batch_size)
    order = torch.randperm(data.num_rows, generator=gen)
    model.train()
    totals = {"mse": 0.0, "distill": 0.0}
    for i in range(steps_per_epoch):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        inputs = noisy(data.points[idx], cfg.noise, gen)
        audio = noisy(data.points[idx], cfg.audio_noise, agen)  # 0: the audio rows as they land
        inputs = torch.where((idx >= len(data.texts))[:, None], audio, inputs)
        captions = data.row_caption[idx]
        if cfg.neighbour_mix > 0:
            inputs = toward_neighbours(inputs, captions, data, cfg.neighbour_mix, mgen)
        step = epoch * steps_per_epoch + i
        pred, mse, loss = fit_loss(
            model, inputs, data.targets[captions], relaxation(step, cfg.epochs * steps_per_epoch)
        )
        if distiller is not None:
            distill = distiller.loss(pred, captions, dgen, rng)
            loss = distill if cfg.objective == "distill" else mse + cfg.distill_weight * distill
            totals["distill"] += distill.item() * len(idx)
        schedule.apply(opt, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        maybe_crash("translator.step")
        totals["mse"] += mse.item() * len(idx)
    return {k: v / data.num_rows for k, v in totals.items()}


def fit_loss(model: Translator, inputs: torch.Tensor, targets: torch.Tensor, share: float = 0.0):
    """The prediction, its MSE and the fit loss.

    A mixture translator is trained winner-take-all: the candidate nearest the target learns it and the scores
    learn which candidate that was (cross-entropy), so where one point may be two scenes each candidate keeps one
    and the scores pick the likelier, not their mean. ``share`` of the loss is every candidate's error: 1 at the
    start, so all begin at the mean, annealed to a floor (``relaxation``). Pure winner-take-all from a random start
    lets one candidate win both scenes and learn their blend while the others never win there; without the floor,
    each candidate learns only the scenes it wins and draws garbage where the scores pick it for another.
    """
    if model.config.arch != "mixture":
        pred = model(inputs)
        mse = F.mse_loss(pred, targets)
        return pred, mse, mse
    candidates, scores = model.candidates(inputs)
    errors = (candidates - targets[:, None]).pow(2).mean(dim=(2, 3))
    winner = errors.argmin(1)
    mse = errors.gather(1, winner[:, None]).mean()
    fit = (1 - share) * mse + share * errors.mean()
    return candidates[torch.arange(len(inputs)), winner], mse, fit + F.cross_entropy(scores, winner)


def relaxation(step: int, total_steps: int, floor: float = RELAX_FLOOR) -> float:
    """The share of every candidate's error in a mixture's loss: 1 at step 0, down to ``floor`` at half the run."""
    return max(floor, 1.0 - step / max(1, total_steps / 2))


@torch.no_grad()
def _clean_error(model: Translator, points: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared error of the learned map (never snapped) without input noise or dropout."""
    model.eval()
    return F.mse_loss(model.translate(points), targets).item()
