"""FuseMix training end to end on synthetic latents: learning, baselines, resume, eval CLI, bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusemix import cli
from fusemix import evaluate as eval_cli
from fusemix import train as train_cli
from fusion.adapters import FuseMixAdapters
from fusion.cache import write_latents
from fusion.errors import FusemixError
from tests.interrupt import interrupt_after

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_caches(root: Path, split: str, n: int, captions: int, relation: str, seed: int, k: int = 8):
    """Audio = linear in a hidden code z; captions = linear or non-linear (cos/sin) in z, plus noise.

    The mixing matrices come from a fixed seed so that train and test splits share one relation.
    """
    mats = np.random.default_rng(1234)
    wa, wt, wn = mats.standard_normal((k, 32)), mats.standard_normal((k, 24)), mats.standard_normal((2 * k, 24))
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k))
    audio = z @ wa + 0.1 * rng.standard_normal((n, 32))
    zc = np.repeat(z, captions, axis=0)
    if relation == "linear":
        text = zc @ wt
    else:  # cos/sin of the code: no linear map from audio recovers it
        text = np.concatenate([np.cos(np.pi * zc / 2), np.sin(np.pi * zc / 2)], axis=1) @ wn
    text = text + 0.05 * rng.standard_normal(text.shape)
    clips = [f"{split}-{i}" for i in range(n)]
    caption_clips = [c for c in clips for _ in range(captions)]
    # captions stored shuffled: pairing must go by clip id, not by position
    order = rng.permutation(len(caption_clips))
    a = write_latents(root / split / "audio", audio.astype(np.float32), clips, clips, {"modality": "audio"})
    t = write_latents(
        root / split / "text",
        text[order].astype(np.float32),
        [f"{caption_clips[j]}#{j}" for j in order],
        [caption_clips[j] for j in order],
        {"modality": "text"},
        texts=[f"caption {j}" for j in order],
    )
    return a, t


def train_args(audio, text, out, *extra):
    return [
        "--audio-latents",
        str(audio),
        "--text-latents",
        str(text),
        "--out",
        str(out),
        "--no-progress",
        "--warmup-steps",
        "10",
        "--dropout",
        "0.0",
        "--weight-decay",
        "0.0",
        "--shared-dim",
        "64",
        *extra,
    ]


def run_eval(*args) -> dict:
    json_path = Path(args[args.index("--json") + 1])
    assert eval_cli.main(list(args)) == 0
    return json.loads(json_path.read_text())


@pytest.mark.slow
def test_training_lifts_recall_from_chance(tmp_path, capsys):
    train_a, train_t = make_caches(tmp_path, "train", 2000, 1, "linear", seed=0)
    test_a, test_t = make_caches(tmp_path, "test", 100, 5, "linear", seed=1)
    out = tmp_path / "run"
    assert train_cli.main(train_args(train_a, train_t, out, "--epochs", "15", "--batch-size", "256")) == 0
    common = ["--audio-latents", str(test_a), "--text-latents", str(test_t), "--checkpoint", str(out)]
    before = run_eval(*common, "--method", "random", "--json", str(tmp_path / "random.json"))
    after = run_eval(*common, "--json", str(tmp_path / "fusemix.json"), "--plot", str(tmp_path / "curve.png"))
    assert set(after) == {"text_to_audio", "audio_to_text", "num_clips", "num_captions"}
    assert set(after["text_to_audio"]) == {"R@1", "R@5", "R@10", "mAP@10"}
    assert after["num_clips"] == 100 and after["num_captions"] == 500
    assert before["text_to_audio"]["R@1"] < 0.1
    assert after["text_to_audio"]["R@1"] > 0.9
    assert after["audio_to_text"]["R@1"] > 0.9
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "fusemix" in capsys.readouterr().out
    saved = json.loads((out / "checkpoint" / "train_config.json").read_text())
    assert saved["epochs"] == 15 and saved["batch_size"] == 256


@pytest.mark.slow
def test_fusemix_beats_linear_baselines_on_nonlinear_relation(tmp_path):
    train_a, train_t = make_caches(tmp_path, "train", 2000, 2, "nonlinear", seed=0)
    test_a, test_t = make_caches(tmp_path, "test", 100, 5, "nonlinear", seed=1)
    out = tmp_path / "run"
    assert (
        train_cli.main(train_args(train_a, train_t, out, "--epochs", "25", "--batch-size", "128", "--alpha", "0.3"))
        == 0
    )
    results = run_eval(
        "--audio-latents",
        str(test_a),
        "--text-latents",
        str(test_t),
        "--checkpoint",
        str(out),
        "--method",
        "fusemix",
        "linear",
        "procrustes",
        "random",
        "--train-audio-latents",
        str(train_a),
        "--train-text-latents",
        str(train_t),
        "--json",
        str(tmp_path / "all.json"),
    )
    r1 = {name: m["text_to_audio"]["R@1"] for name, m in results.items()}
    assert r1["fusemix"] > 0.6, r1
    assert r1["fusemix"] > max(r1["linear"], r1["procrustes"]) + 0.3, r1


def test_linear_baseline_recovers_linear_relation(tmp_path):
    train_a, train_t = make_caches(tmp_path, "train", 400, 1, "linear", seed=0)
    test_a, test_t = make_caches(tmp_path, "test", 100, 2, "linear", seed=1)
    results = run_eval(
        "--audio-latents",
        str(test_a),
        "--text-latents",
        str(test_t),
        "--method",
        "linear",
        "procrustes",
        "--train-audio-latents",
        str(train_a),
        "--train-text-latents",
        str(train_t),
        "--json",
        str(tmp_path / "b.json"),
    )
    assert results["linear"]["text_to_audio"]["R@1"] > 0.9
    assert results["procrustes"]["text_to_audio"]["R@1"] > 0.02  # runs; an orthogonal map fits this relation worse


def test_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    audio, text = make_caches(tmp_path, "train", 300, 3, "linear", seed=0)
    base = ["--epochs", "4", "--batch-size", "64", "--dropout", "0.2", "--val-fraction", "0.1"]
    assert train_cli.main(train_args(audio, text, tmp_path / "full", *base)) == 0

    interrupt_after(monkeypatch, "epoch", 2)  # an interruption right after the epoch-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_cli.main(train_args(audio, text, tmp_path / "cut", *base))
    assert json.loads((tmp_path / "cut" / "checkpoint" / "trainer_state.json").read_text())["epoch"] == 2
    with pytest.raises(FusemixError, match="--resume"):
        train_cli.main(train_args(audio, text, tmp_path / "cut", *base))
    with pytest.raises(FusemixError, match="lr"):
        train_cli.main(train_args(audio, text, tmp_path / "cut", *base, "--resume", "--lr", "0.01"))
    assert train_cli.main(train_args(audio, text, tmp_path / "cut", *base, "--resume")) == 0

    full = load_file(str(tmp_path / "full" / "checkpoint" / "diffusion_pytorch_model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "checkpoint" / "diffusion_pytorch_model.safetensors"))
    assert full.keys() == cut.keys()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    states = [json.loads((tmp_path / run / "checkpoint" / "trainer_state.json").read_text()) for run in ("full", "cut")]
    assert states[0]["step"] == states[1]["step"] == 4 * 4
    assert [h["loss"] for h in states[0]["history"]] == [h["loss"] for h in states[1]["history"]]
    assert "val" in states[0]["history"][-1]
    assert not any(p.name.startswith(".") for p in (tmp_path / "cut").iterdir())  # no temp folders left


def test_heads_are_the_next_seeds_runs_joined_and_resume(tmp_path, monkeypatch):
    audio, text = make_caches(tmp_path, "train", 200, 2, "linear", seed=0)
    base = ["--epochs", "3", "--batch-size", "64"]
    assert train_cli.main(train_args(audio, text, tmp_path / "seed1", *base, "--seed", "1")) == 0
    interrupt_after(monkeypatch, "epoch", 2)  # head 0 stops after its epoch 2
    with pytest.raises(KeyboardInterrupt):
        train_cli.main(train_args(audio, text, tmp_path / "two", *base, "--heads", "2"))
    with pytest.raises(FusemixError, match="--resume"):
        train_cli.main(train_args(audio, text, tmp_path / "two", *base, "--heads", "2"))
    assert train_cli.main(train_args(audio, text, tmp_path / "two", *base, "--heads", "2", "--resume")) == 0

    joined = FuseMixAdapters.from_pretrained(tmp_path / "two" / "checkpoint")
    assert joined.heads == 2 and joined.shared_dim == 128
    weights = load_file(str(tmp_path / "two" / "checkpoint" / "diffusion_pytorch_model.safetensors"))
    alone = load_file(str(tmp_path / "seed1" / "checkpoint" / "diffusion_pytorch_model.safetensors"))
    for key, value in alone.items():  # head 1 is the seed-1 run, weight for weight
        if key.startswith("towers."):
            modality, rest = key.split(".", 2)[1:]
            assert torch.equal(weights[f"towers.{modality}.heads.1.{rest}"], value), key
    state = json.loads((tmp_path / "two" / "checkpoint" / "trainer_state.json").read_text())
    assert state["epoch"] == 3 and [h["epoch"] for h in state["heads"]] == [3, 3]
    saved = json.loads((tmp_path / "two" / "checkpoint" / "train_config.json").read_text())
    assert saved["heads"] == 2 and saved["seed"] == 0
    with pytest.raises(FusemixError, match="already holds a checkpoint"):  # a finished join is kept
        train_cli.main(train_args(audio, text, tmp_path / "two", *base, "--heads", "2"))
    with pytest.raises(FusemixError, match="heads"):
        train_cli.main(train_args(audio, text, tmp_path / "bad", *base, "--heads", "0"))


def test_lock_text_with_bf16_lands_audio_in_text_space(tmp_path):
    audio, text = make_caches(tmp_path, "train", 400, 1, "linear", seed=0)
    args = train_args(
        audio,
        text,
        tmp_path / "run",
        "--epochs",
        "20",
        "--batch-size",
        "64",
        "--lock-text",
        "--bf16",
        "--val-fraction",
        "0.2",
    )
    args.remove("--shared-dim")
    args.remove("64")
    assert train_cli.main(args) == 0
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["history"][-1]["val"]["text_to_audio"]["R@1"] > 0.8
    config = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert config["lock_text"] is True and config["shared_dim"] == config["text_dim"] == 24
    with pytest.raises(ValueError, match="shared_dim must equal text_dim"):
        train_cli.main(train_args(audio, text, tmp_path / "bad", "--epochs", "1", "--lock-text"))


def test_training_state_has_no_pickle(tmp_path):
    audio, text = make_caches(tmp_path, "train", 64, 1, "linear", seed=0)
    assert train_cli.main(train_args(audio, text, tmp_path / "run", "--epochs", "1", "--batch-size", "32")) == 0
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert files == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "optimizer.safetensors",
        "train_config.json",
        "trainer_state.json",
    ]
    opt = load_file(str(tmp_path / "run" / "checkpoint" / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg") for k in opt)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    audio, text = make_caches(tmp_path, "train", 20, 2, "linear", seed=0)
    other_audio, _ = make_caches(tmp_path, "other", 20, 1, "linear", seed=0)
    with pytest.raises(FusemixError, match="absent from"):
        train_cli.main(train_args(other_audio, text, tmp_path / "run", "--epochs", "1"))
    # through the fusemix command: one line, exit 1
    assert cli.main(["train", *train_args(tmp_path / "missing", text, tmp_path / "run", "--epochs", "1")]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "manifest.json" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["eval", "--audio-latents", str(audio), "--text-latents", str(text)]) == 1
    assert "--checkpoint" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "eval",
                "--audio-latents",
                str(audio),
                "--text-latents",
                str(text),
                "--checkpoint",
                str(tmp_path / "nowhere"),
            ]
        )
        == 1
    )
    assert "no FuseMix checkpoint" in capsys.readouterr().err
    assert cli.main(["eval", "--audio-latents", str(audio), "--text-latents", str(text), "--method", "linear"]) == 1
    assert "--train-audio-latents" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--batch-size"):
        train_cli.main(train_args(audio, text, tmp_path / "run", "--batch-size", "1"))


@pytest.mark.slow
def test_two_processes_under_accelerate(tmp_path):
    """`accelerate launch --multi_gpu` is accelerate's torchrun launcher; without CUDA it runs CPU processes (gloo)."""
    audio, text = make_caches(tmp_path, "train", 400, 1, "linear", seed=0)
    extra = ["--epochs", "3", "--batch-size", "64"]
    assert train_cli.main(train_args(audio, text, tmp_path / "single", *extra)) == 0
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "fusemix",
        "train",
        *train_args(audio, text, out, *extra),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stderr
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    single = json.loads((tmp_path / "single" / "checkpoint" / "trainer_state.json").read_text())
    assert state["epoch"] == 3 and state["step"] == single["step"] == 3 * (400 // 64)
    losses, single_losses = [h["loss"] for h in state["history"]], [h["loss"] for h in single["history"]]
    assert losses[-1] < losses[0]
    assert abs(losses[-1] - single_losses[-1]) < 0.15 * single_losses[-1], (losses, single_losses)


def test_cli_picks_towers_from_the_caches_and_defaults_are_the_recipe(tmp_path):
    """No tower flags: a token cache gets a sparse tower keeping min(16, K), a pooled cache an MLP tower."""
    from fusemix.train import parse_config
    from generator.recipe import DEFAULT

    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(4)]
    tokens = write_latents(tmp_path / "a32", rng.standard_normal((4, 32, 8)).astype(np.float32), ids, ids, {})
    few = write_latents(tmp_path / "t4", rng.standard_normal((4, 4, 8)).astype(np.float32), ids, ids, {})
    pooled = write_latents(tmp_path / "p", rng.standard_normal((4, 8)).astype(np.float32), ids, ids, {})
    base = ["--out", str(tmp_path / "run")]
    cfg = parse_config(["--audio-latents", str(tokens), "--text-latents", str(few), *base])
    assert (cfg.audio_adapter, cfg.keep, cfg.text_adapter, cfg.text_keep) == ("sparse", 16, "sparse", 4)
    cfg = parse_config(["--audio-latents", str(pooled), "--text-latents", str(pooled), *base])
    assert (cfg.audio_adapter, cfg.keep, cfg.text_adapter, cfg.text_keep) == ("mlp", None, "mlp", None)
    cfg = parse_config(["--audio-latents", str(tokens), "--text-latents", str(pooled), "--keep", "5", *base])
    assert (cfg.audio_adapter, cfg.keep, cfg.text_adapter) == ("sparse", 5, "mlp")
    cfg = parse_config(["--audio-latents", str(tokens), "--text-latents", str(few), "--lock-text", *base])
    assert cfg.text_adapter == "mlp"
    for field in ("epochs", "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay", "alpha", "dropout",
                  "num_blocks", "expansion", "sparse_mode", "token_blocks"):  # fmt: skip
        assert getattr(cfg, field) == getattr(DEFAULT, field), field
