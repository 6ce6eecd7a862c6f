"""The bad-input corpus: each kind of bad input a user can give gets one line naming the file or flag, a non-zero
exit code, and nothing written. Everything else (a bug) keeps its traceback.

Runs ``fusemix.cli.main`` in-process. Preset damage is done on a copy of ``checkpoints/demo`` in ``tmp_path`` and is
caught before any model loads; the audio kinds run through a stand-in pipeline that decodes audio as the real one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fusemix import cli
from fusion.cache import write_latents
from fusion.errors import CheckpointError, FusemixError, InputError

DEMO = Path(__file__).resolve().parent.parent / "checkpoints" / "demo"
ADAPTER_WEIGHTS = "adapters/diffusion_pytorch_model.safetensors"


def fails(argv: list[str], capsys, code: int = 1) -> str:
    """Run the command; it must exit ``code`` with exactly one line on stderr, no traceback; returns that line."""
    assert cli.main(argv) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"fusemix {argv[0]}: error: ") and "Traceback" not in lines[0]
    return lines[0]


def untouched(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def wav(path: Path, seconds: float = 0.5, sr: int = 16000, subtype: str = "PCM_16", value: float | None = None):
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32) if value is None else np.full(len(t), value)
    sf.write(path, wave.astype(np.float32), sr, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------------------- audio


@pytest.fixture
def shared_pipeline(monkeypatch):
    """``fusemix generate`` gets a stand-in that decodes audio with ``load_audio`` as the real pipeline does (so
    bad files fail the same way) but runs no model; its preset is the shipped one."""
    from generator import audio_to_image
    from generator.presets import load_preset
    from tests.fake_audio_to_image import FakeAudioToImagePipeline

    fake = FakeAudioToImagePipeline()
    fake.preset = load_preset("demo")
    monkeypatch.setattr(audio_to_image.AudioToImagePipeline, "from_preset", classmethod(lambda cls, *a, **k: fake))
    return fake


def _empty(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _truncated(p: Path) -> Path:
    data = wav(p).read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _not_audio(p: Path) -> Path:
    p.write_text("this is a shopping list, not a sound\n" * 20)
    return p


def _nan(p: Path) -> Path:
    return wav(p, subtype="FLOAT", value=float("nan"))


def _too_long(p: Path) -> Path:
    return wav(p, seconds=31.0, sr=8000, value=0.0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_empty, "empty (0 bytes)"),
        (_truncated, "truncated"),
        (_not_audio, "not a readable audio file"),
        (_nan, "NaN or infinite"),
        (_too_long, "longer than the limit of 30 s"),
    ],
    ids=["empty", "truncated", "not-audio", "nan", "too-long"],
)
def test_bad_audio_file(make, reason, shared_pipeline, tmp_path, capsys):
    clip = make(tmp_path / "clip.wav")
    out = tmp_path / "out"
    line = fails(["generate", str(clip), "--out", str(out)], capsys)
    assert str(clip) in line and reason in line
    assert untouched(out)


def test_directory_as_audio_says_directory(tmp_path, capsys):
    out = tmp_path / "out"
    line = fails(["generate", str(tmp_path), "--out", str(out)], capsys)
    assert str(tmp_path) in line and ("is a directory" in line or "is a folder" in line) and "not found" not in line
    assert untouched(out)


def test_missing_audio_says_not_found(tmp_path, capsys):
    line = fails(["generate", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "out")], capsys)
    assert "nope.wav" in line and "not found" in line and untouched(tmp_path / "out")


def test_too_short_clip_is_padded_and_says_so(shared_pipeline, tmp_path, capsys, caplog):
    from fusion.audio import MIN_SECONDS

    clip = wav(tmp_path / "blip.wav", seconds=0.05)
    with caplog.at_level("WARNING", logger="fusion.audio"):
        assert cli.main(["generate", str(clip), "--out", str(tmp_path / "out"), "--steps", "1"]) == 0
    assert "blip.wav" in caplog.text and f"shorter than the {MIN_SECONDS:g} s the audio encoder needs" in caplog.text
    assert (tmp_path / "out" / "blip_0.png").is_file()


# ------------------------------------------------------------------------------------------------ manifests


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("m.jsonl", '{"audio": "a.wav"}\n{"caption": "no audio, no id"}\n', "line 2: needs an audio path or an id"),
        ("m.jsonl", '{"audio": "a.wav"}\n{"audio": "b.wav"\n', "line 2: not JSON"),
        ("m.csv", "sound,text\nx.wav,a dog\n", "m.csv"),
        ("m.jsonl", b'{"audio": "\xff\xfe.wav"}\n', "not UTF-8"),
        ("m.jsonl", "\n\n", "lists no clips"),
        ("m.jsonl", '{"id": "../../escape", "audio": "a.wav"}\n', "line 1: clip id '../../escape'"),
    ],
    ids=["missing-column", "bad-json-line", "csv-without-columns", "not-utf8", "no-clips", "dotdot-id"],
)
def test_bad_manifest(name, content, reason, tmp_path, capsys):
    manifest = tmp_path / name
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    line = fails(["batch", "--input", str(manifest), "--out", str(out)], capsys)
    assert str(manifest) in line and reason in line
    assert untouched(out)


# -------------------------------------------------------------------------------------- presets, checkpoints


@pytest.fixture
def preset(tmp_path) -> Path:
    """A copy of the shipped preset to damage."""
    folder = tmp_path / "preset"
    shutil.copytree(DEMO, folder)
    return folder


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _bank_of_wrong_width(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    n = len(json.loads((folder / "caption_bank" / "captions.json").read_text()))
    save_file({"points": torch.zeros(n, 8, dtype=torch.float16)}, str(folder / "caption_bank" / "points.safetensors"))


def _only_bin(folder: Path) -> None:
    weights = folder / ADAPTER_WEIGHTS
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))


DAMAGE = {
    "truncated-adapters": (lambda f: _cut(f / ADAPTER_WEIGHTS), ADAPTER_WEIGHTS, "truncated"),
    "random-translator": (
        lambda f: (f / "translator/diffusion_pytorch_model.safetensors").write_bytes(
            np.random.default_rng(0).bytes(4096)
        ),
        "translator/diffusion_pytorch_model.safetensors",
        "not a safetensors file",
    ),
    "truncated-adapters-config": (lambda f: _cut(f / "adapters/config.json"), "adapters/config.json", "not valid JSON"),
    "truncated-preset-json": (lambda f: _cut(f / "preset.json"), "preset.json", "not valid JSON"),
    "bin-only-adapters": (_only_bin, "adapters", "holds only pickle weights"),
    "bank-wrong-width": (_bank_of_wrong_width, "caption_bank/points.safetensors", "dim 8"),
    "truncated-bank-points": (
        lambda f: _cut(f / "caption_bank/points.safetensors"),
        "caption_bank/points.safetensors",
        "truncated",
    ),
    "truncated-bank-captions": (
        lambda f: _cut(f / "caption_bank/captions.json"),
        "caption_bank/captions.json",
        "not valid JSON",
    ),
    "truncated-image-model": (
        lambda f: _cut(f / "image_model/unet/diffusion_pytorch_model.safetensors", 0.9),
        "image_model/unet/diffusion_pytorch_model.safetensors",
        "truncated",
    ),
    "translator-dim-mismatch": (
        lambda f: (f / "translator/config.json").write_text(
            json.dumps({**json.loads((f / "translator/config.json").read_text()), "in_dim": 7})
        ),
        "translator/config.json",
        "takes dim 7",
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_preset(kind, preset, tmp_path, capsys):
    damage, names, reason = DAMAGE[kind]
    damage(preset)
    clip = wav(tmp_path / "ok.wav")
    out = tmp_path / "out"
    line = fails(["generate", str(clip), "--out", str(out), "--preset", str(preset)], capsys)
    assert str(preset / names) in line and reason in line, line
    assert untouched(out)


def test_damaged_preset_is_a_checkpoint_error_and_never_unpickled(preset, monkeypatch):
    import torch

    from generator.presets import load_preset

    _only_bin(preset)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_preset(str(preset))


def test_ui_start_with_a_damaged_preset_is_one_line(preset, capsys):
    _cut(preset / ADAPTER_WEIGHTS)
    line = fails(["ui", "--preset", str(preset), "--port", "7999"], capsys)
    assert str(preset / ADAPTER_WEIGHTS) in line


# -------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["generate", "{clip}", "--out", "{out}", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["generate", "{clip}", "--out", "{out}", "--batch-size", "-3"], "--batch-size"),
        (["generate", "{clip}", "--out", "{out}", "--steps", "-1"], "--steps must be at least 1, got -1"),
        (["generate", "{clip}", "--out", "{out}", "--guidance", "nan"], "--guidance must be a finite number"),
        (["generate", "{clip}", "--out", "{out}", "--guidance", "-2"], "--guidance"),
        (["generate", "{clip}", "--out", "{out}", "--text-weight", "2", "--text", "hi"], "--text-weight"),
        (["batch", "--input", "{clip}", "--out", "{out}", "--num-images-per-audio", "0"], "--num-images-per-audio"),
        (["batch", "--input", "{clip}", "--out", "{out}", "--guidance", "inf"], "--guidance"),
        (["batch", "--input", "{clip}", "--out", "{out}", "--view-size", "-1"], "--view-size"),
        (["ui", "--port", "0"], "--port"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_option(argv, flag, tmp_path, capsys):
    clip, out = wav(tmp_path / "ok.wav"), tmp_path / "out"
    argv = [a.format(clip=clip, out=out) for a in argv]
    line = fails(argv, capsys)
    assert flag in line
    assert untouched(out)


def test_unknown_mode_is_argparse_usage_error(tmp_path, capsys):
    clip, out = wav(tmp_path / "ok.wav"), tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        cli.main(["generate", str(clip), "--out", str(out), "--mode", "dream"])
    assert info.value.code == 2
    assert "argument --mode: invalid choice: 'dream'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert untouched(out)


# ------------------------------------------------------------------------------------------- latent caches


def _caches(root: Path, n: int = 12) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(n)]
    audio = write_latents(
        root / "audio", rng.standard_normal((n, 16)).astype(np.float32), ids, ids, {"modality": "audio", "encoder": "a"}
    )
    text = write_latents(
        root / "text",
        rng.standard_normal((n, 8)).astype(np.float32),
        ids,
        ids,
        {"modality": "text", "encoder": "t"},
        texts=ids,
    )
    return audio, text


def _edit_manifest(folder: Path, **changes) -> None:
    meta = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**meta, **changes}))


CACHE_DAMAGE = {
    "truncated-shard": (lambda a: _cut(a / "shard-00000.npy", 0.6), "shard-00000.npy", "truncated"),
    "shards-disagree-with-manifest": (
        lambda a: _edit_manifest(a, shards=[{"file": "shard-00000.npy", "count": 99}]),
        "shard-00000.npy",
        "manifest says 99",
    ),
    "wrong-dim": (lambda a: _edit_manifest(a, dim=32), "", "shards hold dim 16, manifest.json says 32"),
    "truncated-manifest": (lambda a: _cut(a / "manifest.json"), "manifest.json", "not valid JSON"),
    "random-shard": (
        lambda a: (a / "shard-00000.npy").write_bytes(np.random.default_rng(1).bytes(300)),
        "shard-00000.npy",
        "not a readable .npy shard",
    ),
}


@pytest.mark.parametrize("kind", list(CACHE_DAMAGE))
def test_damaged_latent_cache(kind, tmp_path, capsys):
    audio, text = _caches(tmp_path)
    damage, name, reason = CACHE_DAMAGE[kind]
    damage(audio)
    out = tmp_path / "run"
    line = fails(["train", "--audio-latents", str(audio), "--text-latents", str(text), "--out", str(out)], capsys)
    assert str(audio) in line and name in line and reason in line, line
    assert untouched(out)


# ------------------------------------------------------------------------------------------------------- UI


class _Recorder:
    """Stands in for the pipeline: records calls, so a test can tell no model ran."""

    max_seconds = 30.0

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("the pipeline must not run for a refused request")


def test_ui_refuses_a_too_long_text_prompt(tmp_path):
    import gradio as gr

    from ui.app import MAX_TEXT_CHARS, Generator

    pipe = _Recorder()
    with pytest.raises(gr.Error) as info:
        Generator(pipe).generate(str(wav(tmp_path / "ok.wav")), "x" * 400_000, 0.5, "translate", 1, 3.0, 0, False, 1)
    assert f"{MAX_TEXT_CHARS:,}" in info.value.message and "400,000 characters" in info.value.message
    assert pipe.calls == 0


def test_ui_refuses_a_too_big_file(tmp_path):
    import gradio as gr

    from ui.app import Generator

    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (2 * 1024 * 1024 + 10))
    pipe = _Recorder()
    with pytest.raises(gr.Error) as info:
        Generator(pipe, max_file_mb=2).generate(str(big), "", 0.0, "translate", 1, 3.0, 0, False, 1)
    assert "big.wav" in info.value.message and "limit of 2 MB" in info.value.message
    assert pipe.calls == 0


def test_ui_shows_a_user_error_as_a_message_and_logs_a_bug(tmp_path, caplog):
    import gradio as gr

    from ui.app import Generator

    def user_error(*args, **kwargs):
        raise InputError("text_weight must be in [0, 1], got 3")

    def bug(*args, **kwargs):
        raise ValueError("mat1 and mat2 shapes cannot be multiplied")

    clip = str(wav(tmp_path / "ok.wav"))
    with pytest.raises(gr.Error, match=r"text_weight must be in \[0, 1\]"):
        Generator(user_error).generate(clip, "", 0.0, "translate", 1, 3.0, 0, False, 1)
    with pytest.raises(gr.Error, match="Generation failed \\(ValueError\\)"):
        Generator(bug).generate(clip, "", 0.0, "translate", 1, 3.0, 0, False, 1)
    assert "mat1 and mat2" in caplog.text and "Traceback" in caplog.text  # the server log keeps the traceback


# -------------------------------------------------------------------------------------- bugs keep tracebacks


@pytest.mark.parametrize("error", [ValueError("shape (3, 4) vs (4, 5)"), RuntimeError("CUDA kernel failed")])
def test_an_internal_error_propagates_with_its_traceback(error, tmp_path, monkeypatch, capsys):
    from generator import presets

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(presets, "load_preset", broken)
    from generator import audio_to_image

    monkeypatch.setattr(audio_to_image, "load_preset", broken)
    with pytest.raises(type(error), match=str(error).split(" ")[0]):
        cli.main(["generate", str(wav(tmp_path / "ok.wav")), "--out", str(tmp_path / "out")])
    assert "error:" not in capsys.readouterr().err


def test_every_user_error_class_is_also_the_builtin_it_refines():
    from fusion.errors import AudioError, MissingFileError, MissingModelError

    assert issubclass(InputError, ValueError) and issubclass(AudioError, InputError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(MissingModelError, FileNotFoundError)
    assert issubclass(CheckpointError, ValueError)
    assert all(issubclass(c, FusemixError) for c in (InputError, MissingModelError, CheckpointError))
