"""`fusemix extract`: encode a manifest's audio (audio encoder) or captions (text encoder) once, cache the latents.

    fusemix extract --encoder whisper-tiny.en --manifest data/clips.jsonl --out latents/audio
    fusemix extract --encoder all-MiniLM-L6-v2 --manifest data/audiocaps/train.csv --out latents/text
    fusemix extract --encoder whisper-tiny.en --manifest clotho_captions_evaluation.csv \\
        --audio-dir clotho/evaluation --out latents/clotho-audio --tokens 32 --strict

Re-running the same command resumes an interrupted run. Unreadable audio files are skipped and listed in
OUT/failures.json (``--strict`` stops instead).

Robustness to unseen voices and rooms: ``--augment K`` also encodes K augmented views of every clip (tempo, pitch,
reverberation, noise at several SNRs, telephone/low-pass band; ``fusion.augment``) as extra rows ``<clip id>#aug<k>``;
``fusemix train`` draws one row per clip per epoch, evaluation uses the clean rows. ``--augment-seed`` picks the views.

    fusemix extract --encoder whisper-tiny.en --manifest data/train.jsonl --out latents/audio-aug --augment 4

Several processes or machines, one folder (the merged cache equals a one-process run):

    torchrun --nproc_per_node 8 -m fusemix extract ... --device cuda          # one GPU per process
    accelerate launch --num_processes 8 -m fusemix extract ... --device cuda  # the same through accelerate
    fusemix extract ... --num-shards 16 --shard-index $SLURM_ARRAY_TASK_ID     # one part per job of an array
    fusemix extract --finalize --out latents/audio   # if no part could write the manifest (e.g. one was re-run)

Under a launcher rank 0 writes OUT/manifest.json after all ranks are done; in a job array the last part to finish
does. Each part resumes on its own: re-run the same command (same --shard-index) after a crash.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from fusion.cache import MANIFEST
from fusion.extract import FAILURES, ExtractConfig, current_part, extract, finalize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusemix extract", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--encoder", help="encoder name, e.g. whisper-tiny.en or all-MiniLM-L6-v2 (required)")
    parser.add_argument("--manifest", type=Path, help="AudioCaps CSV, Clotho captions CSV or JSONL/CSV (required)")
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
    parser.add_argument("--num-shards", type=int, default=1, help="split the work into N parts, e.g. a job array")
    parser.add_argument("--shard-index", type=int, default=0, help="the part this job encodes, 0..N-1 (default 0)")
    parser.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="K",
        help="also encode K augmented views of each clip (audio encoders; rows <clip id>#aug1..K; default 0: none)",
    )
    parser.add_argument(
        "--augment-seed", type=int, default=0, help="seed of the views: view k of a clip depends on it (default 0)"
    )
    parser.add_argument(
        "--finalize", action="store_true", help="only write OUT/manifest.json from the finished parts (needs --out)"
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.finalize:
        missing = [flag for flag in ("--encoder", "--manifest") if getattr(args, flag[2:]) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def parse_config(argv: list[str] | None) -> ExtractConfig:
    return config_from_args(parse_args(argv))


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
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
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        augment=args.augment,
        augment_seed=args.augment_seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.finalize:
        out = finalize(args.out, manifest=args.manifest, audio_dir=args.audio_dir, encoder=args.encoder)
    else:
        config = config_from_args(args)
        with logging_redirect_tqdm():  # warnings about skipped files print above the bar, not through it
            out = extract(config)
        part = current_part(config)
        if part.rank > 0:
            return 0  # rank 0 reports for the launcher's processes
        if not (out / MANIFEST).is_file():
            print(
                f"part {part.index} of 0..{part.count - 1} done in {out} ({time.perf_counter() - start:.1f} s); "
                f"the last part to finish writes {MANIFEST} (or: fusemix extract --finalize --out {out})"
            )
            return 0
    seconds = time.perf_counter() - start
    meta = json.loads((out / MANIFEST).read_text())
    shape = (meta["count"], meta["tokens"], meta["dim"]) if meta["tokens"] else (meta["count"], meta["dim"])
    failed = len(meta["failed"])
    print(
        f"{meta['modality']} latents {shape} from {meta['encoder']} in {out} ({seconds:.1f} s); "
        f"{failed} failed" + (f", listed in {out / FAILURES}" if failed else "")
    )
    return 0
