"""`fusemix generate`: turn audio files into images (offline on the embedded demo preset).

    fusemix generate examples/large_red_circle_on_blue.ogg --out outputs/gen
    fusemix generate a.wav b.wav --out outputs/gen --seed 1 --steps 20 --guidance 3 --mode retrieve
    fusemix generate a.wav --out outputs/gen --text "a green background" --text-weight 0.3
Writes <clip>_<k>.png, an upscaled <clip>_<k>_view.png for small outputs, and <clip>_<k>.json: the same record
`fusemix batch` writes to results.jsonl (audio, seed, what it heard, timings, settings). A clip's seed comes from
--seed and the file's name alone, as in `fusemix batch` and the UI, so the same file gives the same images there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusemix.cli import check_count, check_number
from fusion.errors import InputError, MissingFileError
from generator.audio_to_image import MODES, AudioToImagePipeline
from generator.generate import save_outputs
from generator.records import Settings, clip_seed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fusemix generate", description=__doc__.split("\n")[0])
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="demo", help="demo (shipped), sd15, sd-turbo, or a preset folder")
    p.add_argument("--seed", type=int, default=0, help="job seed; each clip's seed derives from it and the file name")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the preset's)")
    p.add_argument("--mode", choices=MODES, default=None, help="default: the preset's (retrieve for demo)")
    p.add_argument("--text", default=None, help="optional text prompt mixed with the audio in the shared space")
    p.add_argument(
        "--text-weight", type=float, default=None, help="weight of --text in [0, 1] (default 0.3 with --text)"
    )
    p.add_argument("--num-images-per-audio", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8, help="clips per pipeline call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress", action="store_true", help="show the denoising progress bar")
    a = p.parse_args(argv)
    if a.text_weight is None:
        a.text_weight = 0.3 if a.text else 0.0
    for flag, value in (("--batch-size", a.batch_size), ("--num-images-per-audio", a.num_images_per_audio)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    check_count("--steps", a.steps)
    check_number("--guidance", a.guidance)
    check_number("--text-weight", a.text_weight, 0.0, 1.0)
    _check_audio(a.audio)
    return a


def _check_audio(files: list[str]) -> None:
    """Every file exists, and no two share a name (their images and seeds would be the same)."""
    names: dict[str, str] = {}
    for path in files:
        if Path(path).is_dir():
            raise InputError(f"audio {path}: is a folder, not a file (fusemix batch --input takes folders)")
        if not Path(path).is_file():
            raise MissingFileError(f"audio file not found: {path}")
        stem = Path(path).stem
        if stem in names:
            raise InputError(f"audio {names[stem]} and {path} share the name {stem!r}: their images would collide")
        names[stem] = path


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    pipe = AudioToImagePipeline.from_preset(a.preset, device=a.device)
    out = Path(a.out)
    settings = Settings(
        preset=a.preset,
        mode=a.mode or pipe.preset.mode,
        steps=pipe.preset.steps if a.steps is None else a.steps,
        guidance=pipe.preset.guidance if a.guidance is None else a.guidance,
        seed=a.seed,
        num_images_per_audio=a.num_images_per_audio,
        text=a.text,
        text_weight=a.text_weight,
    )
    for start in range(0, len(a.audio), a.batch_size):
        files = a.audio[start : start + a.batch_size]
        names = [Path(f).stem for f in files]
        result = pipe(
            files,
            mode=settings.mode,
            text=a.text,
            text_weight=a.text_weight,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            num_images_per_audio=a.num_images_per_audio,
            seed=[clip_seed(a.seed, name) for name in names],
            top_k=settings.top_k,
            progress=a.progress,
        )
        save_outputs(out, names, result, [str(f) for f in files], settings)
        per_clip = result.timings["total"] / len(files)
        for name, heard, prompt in zip(names, result.heard, result.prompts, strict=True):
            top = f"{heard[0][0]!r} ({heard[0][1]:.2f})" if heard else "-"
            handed = ", drawn from it (far off every scene)" if prompt and result.mode == "translate" else ""
            print(f"{name}: heard {top}{handed}  [{per_clip:.2f} s/clip]")
    print(f"images written to {out}/")
    return 0
