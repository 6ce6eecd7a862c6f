"""Conditioning distillation and audio points for the translator (generator.translator_distill), on tiny models.

The demo kind runs a tiny random pixel UNet with a stand-in text encoding (4 tokens x 8 dims from a caption's
sha256), so no MiniLM is loaded; the SD kind runs the tiny random SD parts end to end, then generates through
the stock audio-to-image pipeline.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_stable_diffusion, tiny_whisper  # noqa: E402

from demoworld import scenes  # noqa: E402
from fusemix import train_translator as translator_cli  # noqa: E402
from fusion.adapters import FuseMixAdapters  # noqa: E402
from fusion.cache import write_latents  # noqa: E402
from fusion.errors import FusemixError, InputError  # noqa: E402
from fusion.training import STATE_FILE  # noqa: E402
from generator import train_translator as trainer  # noqa: E402
from generator import translator_distill  # noqa: E402
from generator.demo_model import build_unet, sampling_scheduler, training_scheduler  # noqa: E402
from generator.demo_pipeline import DemoImagePipeline  # noqa: E402
from generator.train_translator import TranslatorConfig, train_translator  # noqa: E402
from generator.translator import Translator  # noqa: E402
from tests.interrupt import interrupt_after  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOKENS, DIM = 4, 8


def fake_image_text_encoder(kind: str, image_model=None, device: str = "cpu"):
    """The demo image model's text encoding, stood in for by 4 x 8 numbers from each caption's sha256."""

    def encode(texts: list[str]) -> torch.Tensor:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), np.uint8)[:32] / 64.0 - 2.0 for t in texts]
        return torch.tensor(np.stack(rows), dtype=torch.float32).view(-1, TOKENS, DIM)

    return encode


def demo_captions(n: int = 8) -> list[str]:
    """``n`` demo-world captions of different scenes."""
    seen, out = set(), []
    for text, combo in scenes.training_captions():
        if combo % 53 == 0 and combo not in seen:
            seen.add(combo)
            out.append(text)
    return out[:n]


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory) -> Path:
    """A tiny demo pipeline (16x16 pixels, conditioning 4 x 8), untrained adapters, caption and audio caches."""
    root = tmp_path_factory.mktemp("distill_demo")
    torch.manual_seed(0)
    unet = build_unet(16, DIM, (8, 16), heads=2)
    DemoImagePipeline(unet, sampling_scheduler(training_scheduler())).save_pretrained(str(root / "image_model"))
    captions = demo_captions()
    ids = [f"c{i}" for i in range(len(captions))]
    FuseMixAdapters(audio_dim=6, text_dim=12, shared_dim=10, num_blocks=1).eval().save_pretrained(root / "adapters")
    text = torch.randn(len(captions), 12).numpy()
    write_latents(root / "text", text, [f"{i}#0" for i in ids], ids, {"modality": "text"}, texts=captions)
    audio = torch.randn(len(captions), 6).numpy()
    write_latents(root / "audio", audio, ids, ids, {"modality": "audio", "encoder": "tiny"})
    write_latents(root / "audio_wide", torch.randn(3, 7).numpy(), ids[:3], ids[:3], {"modality": "audio"})
    return root


@pytest.fixture
def fake_encoder(monkeypatch):
    monkeypatch.setattr(trainer, "image_text_encoder", fake_image_text_encoder)


def demo_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--adapters", str(root / "adapters"), "--text-latents", str(root / "text"), "--out", str(out),
        "--image-model", str(root / "image_model"), "--batch-size", "4", "--num-blocks", "1", "--no-progress",
        *extra,
    ]  # fmt: skip


def report(folder: Path) -> dict:
    return json.loads((folder / "translator_config.json").read_text())


def test_distill_trains_only_the_translator_and_lowers_the_distillation_error(
    demo_inputs, fake_encoder, tmp_path, monkeypatch
):
    loaded = []
    original = translator_distill.load_denoiser

    def spy(*args, **kwargs):
        den = original(*args, **kwargs)
        loaded.append((den, {k: v.clone() for k, v in den.unet.state_dict().items()}))
        return den

    monkeypatch.setattr(translator_distill, "load_denoiser", spy)
    argv = demo_args(demo_inputs, tmp_path / "tr", "--objective", "distill", "--epochs", "12", "--lr", "0.01")
    assert translator_cli.main([*argv, "--dropout", "0", "--noise", "0"]) == 0

    rep = report(tmp_path / "tr")
    assert rep["objective"] == "distill" and rep["num_rows"] == 8
    assert rep["distill_error"] < 0.8 * rep["distill_error_start"]
    history = json.loads((tmp_path / "tr" / STATE_FILE).read_text())["history"]
    assert len(history) == 12 and all(h["distill"] > 0 for h in history)
    (den, before), = loaded  # fmt: skip
    assert not den.unet.training and den.vae is None
    for name, param in den.unet.named_parameters():
        assert not param.requires_grad and param.grad is None, name
        assert torch.equal(param.detach(), before[name]), name  # the judge is unchanged, bit for bit
    tr = Translator.from_pretrained(str(tmp_path / "tr"))
    assert (tr.config.num_tokens, tr.config.token_dim) == (TOKENS, DIM)


def test_audio_points_add_training_rows_and_change_the_translator(demo_inputs, fake_encoder, tmp_path):
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "captions", "--epochs", "3")) == 0
    with_audio = ["--epochs", "3", "--audio-latents", str(demo_inputs / "audio")]
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "audio", *with_audio)) == 0

    plain, paired = report(tmp_path / "captions"), report(tmp_path / "audio")
    assert plain["num_rows"] == 8 and "relative_mse_audio" not in plain
    assert paired["num_rows"] == 16 and paired["num_captions"] == 8 and paired["relative_mse_audio"] > 0
    a, b = (load_file(str(tmp_path / run / "diffusion_pytorch_model.safetensors")) for run in ("captions", "audio"))
    assert any(not torch.equal(a[k], b[k]) for k in a)

    # --audio-noise jitters the audio rows as --noise does the captions; 0 (the default) leaves them as they land
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "zero", *with_audio, "--audio-noise", "0")) == 0
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "noisy", *with_audio, "--audio-noise", "0.1")) == 0
    zero, noisy_run = (load_file(str(tmp_path / r / "diffusion_pytorch_model.safetensors")) for r in ("zero", "noisy"))
    assert all(torch.equal(b[k], zero[k]) for k in b) and any(not torch.equal(b[k], noisy_run[k]) for k in b)
    assert report(tmp_path / "noisy")["audio_noise"] == 0.1
    with pytest.raises(InputError, match="--audio-noise must be >= 0"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "bad", *with_audio, "--audio-noise", "-1"))


def test_augmented_views_are_rows_too_unless_turned_off(demo_inputs, fake_encoder, tmp_path):
    """An audio cache with augmented views (extract --augment 2): each view is a row with its clip's caption."""
    ids = [f"c{i}" for i in range(8)]
    rows = [(f"{c}#aug{k}" if k else c, c) for c in ids for k in range(3)]
    audio = torch.randn(len(rows), 6).numpy()
    meta = {"modality": "audio", "encoder": "tiny"}
    write_latents(tmp_path / "views", audio, [r for r, _ in rows], [c for _, c in rows], meta)
    common = ["--epochs", "2", "--audio-latents", str(tmp_path / "views")]
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "all", *common)) == 0
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "own", *common, "--no-audio-views")) == 0
    assert report(tmp_path / "all")["num_rows"] == 8 + 24 and report(tmp_path / "all")["audio_views"]
    assert report(tmp_path / "own")["num_rows"] == 8 + 8 and not report(tmp_path / "own")["audio_views"]
    cfg = translator_cli.parse_config(demo_args(demo_inputs, tmp_path / "x", *common))
    data = trainer._load_data(cfg)
    view_rows = torch.from_numpy(audio[2::3])  # each clip's second view, in clip order
    points = FuseMixAdapters.from_pretrained(demo_inputs / "adapters").embed("audio", view_rows)
    torch.testing.assert_close(data.points[8 + 2 :: 3], points)  # rows: clip by clip, own row then its views
    assert data.row_caption[8:].tolist() == [i for i in range(8) for _ in range(3)]


