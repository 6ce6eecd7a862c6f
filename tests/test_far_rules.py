"""scripts/far_rules.py on the shipped preset: the bundled example clips under the preset's rule and its variants."""

import json
from pathlib import Path

import torch

from fusion.audio import load_audio
from fusion.cache import write_latents
from fusion.encoders import load_encoder
from generator.presets import load_preset
from scripts.far_rules import main, marginal_scores
from tests.test_translator_decisions import EXAMPLES, _bank_cache


def _example_split(folder: Path) -> str:
    """NAME=CACHE:MANIFEST of the six example clips (their preset's audio encoder, 32 tokens)."""
    encoder = load_encoder(load_preset("demo").audio_encoder)
    rows = [json.loads(line) for line in (EXAMPLES / "prompts.jsonl").read_text().splitlines()]
    waves = [load_audio(EXAMPLES / r["audio"], int(encoder.sample_rate), 30.0) for r in rows]
    ids = [r["audio"] for r in rows]
    write_latents(folder / "audio", encoder.encode(waves, tokens=32), ids, ids, {"modality": "audio"})
    (folder / "m.jsonl").write_text("".join(json.dumps({"id": r["audio"], "scene": r["scene"]}) + "\n" for r in rows))
    return f"{folder / 'audio'}:{folder / 'm.jsonl'}"


def test_rules_on_the_examples(tmp_path, capsys):
    split = _example_split(tmp_path)
    bank = str(_bank_cache(tmp_path / "bank"))
    argv = ["--bank-cache", bank, "--split", f"ex={split}", "--handoffs", "0.001", "--pulls", "1"]
    argv += ["--confident", "0.001", "--marginals", "1e-6"]
    argv += ["--refit", f"own={split}", "--margin", "2", "--ensemble", "demo"]
    assert main(argv) == 0
    rows = {line[:26].strip(): line[26:].split() for line in capsys.readouterr().out.splitlines()}
    assert list(rows) == [
        "retrieve", "preset", "handoff 0.001", "pull 1", "confident 0.001", "marginal 1e-06", "retrieve marginal 1e-06",
        "refit own shrink 0.5", "ensemble retrieve",
        "ensemble h10.5", "ensemble h0.001", "retrieve margin<2", "preset margin<2",
    ]  # fmt: skip
    assert rows["retrieve"][:3] == ["6/6/6/6", "ex", "6/6/6/6"]  # all six right, as `make demo` draws them
    assert rows["preset"][:3] == ["6/6/6/6", "ex", "6/6/6/6"]
    assert rows["handoff 0.001"] == rows["retrieve"]  # every clip handed to retrieve
    assert rows["refit own shrink 0.5"][0].count("/") == 3
    assert rows["confident 0.001"][:3] == ["6/6/6/6", "ex", "6/6/6/6"]  # right whichever mode decides a clip
    # near zero temperature, per-attribute decoding is the argmax: the preset's and retrieve's own scenes
    assert rows["marginal 1e-06"] == rows["preset"] and rows["retrieve marginal 1e-06"] == rows["retrieve"]
    assert rows["preset margin<2"] == ["ex", "6/6/6/6", "of", "6"]  # every clip within a margin of 2
    # the preset joined with itself: the same cosines, the same translations, the metric refitted on the same clips
    assert rows["ensemble retrieve"] == rows["ensemble h0.001"] == rows["retrieve"]
    assert rows["ensemble h10.5"] == rows["refit own shrink 0.5"]

    for bad in ("ex=nowhere", f"ex={tmp_path / 'nowhere'}:{tmp_path / 'm.jsonl'}"):  # one line, exit 1
        assert main(["--bank-cache", bank, "--split", bad]) == 1
        assert capsys.readouterr().err.splitlines()[-1].startswith("far_rules: ")
    assert main(["--bank-cache", bank, "--split", f"ex={split}", "--ensemble", "demo"]) == 1  # no --refit
    assert "--ensemble needs --refit" in capsys.readouterr().err


def test_marginal_decoding_can_overrule_the_best_scene():
    """Two blue scenes near the best red one: per attribute, blue and circle win, so the blue circle."""
    red_circle = ("white", "red", "circle", "big")
    blue_square = ("white", "blue", "square", "big")
    blue_circle = ("white", "blue", "circle", "big")
    scenes = [red_circle, blue_square, blue_circle]
    logits = torch.tensor([[1.0, 0.9, 0.9]])
    assert marginal_scores(scenes, logits).argmax(1).item() == 2
    assert marginal_scores(scenes, logits / 1e-3).argmax(1).item() == 0  # cold: the best scene itself
