"""The Gradio app: audio in (upload or microphone), images and "what it heard" out. Thin over the pipeline.

    fusemix ui                      # http://127.0.0.1:7860, the shipped demo model, offline
    fusemix ui --port 8080 --preset sd-turbo --device cuda

``build_app(pipeline)`` makes the Blocks; ``fusemix/ui.py`` loads the pipeline once and launches it. The one
endpoint is ``/generate``. Errors a user can act on (a file that is not audio, a clip too long, a bad setting)
are shown in the page as one line; anything else is logged with its traceback on the server and shown as a
short message, and the app keeps serving.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from fusion.errors import FusemixError, InputError
from generator.presets import shipped_path
from generator.records import Settings, clip_seed, image_record, split_output

log = logging.getLogger(__name__)

EXAMPLES = shipped_path("examples")
MAX_TEXT_CHARS = 1000  # longest text prompt accepted (the text encoder reads far fewer tokens anyway)
VIEW_SIZE = 256  # images smaller than this are shown upscaled (nearest neighbour, so pixels stay sharp)
CAPTION_HEADERS = ["what it heard (nearest captions)", "cosine"]


@dataclass
class Example:
    """A bundled clip shown as a one-click example."""

    audio: Path
    label: str  # what is said in it


def bundled_examples(folder: Path = EXAMPLES) -> list[Example]:
    """The example clips listed in ``folder/prompts.jsonl`` that exist (none when the folder is not shipped)."""
    listing = folder / "prompts.jsonl"
    if not listing.is_file():
        return []
    examples = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            audio = folder / record["audio"]
            if audio.is_file():
                examples.append(Example(audio, record.get("caption", audio.stem)))
    return examples


def _seconds(timings: dict[str, float]) -> str:
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in timings.items() if k != "total")
    return f"**{timings.get('total', sum(timings.values())):.2f} s** ({parts})"


class Generator:
    """The ``generate`` event: one clip (+ optional text) -> images, nearest captions, a line of timings."""

    def __init__(self, pipeline: Any, max_file_mb: float | None = None):
        self.pipeline = pipeline
        self.max_file_mb = max_file_mb  # also enforced by gradio at upload; checked again for direct API calls

    def generate(
        self,
        audio: str | None,
        text: str,
        text_weight: float,
        mode: str,
        steps: float,
        guidance: float,
        seed: float | None,
        random_seed: bool,
        num_images: float,
    ) -> tuple[list[Any], list[list[Any]], str]:
        from generator.audio_to_image import upscale

        if not audio:
            raise gr.Error("Upload a clip or record one first.", print_exception=False)
        if random_seed or seed is None:
            seed = secrets.randbelow(2**31)
        text = (text or "").strip()
        try:
            self.check_request(audio, text)
            settings = self.settings(mode, steps, guidance, seed, num_images, text, text_weight)
            output = self.pipeline(
                [audio],
                mode=mode,
                text=settings.text,
                text_weight=settings.text_weight,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                num_images_per_audio=settings.num_images_per_audio,
                # the clip's seed from the seed and the file's name: fusemix generate/batch draw the same images
                seed=[clip_seed(settings.seed, Path(audio).stem)],
            )
        except FusemixError as err:
            # the message names gradio's temporary copy of the upload; the user knows it by its own name
            message = str(err).replace(audio, Path(audio).name)
            raise gr.Error(html.escape(message), print_exception=False) from None
        except Exception as err:
            log.exception("generation failed for %s", audio)
            raise gr.Error(f"Generation failed ({type(err).__name__}); the server log has the details.") from None
        images = [upscale(im, VIEW_SIZE) if max(im.size) < VIEW_SIZE else im for im in output.images[0]]
        # the same record fusemix generate/batch write (generator.records); the page shows its parts
        record = image_record(Path(audio).stem, Path(audio).name, 0, None, None, split_output(output)[0], settings)
        info = f"seed {settings.seed} (clip seed {record['seed']}) · {_seconds(record['timings'])}"
        if record["prompt"]:
            how = "retrieve mode" if record["mode"] == "retrieve" else "translate mode, the sound far off every scene"
            info += f"\n\nprompt used ({how}): *{record['prompt']}*"
        return images, record["heard"], info

    def settings(
        self, mode: str, steps: float, guidance: float, seed: float, num_images: float, text: str, text_weight: float
    ) -> Settings:
        """The request's options as the records of fusemix generate/batch hold them."""
        preset = getattr(getattr(self.pipeline, "preset", None), "folder", None)
        return Settings(
            preset=str(preset) if preset else None,
            mode=mode,
            steps=int(steps),
            guidance=float(guidance),
            seed=int(seed),
            num_images_per_audio=int(num_images),
            text=text or None,
            text_weight=float(text_weight) if text else 0.0,
            view_size=VIEW_SIZE,
        )

    def check_request(self, audio: str, text: str) -> None:
        """Limits a request must meet before any model runs: prompt length and upload size."""
        if len(text) > MAX_TEXT_CHARS:
            raise InputError(f"the text prompt has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
        size = Path(audio).stat().st_size if Path(audio).is_file() else 0
        if self.max_file_mb and size > self.max_file_mb * 1024 * 1024:
            raise InputError(f"audio file {audio}: {size / 2**20:.1f} MB is over the limit of {self.max_file_mb:g} MB")


def build_app(pipeline: Any, examples: list[Example] | None = None, max_file_mb: float | None = None) -> gr.Blocks:
    """The Blocks of the app around a loaded ``AudioToImagePipeline`` (anything with its call signature)."""
    examples = bundled_examples() if examples is None else examples
    handler = Generator(pipeline, max_file_mb)
    preset = getattr(pipeline, "preset", None)  # the real pipeline knows its model's default steps and guidance
    default_steps, default_guidance = getattr(preset, "steps", 20), getattr(preset, "guidance", 3.0)
    default_mode = getattr(preset, "mode", "translate")
    limits = f"clips up to {pipeline.max_seconds:g} s" + (f", files up to {max_file_mb:g} MB" if max_file_mb else "")
    with gr.Blocks(title="FuseMix: sound to image", analytics_enabled=False) as app:
        gr.Markdown(
            "# FuseMix: sound to image\n"
            f"Upload or record a sound ({limits}); the model turns what it hears into a picture. "
            "The table shows the captions nearest to the sound in the shared space."
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Sound", elem_id="audio")
                with gr.Row():
                    text = gr.Textbox(label="Text prompt (optional)", placeholder="mixed with the sound", scale=3)
                    text_weight = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Text weight", scale=1)
                mode = gr.Radio(
                    ["translate", "retrieve"],
                    value=default_mode,
                    label="Mode",
                    info="translate: the sound steers the image model directly; retrieve: the nearest caption is the prompt",
                )
                with gr.Row():
                    steps = gr.Slider(1, 100, value=default_steps, step=1, label="Steps")
                    guidance = gr.Slider(0.0, 15.0, value=default_guidance, step=0.5, label="Guidance")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="Seed")
                    random_seed = gr.Checkbox(value=True, label="Random seed")
                    num_images = gr.Slider(1, 8, value=1, step=1, label="Images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="Images", columns=2, format="png", object_fit="contain", elem_id="gallery")
                heard = gr.Dataframe(
                    headers=CAPTION_HEADERS,
                    datatype=["str", "number"],
                    interactive=False,
                    label="What it heard",
                    elem_id="heard",
                )
                info = gr.Markdown(elem_id="info")
        if examples:
            gr.Examples(
                examples=[[str(e.audio)] for e in examples],
                inputs=[audio],
                example_labels=[e.label for e in examples],
                label="Examples (spoken descriptions of the demo world)",
            )
        button.click(
            handler.generate,
            inputs=[audio, text, text_weight, mode, steps, guidance, seed, random_seed, num_images],
            outputs=[gallery, heard, info],
            api_name="generate",
        )
    return app
