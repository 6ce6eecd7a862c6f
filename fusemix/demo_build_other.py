"""`fusemix demo build-other`: speak a demo-world split again with a synthesizer training never uses (Flite).

fusemix demo build-other --out data/demo_flite --from data/demo --split test --limit 200

The scenes, captions and images are the source build's; only the voices change (``demoworld.flite_speech``: every
Flite voice, none ever used in training). Output as `fusemix demo build-neural` writes it: ``audio/<clip id>.wav``,
``images/``, ``<split>.jsonl`` and ``README.json``. Re-running resumes; a larger ``--limit`` adds clips.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from demoworld import flite_speech, neural_speech, speech
from fusemix.demo_build_neural import copy_image, finish_build, read_source, start_build

FORMAT_VERSION = 1


@dataclass
class OtherBuildConfig:
    """What `fusemix demo build-other` makes."""

    out: Path  # output folder (re-run to resume)
    source: Path  # a `fusemix demo build` folder whose captions are spoken again
    split: str = "test"  # which split of the source
    limit: int | None = None  # speak only the first LIMIT clips of the split (all when None)
    seed: int = 0  # voices, speeds and noise are drawn from it
    progress: bool = True  # show a tqdm progress bar


def build_settings(config: OtherBuildConfig) -> dict:
    """What decides the files' content (not the limit: a larger one extends a build)."""
    source_manifest = Path(config.source) / f"{config.split}.jsonl"
    version = subprocess.run([flite_speech.check_flite(), "--version"], capture_output=True, text=True, check=False)
    return {
        "format_version": FORMAT_VERSION,
        "synthesizer": flite_speech.SYNTHESIZER,
        "flite": version.stdout.strip().splitlines()[0] if version.stdout.strip() else "",
        "source": str(Path(config.source).resolve()),
        "source_manifest_sha256": hashlib.sha256(source_manifest.read_bytes()).hexdigest(),
        "split": config.split,
        "seed": config.seed,
        "voices": flite_speech.VOICES,
        "duration_stretch": flite_speech.SPEED_RANGE,
        "snr_db": speech.SNR_RANGE_DB,
        "gain": speech.GAIN_RANGE,
        "noise": speech.NOISE_COLOURS,
        "pad_seconds": speech.PAD_SECONDS,
        "sample_rate": speech.SAMPLE_RATE,
    }


def manifest_line(line: dict, settings: flite_speech.FliteSettings) -> dict:
    """The source line with the new clip's audio and voice fields (same keys as `fusemix demo build` writes)."""
    out = dict(line)
    out.update(audio=f"audio/{line['id']}.wav", voice=settings.voice, speed=settings.stretch, pitch=None,
               snr_db=settings.snr_db, noise=settings.noise, gain=settings.gain,
               synthesizer=flite_speech.SYNTHESIZER, source_audio=line.get("audio"))  # fmt: skip
    return out


def speak_all(config: OtherBuildConfig, lines: list[dict]) -> tuple[list[dict], int]:
    """Speak every clip not already on disk; settings are keyed by (seed, split, index) alone."""
    split_index = neural_speech.SPLITS.index(config.split)
    out_lines, made = [], 0
    for index, line in enumerate(tqdm(lines, desc=f"flite {config.split} clips", disable=not config.progress)):
        settings = flite_speech.draw_settings(np.random.default_rng([config.seed, 21, split_index, index]))
        path = Path(config.out) / "audio" / f"{line['id']}.wav"
        if not path.exists():
            rng = np.random.default_rng([config.seed, 22, split_index, index])
            speech.write_wav(path, flite_speech.speak_clip(line["caption"], settings, rng))
            made += 1
        copy_image(config, line)
        out_lines.append(manifest_line(line, settings))
    return out_lines, made


def build_other(config: OtherBuildConfig) -> dict:
    """Write the other-synthesizer split into ``config.out`` and return its README dict; resumes."""
    start = time.perf_counter()
    lines = read_source(config)
    settings = build_settings(config)
    start_build(config, settings)
    out_lines, made = speak_all(config, lines)
    what = "FuseMix demo world, one split spoken again by Flite voices (a synthesizer training never uses)"
    return finish_build(config, out_lines, what, {
        "settings": settings,
        "build_seconds": round(time.perf_counter() - start, 2),
        "clips_synthesized_this_run": made,
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusemix demo build-other", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (re-run the same command to resume)")
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a `fusemix demo build` folder")
    parser.add_argument("--split", default="test", choices=neural_speech.SPLITS, help="which split to speak again")
    parser.add_argument("--limit", type=int, help="speak only the first LIMIT clips of the split")
    parser.add_argument("--seed", type=int, default=0, help="voices, speeds and noise are drawn from it")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    config = OtherBuildConfig(out=args.out, source=args.source, split=args.split, limit=args.limit, seed=args.seed,
                              progress=not args.no_progress)  # fmt: skip
    readme = build_other(config)
    clips = readme["counts"][config.split]["clips"]
    print(f"flite {config.split} split in {config.out}: {clips} clips "
          f"({readme['clips_synthesized_this_run']} made this run); built in {readme['build_seconds']} s")  # fmt: skip
    return 0
