"""The built wheel stands on its own: installed where the repository is out of sight, the embedded default and the
example clips come with it and `fusemix generate` writes an image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = ("fusion", "generator", "ui", "fusemix", "demoworld")
NOT_SOURCE = (".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")
LOCAL_RUNS = ("outputs", "data", "runs")  # what local work leaves in a checkout; never part of the package


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in CODE for p in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"


def _run(args: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installed_outside_the_repo_generates_an_image(tmp_path):
    src = tmp_path / "src"  # a copy, so building leaves nothing (build/, egg-info) in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE, *LOCAL_RUNS))
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), "."], cwd=src)
    (wheel,) = dist.glob("*.whl")
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], cwd=elsewhere)

    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    probe = (
        "import json, fusion, generator, fusemix, demoworld; from generator.presets import CHECKPOINTS, shipped_path; "
        "print(json.dumps([fusion.__file__, generator.__file__, fusemix.__file__, demoworld.__file__, "
        "str(CHECKPOINTS), str(shipped_path('examples'))]))"
    )
    where = json.loads(_run([sys.executable, "-c", probe], cwd=elsewhere, env=env))
    assert all(Path(p).is_relative_to(site) for p in where), where  # nothing comes from the repository
    clip = sorted((site / "generator" / "examples").glob("*.ogg"))[0]
    out = elsewhere / "out"
    _run(
        [sys.executable, "-m", "fusemix.cli", "generate", str(clip), "--out", str(out), "--steps", "2"], elsewhere, env
    )
    image = out / f"{clip.stem}_0.png"
    assert image.is_file() and image.stat().st_size > 0
    assert json.loads((out / f"{clip.stem}_0.json").read_text())["audio"] == str(clip)