def test_init_from_starts_from_that_translator_and_refuses_one_of_another_shape(demo_inputs, fake_encoder, tmp_path):
    """MSE first, then distillation from its weights: the fine-tune starts where the MSE run ended."""
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "mse", "--epochs", "3")) == 0
    start = load_file(str(tmp_path / "mse" / "diffusion_pytorch_model.safetensors"))
    tiny_lr = ["--epochs", "1", "--lr", "1e-9", "--objective", "both", "--dropout", "0"]
    warm = demo_args(demo_inputs, tmp_path / "warm", *tiny_lr, "--init-from", str(tmp_path / "mse"))
    assert translator_cli.main(warm) == 0
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "cold", *tiny_lr)) == 0
    warm_w, cold_w = (load_file(str(tmp_path / r / "diffusion_pytorch_model.safetensors")) for r in ("warm", "cold"))
    for name, value in start.items():  # a learning rate of 1e-9 leaves the weights where they started
        torch.testing.assert_close(warm_w[name], value, atol=1e-6, rtol=0)
    assert any(not torch.allclose(cold_w[k], start[k], atol=1e-3) for k in start)
    assert report(tmp_path / "warm")["init_from"] == str(tmp_path / "mse")
    with pytest.raises(InputError, match="--init-from .*do not fit"):
        translator_cli.main(
            demo_args(demo_inputs, tmp_path / "x", "--num-blocks", "2", "--init-from", str(tmp_path / "mse"))
        )
    with pytest.raises(InputError, match="--init-from .*no translator there"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "y", "--init-from", str(tmp_path / "missing")))


