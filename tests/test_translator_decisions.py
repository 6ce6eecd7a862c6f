"""scripts/translator_decisions.py on the shipped preset: the bundled example clips, told apart without drawing."""

import itertools
import json
from pathlib import Path

import numpy as np

from demoworld.scenes import COLOURS, SHAPES, SIZES
from fusion.audio import load_audio
from fusion.cache import write_latents
from fusion.encoders import load_encoder
from generator.presets import load_preset
from scripts.translator_decisions import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _bank_cache(folder: Path) -> Path:
    """Every scene's first caption in the bank's phrasing, grouped by scene (the script reads only texts and ids)."""
    scenes = [s for s in itertools.product(SIZES, COLOURS, SHAPES, COLOURS) if s[1] != s[3]]
    texts = [f"a {size} {colour} {shape} on a {bg} background" for size, colour, shape, bg in scenes]
    groups = [f"{size}_{colour}_{shape}_on_{bg}" for size, colour, shape, bg in scenes]
    return write_latents(folder, np.zeros((len(texts), 1), np.float32), groups, groups, {"modality": "text"}, texts)


def test_the_examples_are_told_right_in_both_modes(tmp_path, capsys):
    preset = load_preset("demo")
    encoder = load_encoder(preset.audio_encoder)
    rows = [json.loads(line) for line in (EXAMPLES / "prompts.jsonl").read_text().splitlines()]
    waves = [load_audio(EXAMPLES / r["audio"], int(encoder.sample_rate), 30.0) for r in rows]
    ids = [r["audio"] for r in rows]
    write_latents(tmp_path / "audio", encoder.encode(waves, tokens=32), ids, ids, {"modality": "audio"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": r["audio"], "scene": r["scene"]}) + "\n" for r in rows))
    split = f"ex={tmp_path / 'audio'}:{tmp_path / 'm.jsonl'}"
    assert main(["--bank-cache", str(_bank_cache(tmp_path / "bank")), "--split", split]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["retrieve", "translate"]
    for line in lines:  # all six right (as `make demo` draws them), in both modes
        assert line.split()[2:9] == ["1.000", "/", "1.000", "/", "1.000", "/", "1.000"]
    assert float(lines[1].split("far")[1].split()[0]) > 0

    # --group-by: each value of a manifest field scored on its own, after the whole split
    (tmp_path / "g.jsonl").write_text(
        "".join(json.dumps({"id": r["audio"], "scene": r["scene"], "half": k % 2}) + "\n" for k, r in enumerate(rows))
    )
    split = f"ex={tmp_path / 'audio'}:{tmp_path / 'g.jsonl'}"
    assert main(["--bank-cache", str(tmp_path / "bank"), "--split", split, "--group-by", "half"]) == 0
    grouped = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in grouped] == ["ex", "ex", "ex/0", "ex/0", "ex/1", "ex/1"]
    assert grouped[:2] == lines
    assert grouped[3].split("snapped")[1].split()[0].endswith(f"/{(len(rows) + 1) // 2}")

    assert main(["--bank-cache", str(tmp_path / "bank"), "--split", "ex=nowhere"]) == 1
    assert "--split ex=nowhere" in capsys.readouterr().err
    missing = f"ex={tmp_path / 'nowhere'}:{tmp_path / 'm.jsonl'}"  # no cache there: one line, not a traceback
    assert main(["--bank-cache", str(tmp_path / "bank"), "--split", missing]) == 1
    assert "no latent cache" in capsys.readouterr().err
