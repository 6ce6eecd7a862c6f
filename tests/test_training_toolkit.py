"""The shared training toolkit (fusion.training): schedule, seeds, checkpoint manager; and resume = uninterrupted
for the image model and the translator (the adapters' test is in test_train.py).

An interruption is simulated by a checkpoint save that raises once the run reaches a given step or epoch, as
Ctrl-C right after that checkpoint would: no sleeps, no process killing.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_stable_diffusion  # noqa: E402

from fusemix import demo_train_image_model as image_cli  # noqa: E402
from fusemix import train_translator as translator_cli  # noqa: E402
from fusion.adapters import FuseMixAdapters  # noqa: E402
from fusion.cache import write_latents  # noqa: E402
from fusion.errors import CheckpointError, FusemixError, InputError  # noqa: E402
from fusion.training import (  # noqa: E402
    CONFIG_FILE,
    STATE_FILE,
    CheckpointManager,
    WarmupCosine,
    derive_seed,
    restore_optimizer,
    torch_generator,
)
from generator import train_image_model as image_module  # noqa: E402
from generator.train_image_model import ImageModelConfig, train_image_model  # noqa: E402
from tests.interrupt import interrupt_after

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def assert_same_tensors(a: Path, b: Path) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), (a.name, key)


# ---------------------------------------------------------------- schedule and seeds


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(lr=2.0, total_steps=12, warmup_steps=4, min_lr=0.2)
    assert [schedule(s) for s in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # linear warm-up to the peak
    assert schedule(4) == pytest.approx(2.0)  # the cosine starts at the peak
    assert schedule(8) == pytest.approx(0.2 + 1.8 * 0.5)  # half way: the mean of peak and floor
    assert schedule(12) == pytest.approx(0.2) and schedule(50) == pytest.approx(0.2)  # floor at the end, and after
    decay = [schedule(s) for s in range(4, 13)]
    assert all(x > y for x, y in zip(decay, decay[1:], strict=False))
    no_warmup = WarmupCosine(lr=1.0, total_steps=10, min_lr=0.01)
    assert no_warmup(0) == 1.0 and no_warmup(5) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2)))

    opt = torch.optim.AdamW(
        [{"params": [torch.nn.Parameter(torch.ones(2))]}, {"params": [torch.nn.Parameter(torch.ones(1))]}]
    )
    assert schedule.apply(opt, 1) == pytest.approx(1.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 1.0])


def test_seeds_are_a_pure_function_of_their_parts():
    assert derive_seed(0, "epoch", 3) == derive_seed(0, "epoch", 3)
    seeds = {derive_seed(base, *parts) for base in (0, 1) for parts in [("epoch", 0), ("epoch", 1), ("dropout", 0), ()]}
    assert len(seeds) == 8
    assert 0 <= derive_seed(7, "x") < 2**63
    a = torch.rand(5, generator=torch_generator(3, "order", 2))
    assert torch.equal(a, torch.rand(5, generator=torch_generator(3, "order", 2)))
    assert not torch.equal(a, torch.rand(5, generator=torch_generator(3, "order", 1)))
    assert derive_seed(1, zlib.crc32(b"a")) == derive_seed(1, "a")  # a string part stands for its CRC-32
    with pytest.raises(ValueError, match="seed"):
        derive_seed(-1)


# ---------------------------------------------------------------- checkpoint manager


class TinyModel(torch.nn.Linear):
    def save_pretrained(self, folder) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(Path(folder) / "model.safetensors"))


def trained_optimizer() -> tuple[TinyModel, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = TinyModel(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_without_pickle(tmp_path):
    model, opt = trained_optimizer()
    manager = CheckpointManager(tmp_path / "run" / "ckpt", {"lr": 0.1, "epochs": 3})
    assert manager.start(resume=False) is None
    extra = {"ema.0": torch.arange(4.0)}
    manager.save(
        {"step": 1, "history": [1.5]}, optimizer=opt, model=model, extra=extra, files={"report.json": {"a": 1}}
    )
    files = sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir())
    assert files == sorted(
        [CONFIG_FILE, "extra.safetensors", "model.safetensors", "optimizer.safetensors", "report.json", STATE_FILE]
    )
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]

    back = manager.start(resume=True)
    assert back.state["step"] == 1 and back.state["history"] == [1.5]
    assert torch.equal(back.extra["ema.0"], extra["ema.0"])
    fresh = torch.optim.AdamW(TinyModel(3, 2).parameters(), lr=0.5)
    restore_optimizer(fresh, back)
    for saved, loaded in zip(opt.state.values(), fresh.state.values(), strict=True):
        assert torch.equal(saved["exp_avg"], loaded["exp_avg"]) and torch.equal(
            saved["exp_avg_sq"], loaded["exp_avg_sq"]
        )
    assert fresh.param_groups[0]["lr"] == 0.1


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", {"lr": 0.1}, run_name="runs/x")
    with pytest.raises(InputError, match="--resume: no checkpoint in runs/x"):
        manager.start(resume=True)
    manager.save({"step": 3})
    with pytest.raises(InputError, match="runs/x already holds a checkpoint; pass --resume") as err:
        manager.start(resume=False)
    assert "\n" not in str(err.value)
    other = tmp_path / "model_index.json"
    other.write_text("{}")
    with pytest.raises(InputError, match="model_index.json already exists"):
        CheckpointManager(tmp_path / "elsewhere", {}).start(resume=False, outputs=[other])
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="stranger already exists"):
        CheckpointManager(tmp_path / "stranger", {}).start(resume=False)


def test_config_mismatch_names_every_differing_key_in_one_line(tmp_path):
    saved = {"lr": 0.1, "epochs": 3, "widths": (8, 16), "out": "a", "new_field": 1}
    CheckpointManager(tmp_path / "ckpt", {k: v for k, v in saved.items() if k != "new_field"}).save({"step": 1})
    changed = {"lr": 0.2, "epochs": 3, "widths": (8, 32), "out": "b", "new_field": 1}
    manager = CheckpointManager(tmp_path / "ckpt", changed, may_change=frozenset({"out"}), defaults={"new_field": 1})
    with pytest.raises(CheckpointError) as err:
        manager.start(resume=True)
    message = str(err.value)
    assert "\n" not in message
    assert "lr: 0.1 -> 0.2" in message and "widths: [8, 16] -> (8, 32)" in message
    assert "epochs" not in message and "out" not in message.split("(")[1] and "new_field" not in message
    same = CheckpointManager(
        tmp_path / "ckpt", {**saved, "out": "b"}, may_change=frozenset({"out"}), defaults={"new_field": 1}
    )
    assert same.start(resume=True).state["step"] == 1  # a tuple equals the list it was saved as


def test_leftover_temp_and_interrupted_swap_do_not_break_a_rerun(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", {"lr": 0.1})
    junk = tmp_path / ".ckpt.tmp"  # a save killed half way
    junk.mkdir()
    (junk / STATE_FILE).write_text("{not json")
    assert manager.start(resume=False) is None  # a temp folder is not a checkpoint
    manager.save({"step": 1})
    assert not junk.exists() and json.loads((tmp_path / "ckpt" / STATE_FILE).read_text())["step"] == 1

    (tmp_path / "ckpt").rename(tmp_path / ".ckpt.old")  # killed between the two renames of a swap
    assert manager.latest() == tmp_path / ".ckpt.old"
    with pytest.raises(InputError, match="--resume"):
        manager.start(resume=False)
    assert manager.start(resume=True).state["step"] == 1
    manager.save({"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert json.loads((tmp_path / "ckpt" / STATE_FILE).read_text())["step"] == 2


# ---------------------------------------------------------------- image model


class TinyTextEncoder:
    """Stands in for MiniLM: 4 token states of width 8, a fixed function of the text."""

    def __init__(self, *args, **kwargs) -> None:
        self.dim = 8

    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.randn(4, 8, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return torch.stack(rows)


def tiny_image_config(out: Path, **changes) -> ImageModelConfig:
    cfg = dict(out=str(out), steps=4, batch_size=2, resolution=16, widths=(8, 16), warmup_steps=1)
    cfg.update(checkpoint_every=2, bf16=False, progress=False, cond_dropout=0.5)
    return ImageModelConfig(**{**cfg, **changes})


def test_image_model_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    encoder = TinyTextEncoder()
    train_image_model(tiny_image_config(tmp_path / "full"), encoder=encoder)

    interrupt_after(monkeypatch, "step", 2)
    with pytest.raises(KeyboardInterrupt):
        train_image_model(tiny_image_config(tmp_path / "cut"), encoder=encoder)
    assert json.loads((tmp_path / "cut" / "training_state" / STATE_FILE).read_text())["step"] == 2
    with pytest.raises(InputError, match="--resume"):
        train_image_model(tiny_image_config(tmp_path / "cut"), encoder=encoder)
    with pytest.raises(CheckpointError, match=r"lr: 0\.0005 -> 0\.001") as err:
        train_image_model(tiny_image_config(tmp_path / "cut", lr=1e-3), resume=True, encoder=encoder)
    assert "batch_size" not in str(err.value)
    train_image_model(tiny_image_config(tmp_path / "cut"), resume=True, encoder=encoder)

    for part in ("unet/diffusion_pytorch_model.safetensors", "training_state/extra.safetensors"):
        assert_same_tensors(tmp_path / "full" / part, tmp_path / "cut" / part)
    assert_same_tensors(
        tmp_path / "full/training_state/optimizer.safetensors", tmp_path / "cut/training_state/optimizer.safetensors"
    )
    records = [json.loads((tmp_path / run / "train_config.json").read_text()) for run in ("full", "cut")]
    assert records[0]["step"] == records[1]["step"] == 4 and records[0]["loss"] == records[1]["loss"]
    assert not [p for p in (tmp_path / "cut").rglob(".*")]  # no temp folders left


def test_image_model_command_resumes_refuses_and_starts_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(image_module, "TokenStateEncoder", TinyTextEncoder)
    out = tmp_path / "img"
    args = ["--out", str(out), "--batch-size", "2", "--widths", "8", "16", "--warmup-steps", "1"]
    args += ["--checkpoint-every", "1", "--no-bf16", "--no-progress"]
    assert image_cli.main([*args, "--steps", "1"]) == 0
    with pytest.raises(InputError, match="--resume"):
        image_cli.main([*args, "--steps", "2"])
    assert image_cli.main([*args, "--steps", "2", "--resume"]) == 0  # a longer run continues this one
    state = json.loads((out / "training_state" / STATE_FILE).read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2
    with pytest.raises(CheckpointError, match="seed"):
        image_cli.main([*args, "--steps", "3", "--resume", "--seed", "1"])
    assert image_cli.main([*args, "--steps", "1", "--fresh"]) == 0
    assert json.loads((out / "training_state" / STATE_FILE).read_text())["step"] == 1
    with pytest.raises(InputError, match="--fresh"):
        image_cli.parse_args(["--resume", "--fresh"])


def test_training_commands_write_under_runs_by_default():
    cfg, resume, fresh = image_cli.parse_args([])
    assert Path(cfg.out) == Path("runs/image_model") and not (resume or fresh)
    assert not ImageModelConfig().out.startswith("checkpoints")


# ---------------------------------------------------------------- translator


@pytest.fixture(scope="module")
def translator_inputs(tmp_path_factory) -> Path:
    """Tiny SD (its CLIP text encoder gives the targets), untrained adapters, and a caption cache."""
    root = tmp_path_factory.mktemp("translator_inputs")
    tiny_stable_diffusion(root / "sd")
    captions = ["a dog barks", "rain on a roof", "a bell rings", "a car passes", "birds sing", "a door slams", "wind"]
    torch.manual_seed(0)
    latents = torch.randn(len(captions), 12).numpy()
    FuseMixAdapters(audio_dim=6, text_dim=12, shared_dim=10, num_blocks=1).eval().save_pretrained(root / "adapters")
    ids = [f"c{i}" for i in range(len(captions))]
    write_latents(root / "text", latents, [f"{i}#0" for i in ids], ids, {"modality": "text"}, texts=captions)
    return root


def translator_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--adapters", str(root / "adapters"), "--text-latents", str(root / "text"), "--out", str(out),
        "--kind", "stable-diffusion", "--image-model", str(root / "sd"), "--epochs", "4", "--batch-size", "3",
        "--no-progress", *extra,
    ]  # fmt: skip


def test_translator_resume_equals_an_uninterrupted_run(translator_inputs, tmp_path, monkeypatch):
    root = translator_inputs
    assert translator_cli.main(translator_args(root, tmp_path / "full")) == 0

    interrupt_after(monkeypatch, "epoch", 2)
    with pytest.raises(KeyboardInterrupt):
        translator_cli.main(translator_args(root, tmp_path / "cut"))
    assert json.loads((tmp_path / "cut" / STATE_FILE).read_text())["epoch"] == 2
    with pytest.raises(FusemixError, match="--resume"):
        translator_cli.main(translator_args(root, tmp_path / "cut"))
    with pytest.raises(CheckpointError, match="noise"):
        translator_cli.main(translator_args(root, tmp_path / "cut", "--resume", "--noise", "0.2"))
    assert translator_cli.main(translator_args(root, tmp_path / "cut", "--resume")) == 0

    for name in ("diffusion_pytorch_model.safetensors", "optimizer.safetensors"):
        assert_same_tensors(tmp_path / "full" / name, tmp_path / "cut" / name)
    reports = [json.loads((tmp_path / run / "translator_config.json").read_text()) for run in ("full", "cut")]
    assert reports[0]["relative_mse"] == reports[1]["relative_mse"] and reports[0]["num_captions"] == 7
    states = [json.loads((tmp_path / run / STATE_FILE).read_text()) for run in ("full", "cut")]
    assert states[0]["history"] == states[1]["history"] and len(states[0]["history"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "full"]  # no temp folders left
