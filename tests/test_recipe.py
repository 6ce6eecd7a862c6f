"""The recipe of the embedded default (generator.recipe, recipe_run, recipe_check): steps, check, a tiny run."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from demoworld.accents import TRAIN_CHANGES
from fusemix.cli import main as fusemix
from fusion.errors import FusemixError
from generator.presets import CHECKPOINTS, shipped_path
from generator.recipe import (
    ACCENTED,
    DEFAULT,
    RECIPES,
    SIMULATED,
    TINY,
    WHISPER_TOKENS,
    Layout,
    preset_json,
    training_clips,
    translator_config,
)
from generator.recipe_run import run_step

SHIPPED = CHECKPOINTS / "demo"


def test_run_step_skips_finished_steps_reruns_lost_ones_and_refuses_other_settings(tmp_path):
    layout = Layout(tmp_path)
    out = tmp_path / "made"
    calls = []

    def work() -> None:
        calls.append(1)
        out.write_text("x")

    assert run_step(layout, "s", {"n": 1, "p": Path("a")}, work, [out]) is True
    assert run_step(layout, "s", {"n": 1, "p": Path("a")}, work, [out]) is False  # same settings: skipped
    assert len(calls) == 1
    with pytest.raises(FusemixError, match=r"step s .* other settings \(n\)"):
        run_step(layout, "s", {"n": 2, "p": Path("a")}, work, [out])
    out.unlink()  # output gone: the step runs again
    assert run_step(layout, "s", {"n": 1, "p": Path("a")}, work, [out]) is True and len(calls) == 2


def test_recipe_check_names_settings_that_cannot_work():
    with pytest.raises(ValueError, match="extra_world_seed"):
        replace(DEFAULT, extra_world_size="12", extra_world_seed=DEFAULT.world_seed).check()
    with pytest.raises(ValueError, match="image_steps"):
        replace(DEFAULT, image_steps=DEFAULT.image_base_steps).check()
    with pytest.raises(ValueError, match="audio_keep"):
        replace(DEFAULT, audio_keep=65).check()  # 32 tokens x 2 parts
    with pytest.raises(ValueError, match="text_keep"):
        replace(DEFAULT, text_tokens=None).check()
    with pytest.raises(ValueError, match="translator_world_seed"):
        replace(DEFAULT, translator_world_size="12", translator_world_seed=DEFAULT.world_seed).check()
    with pytest.raises(ValueError, match="translator_world_size needs translator_audio_points"):
        replace(DEFAULT, translator_world_size="12", translator_audio_points=False).check()
    with pytest.raises(ValueError, match="translator_tune"):
        replace(DEFAULT, translator_tune="mse").check()
    with pytest.raises(ValueError, match="accent_world_seed"):
        replace(DEFAULT, accent_world_size="12", accent_world_seed=DEFAULT.extra_world_seed).check()
    with pytest.raises(ValueError, match="translator_metric_world_size needs translator_snap"):
        replace(DEFAULT, translator_snap=0.0).check()
    with pytest.raises(ValueError, match="with accent_world_size, equals it"):  # one accented world, one size
        replace(DEFAULT, accent_world_size="12").check()
    with pytest.raises(ValueError, match="sim_world_seed"):
        replace(DEFAULT, sim_world_size="12", sim_world_seed=DEFAULT.accent_world_seed).check()
    with pytest.raises(ValueError, match="handoff must be >= 0, and > 0 needs translator_snap"):
        replace(DEFAULT, translator_snap=0.0, translator_metric_world_size=None).check()
    with pytest.raises(ValueError, match="handoff must be >= 0"):
        replace(DEFAULT, handoff=-1.0).check()
    with pytest.raises(ValueError, match="hard_negative_sizes needs hard_negatives"):
        replace(DEFAULT, hard_negatives=False, hard_negative_sizes=True).check()
    with pytest.raises(ValueError, match="fusemix_heads must be >= 1"):
        replace(DEFAULT, fusemix_heads=0).check()
    assert preset_json(DEFAULT)["handoff"] == DEFAULT.handoff > 0 and "handoff" not in preset_json(
        replace(DEFAULT, handoff=0.0)
    )
    for recipe in RECIPES.values():
        recipe.check()


def test_the_snap_metric_reads_the_accented_world_the_adapters_never_train_on():
    """The default builds the accented world for the translator's snap metric alone: not a training world."""
    assert DEFAULT.accent_size == "default" and DEFAULT.accent_world_size is None
    assert DEFAULT.extra_training() == [("extra-", "extra_train")]
    cfg = translator_config(DEFAULT, Layout(Path("W")))
    assert (cfg.metric_audio_latents, cfg.metric_text_latents) == (
        str(Layout(Path("W")).latents("audio", "accent_train")),
        str(Layout(Path("W")).latents("text", "accent_train")),
    )
    plain = translator_config(replace(DEFAULT, translator_metric_world_size=None), Layout(Path("W")))
    assert (
        plain.metric_audio_latents is None and replace(DEFAULT, translator_metric_world_size=None).accent_size is None
    )


