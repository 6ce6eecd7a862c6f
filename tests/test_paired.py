"""Judged runs read back: paired comparison (exact McNemar p-values, the clip-by-clip counts behind them) and the
per-group breakdown of one run."""

import json
from math import comb

import pytest

from demoworld.breakdown import accuracy_by
from demoworld.judge import ATTRIBUTES
from demoworld.paired import exact_mcnemar, paired_counts
from scripts.breakdown import main as breakdown
from scripts.compare_runs import main


def _clip(i: int, **wrong: bool) -> dict:
    return {"id": f"c{i}", "correct": {a: not wrong.get(a, False) for a in ATTRIBUTES}}


def test_exact_mcnemar_is_the_two_sided_binomial_tail():
    assert exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(3, 3) == 1.0  # a tie never looks like a difference
    assert exact_mcnemar(1, 4) == pytest.approx(2 * (comb(5, 0) + comb(5, 1)) / 2**5)  # 0.375
    assert exact_mcnemar(0, 10) == pytest.approx(2 / 2**10)
    assert exact_mcnemar(10, 0) == exact_mcnemar(0, 10)
    assert exact_mcnemar(8, 17) < 0.15 < exact_mcnemar(1, 4)
    with pytest.raises(ValueError, match="counts"):
        exact_mcnemar(-1, 2)


def test_paired_counts_match_clips_by_id_and_count_each_attribute():
    a = [_clip(0), _clip(1, background=True), _clip(2, shape=True, size=True), _clip(3, background=True)]
    b = [_clip(3), _clip(2, background=True), _clip(1, background=True), _clip(0, colour=True)]  # other order
    table = paired_counts(a, b)
    assert table["background"] == {"a_only": 1, "b_only": 1, "both": 1, "neither": 1, "p": 1.0}
    assert (table["colour"]["a_only"], table["colour"]["b_only"]) == (1, 0)
    assert (table["shape"]["a_only"], table["shape"]["b_only"], table["shape"]["both"]) == (0, 1, 3)
    assert table["size"]["b_only"] == 1
    with pytest.raises(ValueError, match="different clips"):
        paired_counts(a, b[:3])
    with pytest.raises(ValueError, match="twice"):
        paired_counts(a + a[:1], b)


def test_compare_runs_prints_the_table_and_fails_in_one_line_on_a_missing_condition(tmp_path, capsys):
    results = {
        "test": {"audio": {"clips": [_clip(0), _clip(1)]}, "retrieve": {"clips": [_clip(0), _clip(1, size=True)]}}
    }
    run = tmp_path / "eval.json"
    run.write_text(json.dumps({"results": results}))
    assert main([f"{run}:test:audio", f"{run}:test:retrieve"]) == 0
    size_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("size"))
    assert size_row.split()[1:5] == ["1", "0", "1", "0"]
    assert main([f"{run}:test:audio", f"{run}:test:nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no test:nope" in err and "\n" not in err


def test_accuracy_by_groups_clips_by_a_manifest_field_most_clips_first():
    items = [
        {"id": "c0", "voice": "v1", "scene": {"background": "red"}},
        {"id": "c1", "voice": "v2", "scene": {"background": "red"}},
        {"id": "c2", "voice": "v2", "scene": {"background": "blue"}},
        {"id": "c3", "voice": "v2", "scene": {"background": "blue"}},
    ]
    clips = [_clip(0, background=True), _clip(1), _clip(2, background=True, colour=True), _clip(3)]
    by_voice = accuracy_by(clips, items, "voice")
    assert list(by_voice) == ["v2", "v1"]  # three clips before one
    assert by_voice["v2"]["clips"] == 3 and by_voice["v2"]["background"] == pytest.approx(2 / 3)
    assert by_voice["v1"] == {"clips": 1, "background": 0.0, "colour": 1.0, "shape": 1.0, "size": 1.0}
    by_colour = accuracy_by(clips, items, "scene.background")
    assert by_colour["blue"]["colour"] == 0.5 and by_colour["red"]["background"] == 0.5
    with pytest.raises(ValueError, match="no field 'accent'"):
        accuracy_by(clips, items, "accent")
    with pytest.raises(ValueError, match="not in the split"):
        accuracy_by([*clips, _clip(9)], items, "voice")


def test_breakdown_finds_the_split_from_the_run_and_fails_in_one_line(tmp_path, capsys):
    folder = tmp_path / "world"
    folder.mkdir()
    items = [{"id": "c0", "voice": "a"}, {"id": "c1", "voice": "b"}, {"id": "c2", "voice": "b"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    clips = [_clip(0), _clip(1, shape=True), _clip(2)]
    run = tmp_path / "eval.json"
    run.write_text(json.dumps({"splits": {"test": str(folder)}, "results": {"test": {"audio": {"clips": clips}}}}))
    assert breakdown([f"{run}:test:audio", "--by", "voice"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["b"] == ["2", "1.000", "1.000", "0.500", "1.000"] and rows["a"][0] == "1"
    assert breakdown([f"{run}:val:audio"]) == 1
    err = capsys.readouterr().err.strip()
    assert "val" in err and "\n" not in err