def test_neighbour_mix_moves_rows_toward_a_neighbour_but_keeps_them_nearer_their_own_target(
    demo_inputs, fake_encoder, tmp_path
):
    cfg = translator_cli.parse_config(demo_args(demo_inputs, tmp_path / "x", "--neighbour-mix", "1"))
    data = trainer._load_data(cfg)
    table = data.neighbours
    assert table.shape == (8, trainer.NEIGHBOURS)
    assert all(i not in row and len(set(row)) == len(row) for i, row in enumerate(table.tolist()))
    unit = torch.nn.functional.normalize(data.caption_points, dim=-1)
    sims = unit @ unit.T
    assert sims[0, table[0, 0]] == max(sims[0, j] for j in range(1, 8))  # the nearest other target comes first

    captions = torch.arange(8).repeat(4)
    inputs = data.caption_points[captions]
    gen = torch.Generator().manual_seed(0)
    moved = trainer.toward_neighbours(inputs, captions, data, 1.0, gen)
    own = (moved * unit[captions]).sum(-1)
    partner_sims = moved @ unit.T
    assert (moved.norm(dim=-1) - 1).abs().max() < 1e-5
    assert ((moved - inputs).norm(dim=-1) > 0).all()  # every row moved ...
    for r, c in enumerate(captions.tolist()):  # ... toward one of its neighbours, and stays nearer its own target
        partner = max(table[c].tolist(), key=lambda j: partner_sims[r, j].item())
        assert own[r] >= partner_sims[r, partner] - 1e-5
    assert torch.equal(trainer.toward_neighbours(inputs, captions, data, 0.0, gen), inputs)

    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "mix", "--epochs", "2", "--neighbour-mix", "0.5")) == 0
    assert report(tmp_path / "mix")["neighbour_mix"] == 0.5
    with pytest.raises(InputError, match="--neighbour-mix must be in"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "bad", "--neighbour-mix", "1.5"))


