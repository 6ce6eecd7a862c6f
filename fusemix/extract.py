"""`fusemix extract`: encode a manifest's audio (audio encoder) or captions (text encoder) once, cache the latents.

    fusemix extract --encoder whisper-tiny.en --manifest data/clips.jsonl --out latents/audio
    fusemix extract --encoder all-MiniLM-L6-v2 --manifest data/audiocaps/train.csv --out latents/text
    fusemix extract --encoder whisper-tiny.en --manifest clotho_captions_evaluation.csv \\
        --audio-dir clotho/evaluation --out latents/clotho-audio --tokens 32 --strict

Re-running the same command resumes an interrupted run. Unreadable audio files are skipped and listed in
OUT/failures.json (``--strict`` stops instead).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from fusion.cache import MANIFEST
from fusion.extract import FAILURES, ExtractConfig, extract


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusemix extract", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--encoder", required=True, help="encoder name, e.g. whisper-tiny.en or all-MiniLM-L6-v2")
    parser.add_argument("--manifest", required=True, type=Path, help="AudioCaps CSV, Clotho captions CSV or JSONL/CSV")
    parser.add_argument("--out", required=True, type=Path, help="cache folder to write (or resume)")
    parser.add_argument("--tokens", type=int, default=None, help="keep K tokens per item instead of one pooled vector")
    parser.add_argument("--batch-size", type=int, default=16, help="items per encoder call (default 16)")
    parser.add_argument("--shard-size", type=int, default=1024, help="items per shard file (default 1024)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable audio file")
    parser.add_argument("--audio-dir", type=Path, default=None, help="folder of the audio files (default: manifest's)")
    parser.add_argument("--device", default="cpu", help="torch device for the encoder (default cpu)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="longer audio is a failure (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="audio decoding threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_config(argv: list[str] | None) -> ExtractConfig:
    args = build_parser().parse_args(argv)
    return ExtractConfig(
        encoder=args.encoder,
        manifest=args.manifest,
        out=args.out,
        tokens=args.tokens,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        strict=args.strict,
        audio_dir=args.audio_dir,
        device=args.device,
        progress=not args.no_progress,
        max_seconds=args.max_seconds,
        workers=args.workers,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    start = time.perf_counter()
    with logging_redirect_tqdm():  # warnings about skipped files print above the bar, not through it
        out = extract(config)
    seconds = time.perf_counter() - start
    meta = json.loads((out / MANIFEST).read_text())
    shape = (meta["count"], meta["tokens"], meta["dim"]) if meta["tokens"] else (meta["count"], meta["dim"])
    failed = len(meta["failed"])
    print(
        f"{meta['modality']} latents {shape} from {meta['encoder']} in {out} ({seconds:.1f} s); "
        f"{failed} failed" + (f", listed in {out / FAILURES}" if failed else "")
    )
    return 0