def test_default_recipe_gives_the_shipped_number_of_training_clips():
    # 1,500 training scenes, two spoken captions each, in each of two worlds: the 6,000 clips the README names
    # (9,000 with the larger second world the earlier default added)
    assert training_clips(DEFAULT) == 6000
    assert training_clips(WHISPER_TOKENS) == 9000
    assert training_clips(ACCENTED) == 9000 and ACCENTED.joined  # and a third, accented world's 3,000
    assert ACCENTED.extra_training() == [("extra-", "extra_train"), ("accent-", "accent_train")]
    assert training_clips(SIMULATED) == 9000 and SIMULATED.joined  # or a third world with simulated accents
    assert SIMULATED.extra_training() == [("extra-", "extra_train"), ("sim-", "sim_train")]
    assert SIMULATED.accent_size == "default"  # the accented world still only fits the snap metric
    assert not replace(DEFAULT, extra_world_size=None).joined


def _copy_shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    shutil.copytree(SHIPPED, folder)
    return folder


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_check_prints_each_difference_on_one_line_and_exits_1(tmp_path, capsys):
    folder = _copy_shipped(tmp_path)
    _edit(folder / "adapters/train_config.json", epochs=39, out="/elsewhere", audio_latents="/else/where")
    _edit(folder / "translator/translator_config.json", noise=0.1, relative_mse=0.5)  # a result: not compared
    _edit(folder / "image_model/train_config.json", steps=6000, translator=None)
    _edit(folder / "adapters/config.json", text_keep=8)
    _edit(folder / "preset.json", guidance=4.0)
    assert fusemix(["demo", "make-default", "--check", str(folder)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    expected = [
        "adapters/train_config.json: epochs: preset 39, recipe 60",
        "translator/translator_config.json: noise:",
        "image_model/train_config.json: steps: preset 6000, recipe 4200",
        "image_model/train_config.json: translator: preset None, recipe 'given'",
        "adapters/config.json: text_keep: preset 8, recipe 16",
        "preset.json: guidance: preset 4.0, recipe 3.0",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)
    assert not any("out:" in line or "audio_latents" in line or "relative_mse" in line for line in lines)
    assert lines[-1].endswith("6 difference(s) from the default recipe")


def test_check_reports_a_recorded_key_the_trainer_does_not_know(tmp_path, capsys):
    folder = _copy_shipped(tmp_path)
    _edit(folder / "adapters/train_config.json", warp_factor=9)
    assert fusemix(["demo", "make-default", "--check", str(folder)]) == 1
    assert (
        "adapters/train_config.json: warp_factor: preset 9, unknown to the current trainer" in capsys.readouterr().out
    )


def test_check_and_recipe_flags_fail_in_one_line(tmp_path, capsys):
    assert fusemix(["demo", "make-default", "--check", str(tmp_path)]) == 1
    assert "no preset at" in capsys.readouterr().err
    assert fusemix(["demo", "make-default", "--tiny", "--recipe", "locked-text", "--check"]) == 1
    assert "--tiny and --recipe locked-text disagree" in capsys.readouterr().err
    assert fusemix(["demo", "make-default", "--recipe", "nope", "--check"]) == 1
    assert "--recipe must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_recipe_end_to_end_then_check_then_generate(tmp_path, monkeypatch):
    """`make-default --tiny` runs every step, writes a preset the check accepts and the pipeline loads."""
    import numpy as np

    from generator.audio_to_image import AudioToImagePipeline

    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (scripts/system-deps.sh installs it)")
    monkeypatch.chdir(tmp_path)
    assert fusemix(["demo", "make-default", "--tiny", "--out", "tmp", "--work", "work"]) == 0
    out = tmp_path / "tmp"
    assert {p.name for p in out.iterdir()} == {"adapters", "translator", "image_model", "caption_bank", "preset.json"}
    assert fusemix(["demo", "make-default", "--tiny", "--check", str(out)]) == 0
    assert fusemix(["demo", "make-default", "--check", str(out)]) == 1  # the tiny preset is not the default
    trained = json.loads((out / "adapters/train_config.json").read_text())
    assert trained["text_latents"].endswith("text_train_all_paraphrased")  # both worlds' clips, paraphrased
    count = lambda name: json.loads((tmp_path / "work/latents" / name / "manifest.json").read_text())["count"]  # noqa: E731
    assert count("text_train_all_paraphrased") == (1 + TINY.paraphrases) * count("text_train_all") > 0
    # four worlds' training clips: the main one's, the extra one's, the accented one's and the simulated-accent
    # one's, ids kept apart
    worlds = ("audio_train", "audio_extra_train", "audio_accent_train", "audio_sim_train")
    assert count("audio_train_all") == sum(count(name) for name in worlds) and min(map(count, worlds)) > 0
    # each paraphrased caption's colour swap, then its size substitute: two hard negatives a caption
    assert count("text_swaps_all") == 2 * count("text_train_all_paraphrased")
    assert json.loads((out / "adapters/trainer_state.json").read_text())["hard_negatives_per_caption"] == 2
    # two heads (seeds 0 and 1), each a run of its own, joined: S is their spaces side by side
    assert (
        json.loads((out / "adapters/config.json").read_text())["heads"] == trained["heads"] == TINY.fusemix_heads == 2
    )
    heads = [json.loads((tmp_path / f"work/fusemix/head-{k}/checkpoint/train_config.json").read_text()) for k in (0, 1)]
    assert [h["seed"] for h in heads] == [0, 1] and {h["heads"] for h in heads} == {1}
    accent_lines = (tmp_path / "work/world_accent/train.jsonl").read_text().splitlines()
    assert all(json.loads(line)["voice"].split("+")[0] in ("hi", "ru") for line in accent_lines)
    sim_rows = [json.loads(line) for line in (tmp_path / "work/world_sim/train.jsonl").read_text().splitlines()]
    changes = {change for row in sim_rows for change in row["accent"].split(",")}
    assert sim_rows and changes <= set(TRAIN_CHANGES) and all(row["id"].startswith("train-") for row in sim_rows)
    # the shipped translator is the fine-tune of the MSE one against the tiny run's own (trained) image model
    translator = json.loads((out / "translator/translator_config.json").read_text())
    assert (translator["objective"], translator["epochs"]) == (TINY.translator_tune, TINY.translator_tune_epochs)
    assert translator["init_from"] == "work/translator" and translator["image_model"] == "work/image_model"
    assert 0 < translator["distill_error"] < float("inf") and translator["distill_error_start"] > 0
    # ... trained on the adapters' clips and on the translator world's, which the adapters never saw
    assert translator["audio_latents"] == "work/latents/audio_translator_all"
    assert count("audio_translator_all") == count("audio_train_all") + count("audio_translator_train")
    assert count("text_translator_all") == count("text_train_all") + count("text_translator_train") > 0
    assert translator["text_latents"] == "work/latents/text_translator_all"

    markers = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "steps").glob("*.json")}
    assert len(markers) >= 15
    assert fusemix(["demo", "make-default", "--tiny", "--out", "tmp", "--work", "work"]) == 0  # all steps skipped
    assert markers == {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "steps").glob("*.json")}

    pipe = AudioToImagePipeline.from_preset(str(out))
    clip = sorted(shipped_path("examples").glob("*.ogg"))[0]
    result = pipe([str(clip)], num_inference_steps=2, seed=0)
    image = np.asarray(result.images[0][0])
    assert image.shape == (TINY.resolution, TINY.resolution, 3) and image.std() > 0


def test_reuse_image_model_copies_the_shipped_one_and_records_its_hash(tmp_path):
    from generator.presets import shipped_path
    from generator.recipe_run import _reuse_image_model

    layout = Layout(tmp_path)
    _reuse_image_model(layout)
    shipped = shipped_path("checkpoints") / "demo" / "image_model"
    weights = sorted(p.relative_to(shipped) for p in shipped.rglob("*.safetensors"))
    assert (
        weights
        and sorted(p.relative_to(layout.image_model) for p in layout.image_model.rglob("*.safetensors")) == weights
    )
    for rel in weights:
        assert (layout.image_model / rel).read_bytes() == (shipped / rel).read_bytes()
    marker = json.loads((tmp_path / "steps" / "image_reused.json").read_text())
    assert len(marker["sha256"]) == 64
    assert not run_step(layout, "image_reused", marker, lambda: pytest.fail("redone"), [layout.image_model])