def test_snap_metric_is_fitted_on_the_held_clips_each_aimed_at_its_scene(demo_inputs, fake_encoder, tmp_path):
    """``--snap-metric-audio/-text``: after training, the metric comes from the translator's errors on those clips,
    each against the anchor of its caption's bank scene (here every caption is its own scene: clip i, anchor i)."""
    text, audio = str(demo_inputs / "text"), str(demo_inputs / "audio")
    snap = ["--epochs", "2", "--canonical-bank", text, "--snap", "1e-3"]
    held = ["--snap-metric-audio", audio, "--snap-metric-text", text, "--snap-metric-shrink", "0.3"]
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "m", *snap, *held)) == 0
    assert report(tmp_path / "m")["metric_clips"] == 8 and report(tmp_path / "m")["metric_shrink"] == 0.3
    tr = Translator.from_pretrained(str(tmp_path / "m")).eval()
    assert tr.config.metric and tr.metric_anchors.abs().sum() > 0
    by_hand = Translator.from_pretrained(str(tmp_path / "m")).eval()
    by_hand.metric_anchors.zero_()
    points = FuseMixAdapters.from_pretrained(demo_inputs / "adapters").embed(
        "audio", torch.from_numpy(np.asarray(trainer.load_latents(Path(audio)).array, dtype=np.float32))
    )
    trainer.fit_snap_metric(by_hand, points, torch.arange(8), 0.3)
    torch.testing.assert_close(by_hand.metric_anchors, tr.metric_anchors)
    torch.testing.assert_close(by_hand.metric_offsets, tr.metric_offsets)
    # L2 runs (no metric) keep the model config they always had
    assert translator_cli.main(demo_args(demo_inputs, tmp_path / "l2", *snap)) == 0
    assert not Translator.from_pretrained(str(tmp_path / "l2")).config.metric
    with pytest.raises(InputError, match="--snap-metric-audio and --snap-metric-text go together"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "x", *snap, "--snap-metric-audio", audio))
    wide = ["--snap-metric-audio", str(demo_inputs / "audio_wide"), "--snap-metric-text", text]
    with pytest.raises(InputError, match="^--snap-metric-audio .*dim 7.*takes 6"):  # read before the first epoch
        translator_cli.main(demo_args(demo_inputs, tmp_path / "w", *snap, *wide))
    assert not (tmp_path / "w" / "diffusion_pytorch_model.safetensors").exists()
    with pytest.raises(InputError, match="--snap-metric-audio needs --snap"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "y", "--canonical-bank", text, *held))


def test_bad_combinations_fail_with_one_line(demo_inputs, fake_encoder, tmp_path):
    with pytest.raises(InputError, match="--audio-latents .*dim 7.*takes 6"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "a", "--audio-latents", str(demo_inputs / "audio_wide")))
    with pytest.raises(InputError, match="--distill-images needs --objective"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "b", "--distill-images", "generate"))
    with pytest.raises(InputError, match="--distill-weight"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "c", "--objective", "both", "--distill-weight", "-1"))
    with pytest.raises(InputError, match="--components must be >= 1"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "d", "--arch", "mixture", "--components", "0"))
    with pytest.raises(InputError, match="--snap must be >= 0, and needs --canonical-bank"):
        translator_cli.main(demo_args(demo_inputs, tmp_path / "e", "--snap", "3"))
    with pytest.raises(FusemixError, match="conditioning of dim 8, its text encoding gives 5"):
        translator_distill.build_distiller(  # an image model and a text encoding that do not belong together
            "demo", str(demo_inputs / "image_model"), "auto", ["x"], torch.zeros(1, 4, 5), torch.zeros(1, 4, 5), 0, 1
        )


