"""Integration tests on the shipped embedded default (checkpoints/demo): the main job works offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from demoworld import scenes
from demoworld.judge import judge_image
from fusemix.cli import main as fusemix
from generator.audio_to_image import AudioToImagePipeline
from generator.presets import CHECKPOINTS, load_preset, shipped_path

EXAMPLES = shipped_path("examples")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipe() -> AudioToImagePipeline:
    return AudioToImagePipeline.from_preset("demo")


def test_shipped_checkpoints_are_small_and_safetensors_only():
    files = [p for p in (CHECKPOINTS / "demo").rglob("*") if p.is_file()]
    # 52 MiB since the translator keeps its 448 scene anchors (5.5 MiB in float16, stop 32); 109 MiB since S is two
    # heads (stop 40: adapters 33 MiB, the translator reading both 55 MiB)
    assert sum(p.stat().st_size for p in files) < 120 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert any(p.suffix == ".safetensors" for p in files)


def test_shipped_checkpoints_equal_their_recipe(capsys):
    """`make-default --check`: the shipped configs are what generator.recipe.DEFAULT writes."""
    assert fusemix(["demo", "make-default", "--check"]) == 0, capsys.readouterr().out
    assert "matches the default recipe" in capsys.readouterr().out


def test_image_model_answers_text_prompts(pipe):
    """The shipped image model draws what a held-out-template caption says (judged by pixels)."""
    rng = np.random.default_rng(7)
    wanted = [scenes.random_scene(rng) for _ in range(16)]
    prompts = [scenes.caption(s, scenes.TEST_TEMPLATES[i % 2], rng) for i, s in enumerate(wanted)]
    images = pipe.image_pipe(
        prompt=prompts, num_inference_steps=20, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)
    ).images
    seen = [judge_image(im) for im in images]
    for attr in ("background", "colour", "shape"):
        acc = np.mean([s[attr] == w.attributes()[attr] for s, w in zip(seen, wanted, strict=True)])
        assert acc >= 0.8, f"{attr} accuracy {acc:.2f} on text prompts"


def test_demo_run_writes_images_and_judges_them(tmp_path, capsys):
    assert fusemix(["demo", "run", "--out", str(tmp_path), "--steps", "10"]) == 0
    report = json.loads((tmp_path / "judge.json").read_text())
    n = len((EXAMPLES / "prompts.jsonl").read_text().splitlines())
    assert len(report["clips"]) == n and len(list(tmp_path.glob("*_0.png"))) == n
    assert set(report["accuracy"]) >= {"background", "colour", "shape", "all"}  # demoworld.judge.score
    mode = load_preset("demo").mode
    assert report["mode"] == mode and f"accuracy ({mode} mode):" in capsys.readouterr().out  # the preset's mode


def test_generate_writes_png_view_and_sidecar(tmp_path):
    clip = sorted(EXAMPLES.glob("*.ogg"))[0]
    assert (
        fusemix(
            [
                "generate",
                str(clip),
                "--out",
                str(tmp_path),
                "--steps",
                "4",
                "--seed",
                "5",
                "--num-images-per-audio",
                "2",
            ]
        )
        == 0
    )
    sidecar = json.loads((tmp_path / f"{clip.stem}_1.json").read_text())
    from generator.records import clip_seed

    assert sidecar["seed"] == clip_seed(5, clip.stem) and sidecar["index"] == 1 and sidecar["audio"] == str(clip)
    assert len(sidecar["heard"]) == 5 and sidecar["heard"][0][1] >= sidecar["heard"][1][1]  # [caption, score]
    from PIL import Image

    assert Image.open(tmp_path / f"{clip.stem}_0.png").size == (32, 32)
    assert Image.open(tmp_path / f"{clip.stem}_0_view.png").size == (256, 256)


def test_generate_fails_in_one_line_on_bad_input(tmp_path, capsys):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert fusemix(["generate", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "noise.wav" in err[-1] and err[-1].startswith("fusemix generate: error:")
    assert not any("Traceback" in line for line in err)
    assert fusemix(["generate", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o")]) == 1
    assert "not found" in capsys.readouterr().err
    assert fusemix(["generate", str(bad), "--out", str(tmp_path / "o"), "--preset", "sd15"]) == 1
    assert "stable-diffusion-v1-5" in capsys.readouterr().err


def test_translate_mode_hands_only_the_clips_far_off_every_scene_to_retrieve(pipe):
    """Preset handoff: a translation farther than it from every anchor is drawn as retrieve mode draws it."""
    from dataclasses import replace

    points = pipe.embed_text(["a large red circle on a blue background", "purple green yellow square circle"])
    with torch.no_grad():
        distance = pipe.translator.anchor_distance(pipe.translator.translate(points))
    assert distance[1] > distance[0]  # a jumble of words lies farther off every scene than a caption
    shipped = pipe.preset
    try:
        pipe.preset = replace(shipped, handoff=float(distance.mean()))  # between the two: only the jumble is handed
        cond = pipe.condition(points, "translate")
        heard = cond.heard[1][0][0]
        assert cond.prompts == [None, heard]
        embeds, negative = cond.inputs["prompt_embeds"], cond.inputs["negative_prompt_embeds"]
        assert torch.allclose(embeds[0], pipe.translator(points)[0])
        assert torch.allclose(negative[0], pipe.translator.negative_embeds(1)[0])
        assert torch.allclose(embeds[1], pipe.prompt_embeds([heard])[0])
        assert torch.allclose(negative[1], pipe.prompt_embeds([""])[0])
        pipe.preset = replace(shipped, handoff=0.0)  # never: the translator's own conditioning for both
        plain = pipe.condition(points, "translate")
        assert plain.prompts == [None, None]
        assert torch.allclose(plain.inputs["prompt_embeds"], pipe.translator(points))
    finally:
        pipe.preset = shipped
    assert shipped.handoff > distance[0]  # the shipped threshold leaves a caption's translation to the translator
