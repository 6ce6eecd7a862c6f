"""`fusemix batch`: turn every clip of a folder or manifest into images, resumably.

    fusemix batch --input examples --out outputs/batch
    fusemix batch --input data/demo/test.jsonl --out outputs/test --num-images-per-audio 4 --seed 7
    fusemix batch --input sounds/ --out outputs/sd --preset sd-turbo --steps 1 --guidance 0 --device cuda

Images go to OUT/<clip>_<k>.png (a folder's sub-folders are kept; small images also get an upscaled
OUT/<clip>_<k>_view.png), and OUT/results.jsonl gets one line per image (clip, image, seed, nearest captions,
timings, settings) or one line per failed clip with its error. Re-running the same command skips finished clips
and retries failed ones; re-running with other settings into the same --out refuses, unless --overwrite asks to
generate every clip again. The exit code is 1 only if some clip failed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from fusemix.cli import check_count, check_number
from fusion.errors import InputError
from generator.batch import RESULTS, BatchConfig, StaleResultsError, find_clips, run_batch, with_preset_defaults
from generator.presets import MODES, load_preset


@dataclass
class BatchCommand:
    """Everything `fusemix batch` was asked to do."""

    input: Path  # folder (searched recursively), manifest (.jsonl/.csv) or one audio file
    out: Path  # output folder; holds results.jsonl and the images
    preset: str  # "demo", a checkpoint folder, or a real model preset such as "sd15"
    device: str  # torch device
    generation: BatchConfig  # generation settings
    overwrite: bool = False  # regenerate every clip, replacing earlier results in out (whatever their settings)


class _LazyPipeline:
    """Loads the pipeline at its first call."""

    def __init__(self, preset: str, device: str):
        self.preset, self.device, self.pipeline = preset, device, None

    def __call__(self, audio: list, **kwargs: Any) -> Any:
        if self.pipeline is None:
            from generator.audio_to_image import AudioToImagePipeline

            self.pipeline = AudioToImagePipeline.from_preset(self.preset, device=self.device)
        return self.pipeline(audio, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusemix batch",
        description="Turn every clip of a folder or manifest into images, resumably.",
        epilog="Re-run the same command to resume; finished clips are skipped, failed ones retried. "
        "Other settings into the same --out need --overwrite.",
    )
    parser.add_argument("--input", required=True, type=Path, help="folder of audio (recursive), manifest or file")
    parser.add_argument("--out", required=True, type=Path, help="output folder (images + results.jsonl)")
    parser.add_argument("--num-images-per-audio", type=int, default=1, help="images per clip (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="job seed; each clip's seed derives from it (default 0)")
    parser.add_argument("--preset", default="demo", help="model: demo (shipped, offline), a folder, sd15, sd-turbo")
    parser.add_argument("--mode", choices=MODES, default=None, help="default: the preset's (retrieve for demo)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the preset's)")
    parser.add_argument("--top-k", type=int, default=5, help="nearest captions recorded per clip (default 5)")
    parser.add_argument("--view-size", type=int, default=256, help="upscaled view of smaller images; 0: none")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--overwrite", action="store_true", help="generate every clip again, replacing earlier results in --out"
    )
    return parser


def parse_command(argv: list[str] | None) -> BatchCommand:
    args = build_parser().parse_args(argv)
    for flag, value in (
        ("--steps", args.steps),
        ("--num-images-per-audio", args.num_images_per_audio),
        ("--top-k", args.top_k),
    ):
        check_count(flag, value)
    check_count("--view-size", args.view_size, minimum=0)
    check_number("--guidance", args.guidance)
    return BatchCommand(
        input=args.input,
        out=args.out,
        preset=args.preset,
        device=args.device,
        generation=BatchConfig(
            num_images_per_audio=args.num_images_per_audio,
            seed=args.seed,
            mode=args.mode,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            top_k=args.top_k,
            view_size=args.view_size,
            progress=not args.no_progress,
            preset=args.preset,
        ),
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    command = parse_command(argv)
    clips = find_clips(command.input)  # fail on a bad input before loading any model
    generation = with_preset_defaults(command.generation, load_preset(command.preset))  # reads preset.json only
    pipeline = _LazyPipeline(command.preset, command.device)  # a re-run with nothing left to do loads no model
    with logging_redirect_tqdm():  # skipped-clip warnings print above the bar, not through it
        try:
            summary = run_batch(pipeline, clips, command.out, generation, overwrite=command.overwrite)
        except StaleResultsError as err:
            raise InputError(f"{err}: pass --overwrite to generate them again, or choose another --out") from None
    print(
        f"{len(clips)} clips: {summary.done} done, {summary.skipped} skipped (already done), "
        f"{summary.failed} failed; {summary.images} images in {command.out} ({summary.seconds:.1f} s); "
        f"details in {command.out / RESULTS}"
    )
    for clip_id, error in list(summary.errors.items())[:10]:
        print(f"  failed {clip_id}: {error}")
    if len(summary.errors) > 10:
        print(f"  ... and {len(summary.errors) - 10} more")
    return 1 if summary.failed else 0
