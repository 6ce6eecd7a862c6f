"""`fusemix generate`: turn audio files into images (offline on the embedded demo preset).

    fusemix generate examples/large_red_circle_on_blue.ogg --out outputs/gen
    fusemix generate a.wav b.wav --out outputs/gen --seed 1 --steps 20 --guidance 3 --mode retrieve
    fusemix generate a.wav --out outputs/gen --text "a green background" --text-weight 0.3
Writes <clip>_<k>.png, an upscaled <clip>_<k>_view.png for small outputs, and <clip>_<k>.json (audio, what it
heard, settings, timing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from generator.audio_to_image import MODES, AudioToImagePipeline
from generator.generate import save_outputs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fusemix generate", description=__doc__.split("\n")[0])
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="demo", help="demo (shipped), sd15, sd-turbo, or a preset folder")
    p.add_argument("--seed", type=int, default=0, help="image j of clip i uses seed + 1000*i + j")
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
    a = p.parse_args(argv)
    if a.text_weight is None:
        a.text_weight = 0.3 if a.text else 0.0
    for path in a.audio:
        if not Path(path).is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    pipe = AudioToImagePipeline.from_preset(a.preset, device=a.device)
    out = Path(a.out)
    settings = {
        "preset": a.preset,
        "mode": a.mode or pipe.preset.mode,
        "steps": a.steps or pipe.preset.steps,
        "guidance": pipe.preset.guidance if a.guidance is None else a.guidance,
        "text": a.text,
        "text_weight": a.text_weight,
    }
    for start in range(0, len(a.audio), a.batch_size):
        files = a.audio[start : start + a.batch_size]
        result = pipe(
            files,
            mode=a.mode,
            text=a.text,
            text_weight=a.text_weight,
            num_inference_steps=a.steps,
            guidance_scale=a.guidance,
            num_images_per_audio=a.num_images_per_audio,
            seed=a.seed + 1000 * start,
        )
        names = [Path(f).stem for f in files]
        save_outputs(out, names, result, [str(f) for f in files], settings)
        per_clip = result.timings["total"] / len(files)
        for name, heard in zip(names, result.heard, strict=True):
            top = f"{heard[0][0]!r} ({heard[0][1]:.2f})" if heard else "-"
            print(f"{name}: heard {top}  [{per_clip:.2f} s/clip]")
    print(f"images written to {out}/")
    return 0
