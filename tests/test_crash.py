"""Crash tests: `fusemix extract`, `train`, `train-translator` and `batch` killed with SIGKILL, rerun, compared.

Each test first runs the command uninterrupted, listing every crash point it reaches (``fusion.crash``), then
draws one of them at random (seeded, so a failure reproduces), runs the command in a fresh process that kills
itself with SIGKILL exactly there, reruns it the way a user would (``--resume`` where a checkpoint exists) and
checks that the result equals the uninterrupted run's and that no temp file or folder is left behind.

``FUSEMIX_CRASH_SEED=<int>`` draws other points; ``FUSEMIX_CRASH_EVERY=1`` crashes at every point in turn (slow).
The uninterrupted run and the rerun run in this process (on one torch thread, like the killed child): the torch
and diffusers imports of a training command cost about as much as the run itself on a loaded machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fusemix.cli import main as cli_main
from fusion import crash
from fusion.cache import load_latents, write_latents

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("FUSEMIX_CRASH_SEED", "16"))
EVERY = bool(os.environ.get("FUSEMIX_CRASH_EVERY"))
EXAMPLES = REPO / "examples"

# The killed child: the same CLI entry point as `python -m fusemix`, with the fakes the tests use installed.
CHILD = """
import sys
from tests.test_crash import install_fakes
install_fakes(sys.argv[1], setattr, sys.modules.__setitem__)
from fusemix.cli import main
sys.exit(main(sys.argv[1:]))
"""

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


# ---------------------------------------------------------------- fakes (also installed in the killed child)


def fake_image_text_encoder(kind: str, image_model=None, device: str = "cpu"):
    """The image model's text encoding for the translator: 4 tokens x 8 dims from a caption's sha256."""
    import torch

    def encode(texts: list[str]) -> torch.Tensor:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), np.uint8)[:32] / 255.0 - 0.5 for t in texts]
        return torch.tensor(np.stack(rows).reshape(len(texts), 4, 8), dtype=torch.float32)

    return encode


def install_fakes(command: str, set_attr: Callable, set_module: Callable) -> None:
    """Swap in the fake encoders and pipeline ``command`` needs; importing only what it imports anyway."""
    if command == "extract":
        import fusion.extract
        from tests.test_extract import FakeAudioEncoder

        set_attr(fusion.extract, "load_encoder", lambda name, device="cpu": FakeAudioEncoder())
    elif command == "train-translator":
        import generator.train_translator

        set_attr(generator.train_translator, "image_text_encoder", fake_image_text_encoder)
    elif command == "batch":
        import types

        from tests import fake_audio_to_image as fake

        module = types.ModuleType("generator.audio_to_image")  # the real one imports diffusers: seconds
        module.AudioToImagePipeline, module.AudioToImageOutput, module.upscale = (
            fake.FakeAudioToImagePipeline,
            fake.FakeOutput,
            fake.upscale,
        )
        set_module("generator.audio_to_image", module)


# ---------------------------------------------------------------- the crash harness


def run_here(monkeypatch, argv: list[str], trace: Path | None = None) -> None:
    """Run a command in this process (fakes installed), optionally listing the crash points it reaches."""
    with monkeypatch.context() as m:
        install_fakes(argv[0], m.setattr, lambda name, module: m.setitem(sys.modules, name, module))
        m.setattr(crash, "_TRACE", str(trace) if trace else None)
        m.setattr(crash, "_seen", Counter())
        assert cli_main(argv) == 0, argv


def crash_points(points: list[str], name: str) -> list[str]:
    """The crash specs to try: one drawn at random (seeded), or every point with FUSEMIX_CRASH_EVERY."""
    assert points, f"{name}: the uninterrupted run reached no crash point"
    chosen = range(len(points)) if EVERY else [random.Random(f"{SEED}-{name}").randrange(len(points))]
    return [f"{points[i]}:{points[: i + 1].count(points[i])}" for i in chosen]


def run_killed(argv: list[str], spec: str, cwd: Path) -> None:
    """Run a command in a fresh process that SIGKILLs itself at ``spec``; it must die there."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "FUSEMIX_LOG": "WARNING",
        crash.CRASH_AT: spec,
    }
    env.pop(crash.CRASH_TRACE, None)
    # the timeout only guards against a hung child; the kill itself is triggered by the crash point
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, f"{spec}: exit {proc.returncode}, not killed\n{proc.stderr[-3000:]}"


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_no_temps(folder: Path) -> None:
    left = [name for name in listing(folder) if name.endswith(".tmp") or ".tmp." in name or name.endswith(".old")]
    assert not left, f"temp files left behind: {left}"


