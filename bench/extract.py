"""Extraction throughput: ``fusion.extract`` batched vs one clip at a time, per encoder, on espeak-ng speech.

Clips are spoken demo-world captions, synthesised with espeak-ng into a temporary folder (22.05 kHz WAV, so
decoding includes the resampling to 16 kHz that real datasets need), listed in a generic JSONL manifest. Each
encoder is loaded once (not timed) and handed to ``fusion.extract.extract`` through its ``load_encoder`` hook; the
timed call is the whole extraction: manifest, decoding (threads), encoding, shard and manifest writes.

Variants, run interleaved (one, batched, one, batched, ...):
- ``one``: ``batch_size=1, workers=1`` (the next clip still decodes while this one encodes)
- ``batched``: ``batch_size=16`` (64 for text), ``workers=2``

Times are CPU seconds of the process (torch on one thread by default; CTranslate2 keeps its own thread pool), as
on a shared machine the wall clock mostly measures the other tenants; wall-time ratios are printed too.

A second table splits one clip's cost into decoding, Whisper features and the encoder's forward pass, the limits.

    .venv/bin/python bench/extract.py                        # whisper-tiny.en, whisper-tiny.en-10s, MiniLM
    .venv/bin/python bench/extract.py --encoders whisper-tiny.en-10s --clips 64
    .venv/bin/python bench/extract.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import soundfile as sf

import fusion.extract as extract_module
from bench.common import load_average, machine_line, measure, table
from fusion.audio import load_audio
from fusion.extract import ExtractConfig, extract

DEFAULT_ENCODERS = ("whisper-tiny.en", "whisper-tiny.en-10s", "all-MiniLM-L6-v2")


@dataclass
class BenchConfig:
    """Sizes of the run; argparse fills it."""

    encoders: tuple[str, ...] = DEFAULT_ENCODERS
    clips: int = 24  # spoken clips (audio encoders)
    captions: int = 512  # captions (text encoders): the clips' captions repeated with numbering
    audio_batch: int = 16
    text_batch: int = 64
    repeats: int = 2
    seed: int = 0


def synthesise(folder: Path, n: int, seed: int) -> Path:
    """``n`` spoken demo-world captions as WAV files and a JSONL manifest; returns the manifest path."""
    from demoworld.scenes import TEMPLATES, caption, random_scene
    from demoworld.speech import espeak

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        text = caption(random_scene(rng), int(rng.integers(len(TEMPLATES))), rng)
        audio, sr = espeak(text, "en", int(rng.integers(120, 170)), int(rng.integers(30, 70)))
        path = folder / f"clip-{i:04d}.wav"
        sf.write(path, np.concatenate([np.zeros(sr // 2, np.float32), audio, np.zeros(sr // 2, np.float32)]), sr)
        lines.append(json.dumps({"id": f"clip-{i:04d}", "audio": path.name, "captions": [text]}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def caption_manifest(folder: Path, audio_manifest: Path, n: int) -> Path:
    """``n`` captions (the clips' captions, numbered so none repeats) in a captions-only JSONL manifest."""
    texts = [json.loads(line)["captions"][0] for line in audio_manifest.read_text().splitlines()]
    path = folder / "captions.jsonl"
    rows = [json.dumps({"id": f"cap-{i:05d}", "captions": [f"{texts[i % len(texts)]} ({i})"]}) for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run_extract(encoder, manifest: Path, out: Path, batch: int, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole ``extract`` with a preloaded encoder."""
    original = extract_module.load_encoder
    extract_module.load_encoder = lambda name, device="cpu": encoder
    config = ExtractConfig(
        encoder=encoder.name, manifest=manifest, out=out, batch_size=batch, workers=workers, progress=False
    )
    try:
        wall, cpu, _ = measure(lambda: extract(config))
        return wall, cpu
    finally:
        extract_module.load_encoder = original


def breakdown(encoder, manifest: Path, n: int) -> list[object]:
    """Per-clip ms of decoding, Whisper features and the encoder forward pass (one clip, then a batch of 8)."""
    paths = [manifest.parent / json.loads(line)["audio"] for line in manifest.read_text().splitlines()[:n]]
    t0 = time.process_time()
    waves = [load_audio(p, encoder.sample_rate) for p in paths]
    decode = (time.process_time() - t0) / len(waves)
    fe = encoder.feature_extractor
    t0 = time.process_time()
    feats = [
        fe([w], sampling_rate=encoder.sample_rate, return_tensors="np", padding="max_length").input_features
        for w in waves
    ]
    features = (time.process_time() - t0) / len(waves)
    t0 = time.process_time()
    for f in feats:
        encoder._frames(f.astype(np.float32))
    forward1 = (time.process_time() - t0) / len(feats)
    batch = np.concatenate(feats[:8]).astype(np.float32)
    t0 = time.process_time()
    encoder._frames(batch)
    forward8 = (time.process_time() - t0) / len(batch)
    seconds = statistics.mean(len(w) / encoder.sample_rate for w in waves)
    return [
        encoder.name,
        f"{seconds:.1f}",
        f"{1e3 * decode:.0f}",
        f"{1e3 * features:.0f}",
        f"{1e3 * forward1:.0f}",
        f"{1e3 * forward8:.0f}",
        f"{encoder.max_frames}",
    ]


def build_config(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", default=",".join(DEFAULT_ENCODERS), help="comma-separated encoder names")
    p.add_argument("--clips", type=int, default=24, help="spoken clips for audio encoders")
    p.add_argument("--captions", type=int, default=512, help="captions for text encoders")
    p.add_argument("--audio-batch", type=int, default=16)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = the work)")
    p.add_argument("--quick", action="store_true", help="4 clips of whisper-tiny.en-10s, 64 captions, 1 round")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    cfg = BenchConfig(
        tuple(e.strip() for e in a.encoders.split(",") if e.strip()),
        a.clips,
        a.captions,
        a.audio_batch,
        a.text_batch,
        a.repeats,
    )
    if a.quick:
        cfg.encoders, cfg.clips, cfg.captions, cfg.repeats, cfg.audio_batch = (
            ("whisper-tiny.en-10s", "all-MiniLM-L6-v2"),
            4,
            64,
            1,
            4,
        )
    for name in ("clips", "captions", "audio_batch", "text_batch", "repeats"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = build_config(argv)
    logging.getLogger("fusion").setLevel(logging.WARNING)
    from fusion.encoders import load_encoder

    print(machine_line())
    rows, parts = [], []
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        root = Path(tmp)
        audio_manifest = synthesise(root / "clips", cfg.clips, cfg.seed)
        text_manifest = caption_manifest(root / "clips", audio_manifest, cfg.captions)
        for name in cfg.encoders:
            encoder = load_encoder(name)
            audio = encoder.modality == "audio"
            manifest, n = (audio_manifest, cfg.clips) if audio else (text_manifest, cfg.captions)
            variants = {"one": (1, 1), "batched": (cfg.audio_batch if audio else cfg.text_batch, 2)}
            run_extract(encoder, manifest, root / f"warm-{name}", *variants["batched"])  # warm-up, not timed
            cpus: dict[str, list[float]] = {v: [] for v in variants}
            walls: dict[str, list[float]] = {v: [] for v in variants}
            for r in range(cfg.repeats):
                for v, (batch, workers) in variants.items():
                    wall, cpu = run_extract(encoder, manifest, root / f"{name}-{v}-{r}", batch, workers)
                    walls[v].append(wall)
                    cpus[v].append(cpu)
                    print(
                        f"  {name} round {r + 1} {v}: {wall:.2f} s wall, {cpu:.2f} CPU s (load avg {load_average()})",
                        flush=True,
                    )
            one_cpu, one_wall = statistics.mean(cpus["one"]), statistics.mean(walls["one"])
            for v, (batch, workers) in variants.items():
                c, w = statistics.mean(cpus[v]), statistics.mean(walls[v])
                rows.append(
                    [
                        name,
                        v,
                        batch,
                        workers,
                        n,
                        f"{c:.2f}",
                        f"{n / c:.1f}",
                        f"{one_cpu / c:.2f}x",
                        f"{one_wall / w:.2f}x",
                    ]
                )
            if audio:
                parts.append(breakdown(encoder, audio_manifest, min(8, cfg.clips)))
    print(f"\nmean of {cfg.repeats} interleaved rounds; items = clips (audio) or captions (text)\n")
    print(
        table(
            [
                "encoder",
                "variant",
                "batch",
                "workers",
                "items",
                "CPU s",
                "items/CPU-s",
                "vs one (CPU)",
                "vs one (wall)",
            ],
            rows,
        )
    )
    if parts:
        print("\nper-clip CPU cost (ms) on the same clips; forward x8 = per clip within a batch of 8\n")
        print(table(["encoder", "clip s", "decode", "features", "forward x1", "forward x8", "frames"], parts))
    print(f"\nload average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