def test_distill_with_audio_resumes_to_the_uninterrupted_run(demo_inputs, fake_encoder, tmp_path, monkeypatch):
    extra = ["--objective", "both", "--distill-weight", "0.5", "--audio-latents", str(demo_inputs / "audio")]
    argv = [*demo_args(demo_inputs, tmp_path / "full", "--epochs", "3"), *extra]
    assert translator_cli.main(argv) == 0

    interrupt_after(monkeypatch, "epoch", 1)
    cut = [*demo_args(demo_inputs, tmp_path / "cut", "--epochs", "3"), *extra]
    with pytest.raises(KeyboardInterrupt):
        translator_cli.main(cut)
    assert json.loads((tmp_path / "cut" / STATE_FILE).read_text())["epoch"] == 1
    assert translator_cli.main([*cut, "--resume"]) == 0

    for name in ("diffusion_pytorch_model.safetensors", "optimizer.safetensors"):
        a, b = (load_file(str(tmp_path / run / name)) for run in ("full", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    states = [json.loads((tmp_path / run / STATE_FILE).read_text()) for run in ("full", "cut")]
    assert states[0]["history"] == states[1]["history"] and len(states[0]["history"]) == 3
    assert states[0]["distill_error_start"] == states[1]["distill_error_start"]
    assert report(tmp_path / "full")["distill_error"] == report(tmp_path / "cut")["distill_error"]


# ---------------------------------------------------------------- stable diffusion


SD_CAPTIONS = ["a dog barks", "rain on a roof", "a bell rings", "a car passes", "birds sing", "a door slams"]


def test_stable_diffusion_distills_resumes_then_generates(tmp_path, monkeypatch):
    """Tiny random SD: images drawn once (kept in the checkpoint for a resumed run), both objectives, then
    audio -> translator -> the stock pipeline -> an image."""
    from fusion.encoders import load_encoder
    from generator.audio_to_image import AudioToImagePipeline

    tiny_whisper(tmp_path / "whisper")
    tiny_stable_diffusion(tmp_path / "sd")
    latents = load_encoder(str(tmp_path / "sd")).encode(SD_CAPTIONS)
    torch.manual_seed(0)
    FuseMixAdapters(audio_dim=16, text_dim=latents.shape[1], shared_dim=24, num_blocks=1).eval().save_pretrained(
        tmp_path / "adapters"
    )
    ids = [f"c{i}" for i in range(len(SD_CAPTIONS))]
    write_latents(tmp_path / "text", latents, [f"{i}#0" for i in ids], ids, {"modality": "text"}, texts=SD_CAPTIONS)
    cfg = TranslatorConfig(
        adapters=str(tmp_path / "adapters"), text_latents=str(tmp_path / "text"), out=str(tmp_path / "translator"),
        kind="stable-diffusion", image_model=str(tmp_path / "sd"), objective="both", distill_steps=2, epochs=2,
        batch_size=3, progress=False,
    )  # fmt: skip
    out = train_translator(cfg)
    rep = report(out)
    assert rep["distill_error"] > 0 and rep["distill_error_start"] > 0
    images = load_file(str(out / "extra.safetensors"))["distill.images"]
    assert images.shape == (6, 4, 8, 8) and torch.isfinite(images).all()  # SD latents of each caption, drawn once

    drawn = []
    original = translator_distill.draw_images
    monkeypatch.setattr(translator_distill, "draw_images", lambda *a, **k: drawn.append(1) or original(*a, **k))
    interrupt_after(monkeypatch, "epoch", 1)
    cut = TranslatorConfig(**{**cfg.__dict__, "out": str(tmp_path / "cut")})
    with pytest.raises(KeyboardInterrupt):
        train_translator(cut)
    train_translator(cut, resume=True)
    assert drawn == [1]  # drawn by the first run only: the resumed one read them back
    a, b = (load_file(str(tmp_path / run / "diffusion_pytorch_model.safetensors")) for run in ("translator", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(InputError, match="names no demo-world scene"):  # these captions have no scene to render
        train_translator(TranslatorConfig(**{**cfg.__dict__, "out": str(tmp_path / "r"), "distill_images": "render"}))

    preset = {"kind": "stable-diffusion", "audio_encoder": "whisper", "text_encoder": "sd", "adapters": "adapters",
              "translator": "translator", "image_model": "sd", "steps": 2, "guidance": 2.0}  # fmt: skip
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    pipe = AudioToImagePipeline.from_preset(str(tmp_path))
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    result = pipe([wave], mode="translate", seed=0)
    assert len(result.images) == 1 and result.images[0][0].size == (16, 16)  # the tiny SD draws 16x16