def same_arrays(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


def safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def crash_and_compare(monkeypatch, tmp_path, name: str, argv: Callable, rerun: Callable, compare: Callable) -> None:
    """The common test: uninterrupted run with its points listed; then per drawn point, kill, rerun, compare."""
    trace = tmp_path / "points.txt"
    run_here(monkeypatch, argv(tmp_path / "whole"), trace)
    for k, spec in enumerate(crash_points(trace.read_text().split(), name)):
        root = tmp_path / f"crash{k}"
        root.mkdir()
        run_killed(argv(root / "out"), spec, tmp_path)
        run_here(monkeypatch, rerun(argv(root / "out"), root / "out"))
        try:
            compare(tmp_path / "whole", root / "out")
            assert_no_temps(root)
        except AssertionError as err:
            raise AssertionError(f"after a crash at {spec}: {err}") from err


# ---------------------------------------------------------------- extract


@pytest.fixture
def tones(tmp_path) -> Path:
    """Six short tones and a JSONL manifest of them."""
    rows = []
    for i in range(6):
        t = np.arange(int((0.1 + 0.02 * i) * 16000)) / 16000
        sf.write(tmp_path / f"tone{i}.wav", (0.2 * np.sin(2 * np.pi * 200 * (i + 1) * t)).astype(np.float32), 16000)
        rows.append({"audio": f"tone{i}.wav", "captions": [f"tone {i}"]})
    manifest = tmp_path / "tones.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_extract_killed_anywhere_resumes_to_the_uninterrupted_cache(tmp_path, monkeypatch, tones):
    def argv(out: Path) -> list[str]:
        return ["extract", "--encoder", "fake-audio", "--manifest", str(tones), "--out", str(out), "--no-progress",
                "--batch-size", "1", "--shard-size", "1", "--workers", "1"]  # fmt: skip

    def compare(whole: Path, out: Path) -> None:
        np.testing.assert_array_equal(load_latents(out).array, load_latents(whole).array)
        for name in ("manifest.json", "failures.json"):
            assert json.loads((out / name).read_text()) == json.loads((whole / name).read_text()), name
        assert listing(out) == listing(whole)  # no progress file, no half-written shard

    crash_and_compare(monkeypatch, tmp_path, "extract", argv, lambda args, out: args, compare)


# ---------------------------------------------------------------- train


def resume_if_saved(checkpoint: Callable[[Path], Path]) -> Callable:
    """A user's rerun: the same command, with --resume once a checkpoint was saved."""

    def rerun(args: list[str], out: Path) -> list[str]:
        from fusion.training import CheckpointManager

        return [*args, "--resume"] if CheckpointManager(checkpoint(out), {}).latest() else args

    return rerun


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def same_checkpoint(whole: Path, out: Path, state_file: str = "trainer_state.json") -> None:
    for name in ("diffusion_pytorch_model.safetensors", "optimizer.safetensors"):
        same_arrays(safetensors(whole / name), safetensors(out / name), name)
    states = [json.loads((folder / state_file).read_text()) for folder in (whole, out)]
    states = [{**s, "history": [without(h, "seconds") for h in s["history"]]} for s in states]  # timing differs
    assert states[0] == states[1]
    configs = [
        without(json.loads((folder / "train_config.json").read_text()), "out", "resume") for folder in (whole, out)
    ]
    assert configs[0] == configs[1]
    assert listing(out) == listing(whole)


def test_train_killed_anywhere_resumes_to_the_uninterrupted_adapters(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((96, 6))
    audio = (z @ rng.standard_normal((6, 16))).astype(np.float32)
    text = (np.repeat(z, 2, axis=0) @ rng.standard_normal((6, 12))).astype(np.float32)
    clips = [f"c{i}" for i in range(96)]
    write_latents(tmp_path / "audio", audio, clips, clips, {"modality": "audio"})
    captions = [c for c in clips for _ in range(2)]
    write_latents(
        tmp_path / "text", text, [f"{c}#{k % 2}" for k, c in enumerate(captions)], captions, {"modality": "text"}
    )

    def argv(out: Path) -> list[str]:
        return ["train", "--audio-latents", str(tmp_path / "audio"), "--text-latents", str(tmp_path / "text"),
                "--out", str(out), "--no-progress", "--epochs", "3", "--batch-size", "32", "--shared-dim", "16",
                "--num-blocks", "1", "--dropout", "0.1", "--warmup-steps", "2", "--val-fraction", "0.1"]  # fmt: skip

    def compare(whole: Path, out: Path) -> None:
        same_checkpoint(whole / "checkpoint", out / "checkpoint")
        assert listing(out) == listing(whole)

    rerun = resume_if_saved(lambda out: out / "checkpoint")
    crash_and_compare(monkeypatch, tmp_path, "train", argv, rerun, compare)


# ---------------------------------------------------------------- train-translator


def test_train_translator_killed_anywhere_resumes_to_the_uninterrupted_translator(tmp_path, monkeypatch):
    import torch

    from fusion.adapters import FuseMixAdapters

    captions = [f"caption number {i}" for i in range(20)]
    latents = np.random.default_rng(1).standard_normal((20, 12)).astype(np.float32)
    ids = [f"c{i}" for i in range(20)]
    write_latents(tmp_path / "text", latents, [f"{i}#0" for i in ids], ids, {"modality": "text"}, texts=captions)
    torch.manual_seed(0)
    FuseMixAdapters(audio_dim=6, text_dim=12, shared_dim=8, num_blocks=1).eval().save_pretrained(tmp_path / "adapters")

    def argv(out: Path) -> list[str]:
        return ["train-translator", "--adapters", str(tmp_path / "adapters"), "--text-latents", str(tmp_path / "text"),
                "--out", str(out / "translator"), "--epochs", "3", "--batch-size", "8", "--num-blocks", "1",
                "--no-progress"]  # fmt: skip

    def compare(whole: Path, out: Path) -> None:
        whole, out = whole / "translator", out / "translator"
        same_arrays(safetensors(whole / "diffusion_pytorch_model.safetensors"),
                    safetensors(out / "diffusion_pytorch_model.safetensors"), "weights")  # fmt: skip
        for name in ("optimizer.safetensors",):
            same_arrays(safetensors(whole / name), safetensors(out / name), name)
        for name in ("trainer_state.json", "translator_config.json", "train_config.json"):
            a, b = (without(json.loads((f / name).read_text()), "out") for f in (whole, out))
            assert a == b, name
        assert listing(out) == listing(whole)
        assert listing(out.parent) == listing(whole.parent)  # no .translator.tmp / .translator.old beside it

    rerun = resume_if_saved(lambda out: out / "translator")
    crash_and_compare(monkeypatch, tmp_path, "train-translator", argv, rerun, compare)


# ---------------------------------------------------------------- batch


def test_batch_killed_anywhere_reruns_to_the_uninterrupted_images_and_results(tmp_path, monkeypatch):
    sounds = tmp_path / "sounds"
    (sounds / "sub").mkdir(parents=True)
    for i, clip in enumerate(sorted(EXAMPLES.glob("*.ogg"))[:4]):
        shutil.copy(clip, sounds / ("sub" if i == 3 else "") / clip.name)

    def argv(out: Path) -> list[str]:
        return ["batch", "--input", str(sounds), "--out", str(out), "--num-images-per-audio", "2", "--seed", "3",
                "--no-progress"]  # fmt: skip

    def records(out: Path) -> list[dict]:
        lines = (out / "results.jsonl").read_text().splitlines()
        return [without(json.loads(line), "timings") for line in lines]  # timings differ from run to run

    def compare(whole: Path, out: Path) -> None:
        assert listing(out) == listing(whole)
        for name in listing(whole):
            if name.endswith(".png"):
                assert (out / name).read_bytes() == (whole / name).read_bytes(), name
        assert records(out) == records(whole)

    crash_and_compare(monkeypatch, tmp_path, "batch", argv, lambda args, out: args, compare)
