"""Smoke test of the benchmark scripts: each main runs its --quick size and prints its table (so they don't rot)."""

import pytest

from bench import extract, generate, memory, retrieval, train


@pytest.mark.slow
@pytest.mark.parametrize("module", [train, retrieval, memory, extract, generate], ids=lambda m: m.__name__)
def test_quick_run_prints_a_table(module, capsys):
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "CPU:" in out and "load average" in out
    assert out.count("|---") >= 1  # a table was printed


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="--dims"):
        train.main(["--dims", "384by384"])
    with pytest.raises(ValueError, match="--variants"):
        train.main(["--variants", "fast"])
    with pytest.raises(ValueError, match="--sizes"):
        retrieval.main(["--sizes", "0"])
