"""`fusemix eval`: audio-text retrieval benchmark of FuseMix and baselines (R@1/5/10, mAP@10).

    fusemix eval --checkpoint runs/fusemix --audio-latents test/audio --text-latents test/text --json eval.json
    fusemix eval --checkpoint runs/fusemix --audio-latents test/audio --text-latents test/text \\
        --method fusemix linear procrustes random \\
        --train-audio-latents train/audio --train-text-latents train/text --plot recall.png
    fusemix eval --audio-latents test/audio --text-latents test/text --method asr-cascade --json eval.json

asr-cascade transcribes the clips themselves (Whisper tiny.en, beam 5) and ranks captions by the text encoder's
cosine to the transcript; it finds the audio through the manifest the audio cache was extracted from (or
--manifest/--audio-dir) and keeps the transcripts in a JSON file next to --json (or --transcripts), so a rerun does
not transcribe again.

text->audio: every caption is a query. audio->text: best rank among the clip's captions (see fusion.metrics).
With one method the JSON is {"text_to_audio": {...}, "audio_to_text": {...}, "num_clips", "num_captions"};
with several it maps each method name to such a dict.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion.adapters import FuseMixAdapters
from fusion.baselines import (
    CASCADE_TEXT_ENCODER,
    METHODS,
    asr_cascade_similarity,
    fit_linear,
    fit_procrustes,
    random_adapters,
)
from fusion.cache import atomic_write_json, load_latents
from fusion.errors import InputError
from fusion.evaluate import EvalPairs, evaluate, load_pairs, plot_recall_curves
from fusion.manifests import read_manifest
from fusion.metrics import format_table, recall_curve, retrieval_metrics
from fusion.train import find_checkpoint

logger = logging.getLogger(__name__)

ARCH_KEYS = (
    "shared_dim",
    "num_blocks",
    "expansion",
    "dropout",
    "lock_text",
    "audio_adapter",
    "audio_tokens",
    "keep",
    "sparse_mode",
    "text_adapter",
    "text_tokens",
    "text_keep",
    "token_blocks",
    "audio_parts",
    "audio_part_dropout",
    "heads",
)


@dataclass
class EvalConfig:
    """What to evaluate and where to write it."""

    audio_latents: str  # evaluation audio cache (one row per clip)
    text_latents: str  # evaluation caption cache
    checkpoint: str | None = None  # FuseMix run or model folder (needed for fusemix; gives random its shape)
    methods: list[str] = field(default_factory=lambda: ["fusemix"])  # fusemix, linear, procrustes, random
    train_audio_latents: str | None = None  # training caches that linear and procrustes are fitted on
    train_text_latents: str | None = None
    json: str | None = None  # write the metrics here
    plot: str | None = None  # write an R@k (k = 1..50) PNG here
    seed: int = 0  # seed of the random-adapter baseline
    manifest: str | None = None  # asr-cascade: the audio manifest (default: the one the audio cache was made from)
    audio_dir: str | None = None  # asr-cascade: where the manifest's relative audio paths resolve
    transcripts: str | None = None  # asr-cascade: transcript cache JSON (default: asr_transcripts.json next to --json)
    asr_beam_size: int = 5  # asr-cascade: Whisper beam width
    cascade_text_encoder: str = CASCADE_TEXT_ENCODER  # asr-cascade: embeds transcripts and captions
    progress: bool = True  # show progress bars


def build_model(method: str, cfg: EvalConfig, pairs: EvalPairs, train_pairs: EvalPairs | None):
    """The model for one method: load, fit on training latents, or draw at random."""
    if method == "fusemix":
        if cfg.checkpoint is None:
            raise InputError("--method fusemix needs --checkpoint")
        return FuseMixAdapters.from_pretrained(find_checkpoint(cfg.checkpoint), use_safetensors=True).eval()
    if method == "random":
        arch = {}
        if cfg.checkpoint is not None:
            saved = FuseMixAdapters.load_config(find_checkpoint(cfg.checkpoint))
            arch = {k: saved[k] for k in ARCH_KEYS if k in saved}
        return random_adapters(pairs.audio.shape[-1], pairs.text.shape[-1], seed=cfg.seed, **arch)
    if train_pairs is None:
        raise InputError(
            f"--method {method} is fitted on training latents: give --train-audio-latents and --train-text-latents"
        )
    train_audio = train_pairs.audio[torch.from_numpy(train_pairs.pairing.caption_clip)]
    fit = fit_linear if method == "linear" else fit_procrustes
    return fit(train_audio, train_pairs.text)


def run(cfg: EvalConfig) -> dict[str, dict]:
    """Metrics per method (with an R@k curve under "curve" when a plot is asked for)."""
    for method in cfg.methods:
        if method not in METHODS:
            raise InputError(f"--method must be among {METHODS}, got {method!r}")
    if (cfg.train_audio_latents is None) != (cfg.train_text_latents is None):
        raise InputError("give both --train-audio-latents and --train-text-latents, or neither")
    pairs = load_pairs(cfg.audio_latents, cfg.text_latents)
    train_pairs = None
    if cfg.train_audio_latents is not None and any(m in ("linear", "procrustes") for m in cfg.methods):
        train_pairs = load_pairs(cfg.train_audio_latents, cfg.train_text_latents)
    results = {}
    for method in cfg.methods:
        if method == "asr-cascade":
            results[method] = evaluate_cascade(cfg, pairs, curve=cfg.plot is not None)
            continue
        model = build_model(method, cfg, pairs, train_pairs)
        results[method] = evaluate(model, pairs, curve=cfg.plot is not None)
    return results


def clip_audio_paths(cfg: EvalConfig, pairs: EvalPairs) -> list[Path]:
    """The audio file of each evaluated clip, from --manifest or the manifest the audio cache was extracted from."""
    audio = load_latents(Path(cfg.audio_latents), mmap=True)
    manifest = cfg.manifest or audio.meta.get("source_manifest")
    if manifest is None:
        raise InputError(
            f"--method asr-cascade: {cfg.audio_latents} does not say which manifest it came from; give --manifest"
        )
    by_id = {clip.id: clip.audio for clip in read_manifest(manifest, cfg.audio_dir)}
    paths = []
    for row in pairs.pairing.audio_rows:
        clip_id = audio.ids[int(row)]
        if by_id.get(clip_id) is None:
            raise InputError(f"--method asr-cascade: clip {clip_id!r} has no audio file in manifest {manifest}")
        paths.append(Path(by_id[clip_id]))
    return paths


def evaluate_cascade(cfg: EvalConfig, pairs: EvalPairs, curve: bool = False) -> dict:
    """Metrics of the ASR cascade on the clips and captions of ``pairs`` (transcripts cached on disk)."""
    from fusion.asr import AsrSettings

    text = load_latents(Path(cfg.text_latents), mmap=True)
    if text.texts is None:
        raise InputError(f"--method asr-cascade: {cfg.text_latents} holds no caption texts (not a text cache?)")
    captions = [text.texts[int(row)] for row in pairs.pairing.caption_rows]
    cache = cfg.transcripts or (Path(cfg.json).parent / "asr_transcripts.json" if cfg.json else None)
    if cache is None:
        logger.info("asr-cascade: no --json or --transcripts, so transcripts are not kept")
    settings = AsrSettings(beam_size=cfg.asr_beam_size)
    sim, _ = asr_cascade_similarity(
        clip_audio_paths(cfg, pairs), captions, settings, cfg.cascade_text_encoder, cache, progress=cfg.progress
    )
    out = retrieval_metrics(sim, pairs.caption_clip)
    out["asr"] = {**settings.key(), "text_encoder": cfg.cascade_text_encoder}
    if curve:
        out["curve"] = recall_curve(sim, pairs.caption_clip)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusemix eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--audio-latents", required=True, help="evaluation audio latent cache")
    p.add_argument("--text-latents", required=True, help="evaluation caption latent cache")
    p.add_argument("--checkpoint", help="FuseMix run folder (OUT of fusemix train) or model folder")
    p.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        default=["fusemix"],
        dest="methods",
        help="what to evaluate (several give one table row each)",
    )
    p.add_argument("--train-audio-latents", help="training audio cache (fits linear/procrustes)")
    p.add_argument("--train-text-latents", help="training caption cache (fits linear/procrustes)")
    p.add_argument("--json", help="write metrics JSON here")
    p.add_argument("--plot", help="write the R@k curve (k = 1..50) PNG here")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    cascade = p.add_argument_group("asr-cascade (Whisper transcript -> text encoder -> nearest caption)")
    cascade.add_argument("--manifest", help="audio manifest (default: the one the audio cache was extracted from)")
    cascade.add_argument("--audio-dir", help="where the manifest's relative audio paths resolve")
    cascade.add_argument("--transcripts", help="transcript cache JSON (default: asr_transcripts.json next to --json)")
    cascade.add_argument("--asr-beam-size", type=int, default=5, help="Whisper beam width")
    cascade.add_argument(
        "--cascade-text-encoder", default=CASCADE_TEXT_ENCODER, help="text encoder for transcripts and captions"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    cfg = EvalConfig(**vars(build_parser().parse_args(argv)))
    results = run(cfg)
    curves = {name: m.pop("curve") for name, m in results.items() if "curve" in m}
    print(format_table(results))
    if cfg.json:
        payload = results[cfg.methods[0]] if len(results) == 1 else results
        atomic_write_json(Path(cfg.json), payload)
        logger.info("metrics written to %s", cfg.json)
    if cfg.plot:
        plot_recall_curves(curves, cfg.plot)
        logger.info("R@k curve written to %s", cfg.plot)
    return 0
