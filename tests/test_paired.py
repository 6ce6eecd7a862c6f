"""Paired comparison of judged runs: exact McNemar p-values and the clip-by-clip counts behind them."""

import json
from math import comb

import pytest

from demoworld.judge import ATTRIBUTES
from demoworld.paired import exact_mcnemar, paired_counts
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
