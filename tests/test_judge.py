"""The pixel judge: exact on rendered scenes, robust to noise and blur, and its CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from demoworld import judge, scenes
from fusemix import cli


def rendered_combinations(resolution: int, seed: int = 0) -> tuple[list[np.ndarray], list[dict]]:
    """Every attribute combination rendered once, centres jittered as in random_scene."""
    rng = np.random.default_rng(seed)
    images, prompts = [], []
    for combo in scenes.all_attribute_combinations():
        jittered = scenes.random_scene(rng)
        scene = scenes.Scene(*combo, dx=jittered.dx, dy=jittered.dy)
        images.append(scenes.render(scene, resolution))
        prompts.append(scene.attributes())
    return images, prompts


def degrade(image: np.ndarray, rng: np.random.Generator, sigma: float = 15.0) -> np.ndarray:
    """Gaussian blur of 1 px per 32 px of side, then Gaussian noise of ``sigma`` grey levels."""
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=image.shape[0] / 32))
    noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0.0, sigma, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [32, 64])
def test_judge_is_exact_on_clean_and_robust_on_degraded_renders(resolution):
    images, prompts = rendered_combinations(resolution)
    assert len(images) == 448
    clean = judge.score(images, prompts)
    assert clean["accuracy"] == dict.fromkeys([*judge.ATTRIBUTES, "all"], 1.0)
    assert clean["count"] == 448

    rng = np.random.default_rng(1)
    degraded = judge.score([degrade(im, rng) for im in images], prompts)
    print(f"\njudge at {resolution} px, blur + noise 15/255: {degraded['accuracy']}")
    for attr in judge.ATTRIBUTES:
        assert degraded["accuracy"][attr] >= 0.95, (attr, degraded["accuracy"])


def test_judge_reads_one_scene_and_says_none_without_a_shape():
    scene = scenes.Scene("triangle", "orange", "large", "blue")
    assert judge.judge_image(scenes.render(scene, 32)) == {"background": "blue", "colour": "orange",
                                                           "shape": "triangle", "size": "large"}  # fmt: skip
    # floats in 0..1 and PIL images are accepted too
    as_float = scenes.render(scene, 32).astype(np.float32) / 255
    assert judge.judge_image(as_float)["shape"] == "triangle"
    assert judge.judge_image(Image.fromarray(scenes.render(scene, 64)))["colour"] == "orange"

    plain = np.zeros((32, 32, 3), np.uint8) + np.array(scenes.COLOURS["green"], np.uint8)
    assert judge.judge_image(plain) == {"background": "green", "colour": "none", "shape": "none", "size": "none"}
    noisy = np.clip(plain + np.random.default_rng(0).normal(0, 15, plain.shape), 0, 255).astype(np.uint8)
    assert judge.judge_image(noisy)["shape"] == "none"
    with pytest.raises(ValueError, match="shape"):
        judge.judge_image(np.zeros((32, 32), np.uint8))


def test_judge_tells_wrong_images_apart():
    """A wrong image must lose points: the judge is not just agreeing with the prompt."""
    want = {"shape": "circle", "colour": "red", "size": "small", "background": "blue"}
    wrong = scenes.Scene("square", "yellow", "large", "black")
    result = judge.score([scenes.render(wrong, 32)], [want])
    assert result["accuracy"] == {"background": 0.0, "colour": 0.0, "shape": 0.0, "size": 0.0, "all": 0.0}


def test_score_parses_captions_and_counts_only_named_attributes():
    rng = np.random.default_rng(0)
    scene = scenes.Scene("cross", "white", "small", "purple")
    captions = [scenes.caption(scene, t, rng) for t in range(len(scenes.TEMPLATES))]
    result = judge.score([scenes.render(scene, 32)] * len(captions), captions)
    assert result["accuracy"]["all"] == 1.0 and result["named"]["background"] == len(captions)
    partial = judge.score([scenes.render(scene, 32)], ["a white cross"])
    assert set(partial["accuracy"]) == {"colour", "shape", "all"} and partial["accuracy"]["all"] == 1.0
    with pytest.raises(ValueError, match="one length"):
        judge.score([scenes.render(scene, 32)], [])


def test_judge_cli_table_and_json(tmp_path, capsys):
    images = tmp_path / "gen"
    images.mkdir()
    lines = []
    for i, (scene, prompt) in enumerate(
        [
            (scenes.Scene("circle", "red", "large", "white"), "a large red circle on a white background"),
            (
                scenes.Scene("square", "green", "small", "black"),
                {"shape": "square", "colour": "green", "size": "small", "background": "black"},
            ),
            (scenes.Scene("square", "green", "small", "black"), "a small green triangle on a black background"),
        ]
    ):
        Image.fromarray(scenes.render(scene, 32)).save(images / f"{i}.png")
        key = "prompt" if isinstance(prompt, str) else "scene"
        lines.append({"image": f"{i}.png", key: prompt} if i < 2 else {"id": "2", "caption": prompt})
    manifest = tmp_path / "prompts.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "scores.json"
    assert cli.main(["demo", "judge", "--images", str(images), "--manifest", str(manifest), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "shape" in table and "66.7%" in table and "images judged: 3" in table
    scores = json.loads(out.read_text())
    assert scores["count"] == 3 and scores["accuracy"]["shape"] == pytest.approx(2 / 3)
    assert scores["accuracy"]["colour"] == 1.0 and scores["images"][2]["judged"]["shape"] == "square"

    manifest.write_text(json.dumps({"image": "missing.png", "caption": "a red circle"}) + "\n")
    assert cli.main(["demo", "judge", "--images", str(images), "--manifest", str(manifest)]) == 1
    assert "missing.png" in capsys.readouterr().err
    manifest.write_text(json.dumps({"image": "0.png"}) + "\n")
    assert cli.main(["demo", "judge", "--images", str(images), "--manifest", str(manifest)]) == 1
    assert "prompts.jsonl:1" in capsys.readouterr().err


def test_score_says_per_image_which_named_attributes_were_right():
    want = {"shape": "circle", "colour": "red", "size": "small", "background": "blue"}
    right = scenes.render(scenes.Scene("circle", "red", "small", "blue"), 32)
    wrong_background = scenes.render(scenes.Scene("circle", "red", "small", "green"), 32)
    result = judge.score([right, wrong_background, right], [want, want, "a red circle"])
    assert result["correct"][0] == dict.fromkeys(judge.ATTRIBUTES, True)
    assert result["correct"][1]["background"] is False and sum(result["correct"][1].values()) == 3
    assert set(result["correct"][2]) == {"colour", "shape"}  # only what the caption names
    assert result["accuracy"]["background"] == 0.5 and result["accuracy"]["all"] == pytest.approx(2 / 3)


def test_demo_run_scores_with_the_judge(tmp_path, monkeypatch, capsys):
    """`fusemix demo run` scores its images with demoworld.judge.score: a generator that draws exactly the asked
    scene scores 1.0, one that draws every scene on the wrong background scores 0 on background."""
    from generator import audio_to_image
    from generator.presets import load_preset
    from tests.fake_audio_to_image import EXAMPLES, FakeAudioToImagePipeline

    items = [json.loads(line) for line in (EXAMPLES / "prompts.jsonl").read_text().splitlines() if line.strip()]
    scene_of = {item["audio"]: item["scene"] for item in items}

    class Drawing(FakeAudioToImagePipeline):
        def __init__(self, background: str | None):
            super().__init__(default_mode="retrieve")
            self.background, self.preset = background, load_preset("demo")

        def __call__(self, audio, **kwargs):
            out = super().__call__(audio, **kwargs)
            for i, path in enumerate(audio):
                s = dict(scene_of[Path(path).name])
                if self.background:
                    s["background"] = self.background if s["colour"] != self.background else "black"
                scene = scenes.Scene(s["shape"], s["colour"], s["size"], s["background"])
                out.images[i] = [Image.fromarray(scenes.render(scene, 32))]
            return out

    for background, expected in ((None, 1.0), ("green", 0.0)):
        pipe = Drawing(background)
        monkeypatch.setattr(
            audio_to_image.AudioToImagePipeline, "from_preset", classmethod(lambda cls, *a, p=pipe, **k: p)
        )
        out = tmp_path / str(background)
        assert cli.main(["demo", "run", "--out", str(out), "--seed", "3"]) == 0
        report = json.loads((out / "judge.json").read_text())
        assert report["count"] == len(items) and report["mode"] == "retrieve"
        if expected == 1.0:
            assert report["accuracy"] == dict.fromkeys([*judge.ATTRIBUTES, "all"], 1.0)
        else:
            drawn = [("green" if s["colour"] != "green" else "black", s["background"]) for s in scene_of.values()]
            right = sum(drawn_bg == asked for drawn_bg, asked in drawn) / len(items)
            assert report["accuracy"]["background"] == pytest.approx(right) == report["accuracy"]["all"]
            assert report["accuracy"]["shape"] == 1.0
        assert f"accuracy (retrieve mode): background {report['accuracy']['background']:.2f}" in capsys.readouterr().out


def test_stray_share_is_zero_on_clean_renders_and_counts_a_blotch_of_a_third_colour():
    scene = scenes.Scene("circle", "red", "large", "white")
    clean = scenes.render(scene, 64)
    seen = judge.judge_image(clean)
    assert judge.stray_share(clean, seen) == 0.0  # anti-aliased edges are blends of the two colours

    blotched = clean.copy()
    blotched[:8, :16] = scenes.COLOURS["green"]  # 128 of 4,096 pixels: a colour that is neither
    assert judge.stray_share(blotched, seen) == pytest.approx(128 / 4096)
    assert judge.score([clean, blotched], [dataclasses.asdict(scene)] * 2)["stray"] == [0.0, pytest.approx(128 / 4096)]
