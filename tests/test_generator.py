"""The translator, its training, presets and the audio-to-image pipeline on tiny random Stable Diffusion parts."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_stable_diffusion, tiny_whisper  # noqa: E402

from fusion.adapters import FuseMixAdapters  # noqa: E402
from fusion.cache import write_latents  # noqa: E402
from fusion.errors import ModelUnavailableError  # noqa: E402
from generator.audio_to_image import AudioToImagePipeline, upscale  # noqa: E402
from generator.caption_bank import save_caption_bank  # noqa: E402
from generator.presets import load_preset  # noqa: E402
from generator.snap_metric import fit_snap_metric  # noqa: E402
from generator.train_translator import (  # noqa: E402
    TranslatorConfig,
    fit_loss,
    noisy,
    relaxation,
    train_translator,
)
from generator.translator import Translator  # noqa: E402

CAPTIONS = ["a dog barks", "rain on a roof", "a bell rings", "a car passes", "birds sing", "a door slams"]


@pytest.fixture(scope="module")
def sd_preset(tmp_path_factory) -> Path:
    """A full preset folder around a tiny random SD pipeline and a tiny Whisper; adapters untrained."""
    root = tmp_path_factory.mktemp("preset")
    tiny_whisper(root / "whisper")
    tiny_stable_diffusion(root / "sd")
    from fusion.encoders import load_encoder

    text_latents = load_encoder(str(root / "sd")).encode(CAPTIONS)
    torch.manual_seed(0)
    adapters = FuseMixAdapters(audio_dim=16, text_dim=text_latents.shape[1], shared_dim=24, num_blocks=1).eval()
    adapters.save_pretrained(root / "adapters")
    ids = [f"c{i}" for i in range(len(CAPTIONS))]
    write_latents(
        root / "text_latents", text_latents, [f"{i}#0" for i in ids], ids, {"modality": "text"}, texts=CAPTIONS
    )
    train_translator(
        TranslatorConfig(
            adapters=str(root / "adapters"),
            text_latents=str(root / "text_latents"),
            out=str(root / "translator"),
            kind="stable-diffusion",
            image_model=str(root / "sd"),
            epochs=3,
            progress=False,
        )
    )
    save_caption_bank(root / "bank", CAPTIONS, adapters.embed("text", torch.from_numpy(text_latents)))
    (root / "preset.json").write_text(
        json.dumps(
            {
                "kind": "stable-diffusion",
                "audio_encoder": "whisper",
                "text_encoder": "sd",
                "adapters": "adapters",
                "translator": "translator",
                "image_model": "sd",
                "caption_bank": "bank",
                "steps": 2,
                "guidance": 2.0,
            }
        )
    )
    return root


@pytest.fixture(scope="module")
def sd_pipe(sd_preset) -> AudioToImagePipeline:
    """The pipeline of ``sd_preset``, loaded once for the tests that only call it."""
    return AudioToImagePipeline.from_preset(str(sd_preset))


@pytest.mark.parametrize("arch", ["mlp", "queries", "mixture"])
def test_translator_saves_loads_and_checks_shapes(tmp_path, arch):
    torch.manual_seed(0)
    tr = Translator(in_dim=8, num_tokens=3, token_dim=5, arch=arch, components=3).eval()
    tr.negative.copy_(torch.randn(1, 3, 5))
    tr.save_pretrained(tmp_path)
    back = Translator.from_pretrained(tmp_path).eval()
    x = torch.randn(4, 8)
    assert torch.equal(tr(x), back(x)) and back(x).shape == (4, 3, 5)
    assert torch.equal(back.negative_embeds(2), tr.negative.expand(2, -1, -1))
    with pytest.raises(ValueError, match="points must have shape"):
        tr(torch.randn(4, 7))
    with pytest.raises(ValueError, match="arch must be one of"):
        Translator(in_dim=8, num_tokens=3, token_dim=5, arch="lstm")
    if arch != "mixture":
        with pytest.raises(ValueError, match="needs arch='mixture'"):
            tr.candidates(x)
        return
    candidates, scores = back.candidates(x)
    assert candidates.shape == (4, 3, 3, 5) and scores.shape == (4, 3)
    assert torch.equal(back(x), candidates[torch.arange(4), scores.argmax(1)])  # the best-scored candidate


@pytest.mark.parametrize("arch", ["mlp", "mixture"])
def test_narrow_translator_reads_s_through_one_projection(tmp_path, arch):
    """``width`` sets the blocks' width apart from S's: fewer weights for a wide S, and a translator without it keeps
    the weights (and checkpoints) it always had."""
    wide = Translator(in_dim=32, num_tokens=3, token_dim=5, arch=arch)
    narrow = Translator(in_dim=32, num_tokens=3, token_dim=5, arch=arch, width=8).eval()
    assert not any(k.startswith("inp.") for k in wide.state_dict())
    assert narrow.inp.weight.shape == (8, 32) and narrow.blocks[0].fc1.weight.shape[1] == 8
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(wide) / 2
    narrow.save_pretrained(tmp_path)
    back = Translator.from_pretrained(tmp_path).eval()
    x = torch.randn(4, 32)
    assert back.config.width == 8 and torch.equal(back(x), narrow(x)) and back(x).shape == (4, 3, 5)
    for bad in ({"width": 0}, {"width": 8, "arch": "queries"}):
        with pytest.raises(ValueError, match="width must be >= 1"):
            Translator(in_dim=32, num_tokens=3, token_dim=5, **bad)


def test_snapping_translator_replaces_only_outputs_far_from_every_anchor(tmp_path):
    """An output farther than ``snap`` from every anchor draws the nearest anchor; one within it, and every output
    while training, passes as the map wrote it. Anchors and snap survive save/load; ``snap=0`` at load turns it off."""
    torch.manual_seed(0)
    tr = Translator(in_dim=8, num_tokens=3, token_dim=5, anchors=4, snap=1.0, dropout=0.0)
    x = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    with torch.no_grad():
        raw = tr.translate(x)
        tr.anchor_embeds.copy_(torch.randn(4, 3, 5) * 10)
        tr.anchor_embeds[0] = raw[0] + 0.1  # raw[0] lies 0.39 from anchor 0: kept; the others lie far: snapped
    tr.eval()
    out, far = tr.snapped(raw)
    assert far.tolist() == [False] + [True] * 5
    assert torch.equal(tr(x)[0], raw[0]) and torch.equal(tr(x), out)
    nearest = torch.cdist(raw.flatten(1), tr.anchor_embeds.flatten(1)).argmin(1)
    assert torch.equal(out[1:], tr.anchor_embeds[nearest[1:]])
    assert torch.equal(tr.train()(x), raw)  # training never snaps: the map keeps its gradient
    tr.eval().save_pretrained(tmp_path)
    back = Translator.from_pretrained(tmp_path).eval()
    assert torch.equal(back(x), out) and back.config.snap == 1.0
    assert torch.equal(Translator.from_pretrained(tmp_path, snap=0.0).eval()(x), raw)
    with pytest.raises(ValueError, match="snap and metric need anchors"):
        Translator(in_dim=8, num_tokens=3, token_dim=5, snap=1.0)


def test_snap_metric_discounts_the_directions_the_translator_errs_along(tmp_path):
    """Anchors at the corners (0,0), (2,0), (0,2), (2,2) of two directions; the held clips' errors run along their
    sum. An output at (1.6, 0.9) lies nearest (2,0) by L2, but along the difference (what the errors leave alone)
    it matches (0,0) and (2,2), and along the sum it is nearer (2,2): the metric snaps it there. ``shrink=1`` is L2,
    and the metric survives save/load."""
    torch.manual_seed(0)
    tr = Translator(in_dim=15, num_tokens=3, token_dim=5, anchors=4, snap=0.5, metric=True, dropout=0.0).eval()
    tr.translate = lambda points: points.view(-1, 3, 5)  # the identity map: a point is the output
    e0, e1 = torch.eye(15)[0], torch.eye(15)[1]
    corners = torch.stack([0 * e0, 2 * e0, 2 * e1, 2 * e0 + 2 * e1])
    tr.anchor_embeds.copy_(corners.view(4, 3, 5))
    truth = torch.randint(4, (400,))
    held = corners[truth] + torch.randn(400, 1) * (e0 + e1) + 0.2 * torch.randn(400, 15)
    assert fit_snap_metric(tr, held, truth, shrink=0.0) == 400
    x = (1.6 * e0 + 0.9 * e1)[None]
    assert torch.cdist(x, corners).argmin().item() == 1  # L2: (2, 0)
    assert torch.equal(tr.snapped(x.view(1, 3, 5))[0], corners[3].view(1, 3, 5))  # the metric: (2, 2)
    fit_snap_metric(tr, held, truth, shrink=1.0)
    assert torch.equal(tr.snapped(x.view(1, 3, 5))[0], corners[1].view(1, 3, 5))
    fit_snap_metric(tr, held, truth, shrink=0.0)
    tr.save_pretrained(tmp_path)
    back = Translator.from_pretrained(tmp_path).eval()
    assert back.config.metric and torch.equal(back.metric_anchors, tr.metric_anchors)
    with pytest.raises(ValueError, match="no metric buffers"):
        fit_snap_metric(Translator(in_dim=15, num_tokens=3, token_dim=5, anchors=4, snap=0.5), held, truth, 0.5)


@pytest.mark.parametrize("seed", range(4))
def test_mixture_translator_draws_the_likelier_scene_where_mse_draws_the_blend(seed):
    """One point heard as scene a 7 times in 10 and as b 3 times, another always as c: the MSE translator learns
    0.7 a + 0.3 b there (a scene that is neither); the mixture, trained winner-take-all with the annealed
    relaxation, answers a, and c at the other point."""
    torch.manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    a, b, c = torch.randn(3, 3, 5)
    inputs = torch.cat([x[:1].expand(10, -1), x[1:].expand(10, -1)])
    targets = torch.stack([a] * 7 + [b] * 3 + [c] * 10)
    out, steps = {}, 300
    for arch in ("mlp", "mixture"):
        torch.manual_seed(seed)
        tr = Translator(8, 3, 5, dropout=0.0, arch=arch, components=4)
        opt = torch.optim.Adam(tr.parameters(), lr=1e-2)
        for step in range(steps):
            loss = fit_loss(tr, inputs, targets, relaxation(step, steps))[2]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[arch] = tr.eval()(x)
    gap = (a - b).norm()
    assert (out["mlp"][0] - (0.7 * a + 0.3 * b)).norm() < 0.05 * gap
    assert (out["mixture"][0] - a).norm() < 0.05 * gap
    assert (out["mixture"][1] - c).norm() < 0.05 * gap


def test_noise_keeps_points_on_the_sphere_and_moves_them():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(64, 384), dim=-1)
    y = noisy(x, 0.05, g)
    cos = (x * y).sum(-1)
    assert torch.allclose(y.norm(dim=-1), torch.ones(64), atol=1e-5)
    assert 0.6 < cos.mean() < 0.95  # 0.05 per dim on 384 dims: cos = 1/sqrt(1 + 384*0.0025) ~ 0.71
    assert torch.equal(noisy(x, 0.0, g), x)


@pytest.mark.parametrize(("arch", "width"), [("mlp", None), ("queries", None), ("mixture", None), ("mlp", 8)])
def test_translator_learns_caption_targets(sd_preset, tmp_path, arch, width):
    """More epochs fit the image model's own encodings better than the mean alone (relative MSE < 1)."""
    out = train_translator(
        TranslatorConfig(
            adapters=str(sd_preset / "adapters"),
            text_latents=str(sd_preset / "text_latents"),
            out=str(tmp_path / "tr"),
            kind="stable-diffusion",
            image_model=str(sd_preset / "sd"),
            epochs=150,
            batch_size=6,
            noise=0.0,
            dropout=0.0,
            progress=False,
            arch=arch,
            width=width,
        )
    )
    report = json.loads((out / "translator_config.json").read_text())
    assert report["num_captions"] == len(CAPTIONS)
    assert report["relative_mse"] < 0.5
    tr = Translator.from_pretrained(out)
    assert (tr.config.num_tokens, tr.config.token_dim, tr.config.arch) == (77, 32, arch)  # tiny CLIP prompt_embeds
    assert tr.config.width == width


def test_audio_to_image_on_tiny_stable_diffusion(sd_pipe):
    pipe = sd_pipe
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(8000).astype(np.float32) * 0.1, rng.standard_normal(12000).astype(np.float32) * 0.1]
    out = pipe(waves, seed=3, num_images_per_audio=2, top_k=3)
    assert len(out.images) == 2 and all(len(imgs) == 2 for imgs in out.images)
    assert out.images[0][0].size == (16, 16)
    assert [len(h) for h in out.heard] == [3, 3] and all(c in CAPTIONS for c, _ in out.heard[0])
    scores = [s for _, s in out.heard[0]]
    assert scores == sorted(scores, reverse=True)
    assert out.seeds == [3, 3] and out.prompts == [None, None]  # an int seeds every clip alike
    assert set(out.timings) >= {"load_audio", "encode", "translate", "diffusion", "total"}
    again = pipe(waves[:1], seed=3)
    assert np.array_equal(np.asarray(again.images[0][0]), np.asarray(out.images[0][0]))  # same seed, same image

    assert out.mode == "translate"  # the preset names no mode: translate
    retrieved = pipe(waves[:1], mode="retrieve", seed=3)
    assert retrieved.prompts[0] == retrieved.heard[0][0][0] and retrieved.mode == "retrieve"

    mixed = pipe(waves[:1], text=CAPTIONS[2], text_weight=1.0, seed=3)
    assert mixed.heard[0][0][0] == CAPTIONS[2]  # weight 1: the text alone decides what is "heard"
    assert upscale(out.images[0][0], 64).size == (64, 64)


def test_pipeline_rejects_bad_arguments(sd_pipe, tmp_path):
    pipe = sd_pipe
    wave = np.zeros(4000, np.float32)
    with pytest.raises(ValueError, match="mode"):
        pipe([wave], mode="dream")
    with pytest.raises(ValueError, match="text prompt"):
        pipe([wave], text_weight=0.5)
    with pytest.raises(ValueError, match="list"):
        pipe(wave)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    from fusion.errors import AudioError

    with pytest.raises(AudioError, match="bad.wav"):
        pipe([bad])


def test_presets_fail_clearly_when_models_are_missing(tmp_path):
    with pytest.raises(ModelUnavailableError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        load_preset("sd15")
    with pytest.raises(ModelUnavailableError, match="no preset"):
        load_preset(str(tmp_path / "nowhere"))
    (tmp_path / "preset.json").write_text(json.dumps({"audio_encoder": "whisper-tiny.en"}))
    with pytest.raises(ModelUnavailableError, match="lacks"):
        load_preset(str(tmp_path))


def test_preset_chooses_the_default_mode(sd_preset, tmp_path):
    """A preset.json ``mode`` is what a call without ``mode`` uses; an explicit mode still wins; a bad one fails."""
    spec = json.loads((sd_preset / "preset.json").read_text())
    for name in ("whisper", "adapters", "translator", "sd", "bank"):
        (tmp_path / name).symlink_to(sd_preset / name)
    (tmp_path / "preset.json").write_text(json.dumps({**spec, "mode": "retrieve"}))
    pipe = AudioToImagePipeline.from_preset(str(tmp_path))
    wave = [np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1]
    by_default = pipe(wave, seed=3)
    assert by_default.mode == "retrieve" and by_default.prompts[0] == by_default.heard[0][0][0]
    asked = pipe(wave, mode="translate", seed=3)
    assert asked.mode == "translate" and asked.prompts == [None]
    (tmp_path / "preset.json").write_text(json.dumps({**spec, "mode": "dream"}))
    with pytest.raises(ModelUnavailableError, match="mode must be one of"):
        load_preset(str(tmp_path))


def test_preset_handoff_is_checked_and_draws_handed_clips_as_retrieve_does_on_sd(sd_preset, sd_pipe, tmp_path, capsys):
    """SD family: a handed clip gets the pipeline's own prompt encoding of its nearest caption (and of "" as its
    negative); a bad handoff, or one without a bank or anchors, fails in one line."""
    spec = json.loads((sd_preset / "preset.json").read_text())
    for name in ("whisper", "adapters", "sd", "bank"):
        (tmp_path / name).symlink_to(sd_preset / name)
    old = Translator.from_pretrained(str(sd_preset / "translator"))
    config = {k: v for k, v in old.config.items() if not k.startswith("_")}
    anchored = Translator(**{**config, "anchors": len(CAPTIONS), "snap": 1e6})
    anchored.load_state_dict(old.state_dict(), strict=False)
    anchored.anchor_embeds.copy_(sd_pipe.prompt_embeds(CAPTIONS))
    anchored.save_pretrained(tmp_path / "translator")
    for bad, match in (
        ({"handoff": -1.0}, "handoff must be"),
        ({"handoff": 1.0, "caption_bank": None}, "caption_bank"),
    ):
        (tmp_path / "preset.json").write_text(json.dumps({**spec, **bad}))
        with pytest.raises(ModelUnavailableError, match=match):
            load_preset(str(tmp_path))
    (tmp_path / "preset.json").write_text(
        json.dumps({**spec, "handoff": 1e-6, "translator": str(sd_preset / "translator")})
    )
    with pytest.raises(ModelUnavailableError, match="scene anchors"):
        AudioToImagePipeline.from_preset(str(tmp_path))
    (tmp_path / "preset.json").write_text(json.dumps({**spec, "handoff": 1e-6}))
    pipe = AudioToImagePipeline.from_preset(str(tmp_path))
    wave = [np.random.default_rng(2).standard_normal(8000).astype(np.float32) * 0.1]
    cond = pipe.condition(pipe.embed_audio(wave), "translate")
    assert cond.prompts == [cond.heard[0][0][0]]  # every translation lies farther than 1e-6 off: handed
    assert torch.allclose(cond.inputs["prompt_embeds"], pipe.prompt_embeds(cond.prompts))
    assert torch.allclose(cond.inputs["negative_prompt_embeds"], pipe.prompt_embeds([""]))
    out = pipe(wave, seed=3)
    assert out.mode == "translate" and out.prompts == cond.prompts and out.images[0][0].size[0] > 0
    from fusemix.cli import main as fusemix  # the CLI says so, and the sidecar names the caption drawn

    clip = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.ogg"))[0]
    capsys.readouterr()
    assert (
        fusemix(["generate", str(clip), "--out", str(tmp_path / "gen"), "--preset", str(tmp_path), "--steps", "1"]) == 0
    )
    assert "drawn from it (far off every scene)" in capsys.readouterr().out
    sidecar = json.loads(next((tmp_path / "gen").glob("*.json")).read_text())
    assert sidecar["mode"] == "translate" and sidecar["prompt"] == sidecar["heard"][0][0]


# ---------- the pipeline's public steps, its options, and one record schema / seed rule for generate, batch, UI


def test_public_steps_make_what_a_call_makes(sd_pipe):
    """embed_audio -> condition -> denoise, called one by one, give a call's images; condition and denoise also
    start from any points of the shared space (text here), which is how the evaluation script uses them."""
    pipe = sd_pipe
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(8000).astype(np.float32) * 0.1 for _ in range(2)]
    out = pipe(waves, mode="translate", seed=[7, 8], top_k=3, num_inference_steps=1)
    conditioning = pipe.condition(pipe.embed_audio(pipe.load(waves)), "translate", top_k=3)
    assert conditioning.heard == out.heard and conditioning.mode == "translate" and len(conditioning) == 2
    images = pipe.denoise(conditioning, seed=[7, 8], num_inference_steps=1)
    for mine, theirs in zip(images, out.images, strict=True):
        assert np.array_equal(np.asarray(mine[0]), np.asarray(theirs[0]))
    other_seed = pipe.denoise(conditioning, seed=[9, 8], num_inference_steps=1)
    assert not np.array_equal(np.asarray(other_seed[0][0]), np.asarray(images[0][0]))
    assert np.array_equal(np.asarray(other_seed[1][0]), np.asarray(images[1][0]))  # a clip's seed is its own

    from_text = pipe.condition(pipe.embed_text(CAPTIONS[:2]), "retrieve", top_k=1)
    assert from_text.prompts == CAPTIONS[:2] and from_text.inputs == {"prompt": CAPTIONS[:2]}
    assert len(pipe.denoise(from_text, seed=0, num_images_per_audio=2, num_inference_steps=1)[1]) == 2
    generators = [torch.Generator().manual_seed(7)]
    by_generator = pipe.denoise(
        conditioning, generator=generators + [torch.Generator().manual_seed(8)], num_inference_steps=1
    )
    assert np.array_equal(np.asarray(by_generator[0][0]), np.asarray(images[0][0]))


def test_seeds_one_per_clip_or_one_for_all(sd_pipe):
    from fusion.errors import InputError

    pipe = sd_pipe
    waves = [np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1 for i in range(2)]
    assert pipe(waves, seed=5, num_inference_steps=1).seeds == [5, 5]
    assert pipe(waves, seed=[5, 6], num_inference_steps=1).seeds == [5, 6]
    drawn = pipe(waves, num_inference_steps=1).seeds
    assert len(set(drawn)) == 2 and all(0 <= s < 2**31 for s in drawn)
    with pytest.raises(InputError, match="one per clip"):
        pipe(waves, seed=[5])
    with pytest.raises(InputError, match="mode"):
        pipe.condition(pipe.embed_audio(waves), "dream")


def test_progress_is_honoured(sd_pipe, capsys):
    pipe = sd_pipe
    wave = [np.zeros(8000, np.float32)]
    capsys.readouterr()
    pipe(wave, seed=0, num_inference_steps=2, progress=False)
    assert "2/2" not in capsys.readouterr().err
    pipe(wave, seed=0, num_inference_steps=2, progress=True)
    assert "2/2" in capsys.readouterr().err  # the diffusers pipeline's own bar
    pipe(wave, seed=0, num_inference_steps=2)
    assert "2/2" not in capsys.readouterr().err  # and off again


def test_generate_batch_and_ui_share_one_record_schema_and_seed_rule(sd_preset, sd_pipe, tmp_path, monkeypatch):
    """The same file with the same --seed gives the same images and the same record keys in all three."""
    from fusemix.cli import main as fusemix
    from generator.records import RECORD_KEYS, clip_seed

    loaded = []  # the CLIs load sd_preset's pipeline: hand them the one already loaded
    monkeypatch.setattr(
        AudioToImagePipeline, "from_preset", classmethod(lambda cls, p, **k: loaded.append(p) or sd_pipe)
    )

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    examples = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.ogg"))[:2]
    for clip in examples:
        (sounds / clip.name).write_bytes(clip.read_bytes())
    files = sorted(sounds.glob("*.ogg"))
    preset = ["--preset", str(sd_preset), "--seed", "4", "--num-images-per-audio", "2", "--steps", "1"]
    assert fusemix(["generate", *map(str, files), "--out", str(tmp_path / "gen"), *preset]) == 0
    assert fusemix(["batch", "--input", str(sounds), "--out", str(tmp_path / "batch"), "--no-progress", *preset]) == 0
    batch_records = {
        (r["clip"], r["index"]): r
        for r in map(json.loads, (tmp_path / "batch" / "results.jsonl").read_text().splitlines())
    }
    for clip in files:
        for k in range(2):
            sidecar = json.loads((tmp_path / "gen" / f"{clip.stem}_{k}.json").read_text())
            record = batch_records[(clip.stem, k)]
            assert tuple(sidecar) == tuple(record) == RECORD_KEYS
            assert sidecar["seed"] == record["seed"] == clip_seed(4, clip.stem)
            assert sidecar["settings"] == record["settings"] and sidecar["settings"]["seed"] == 4
            assert sidecar["heard"] == record["heard"] and all(len(pair) == 2 for pair in sidecar["heard"])
            assert set(sidecar["timings"]) >= {"encode", "diffusion", "total"}
            generated = np.asarray(Image.open(tmp_path / "gen" / sidecar["image"]), np.int16)
            batched = np.asarray(Image.open(tmp_path / "batch" / record["image"]), np.int16)
            assert np.abs(generated - batched).max() <= 2  # same noise; only float rounding may differ

    pytest.importorskip("gradio")
    from ui.app import Generator

    assert loaded == [str(sd_preset)] * 2
    ui_images, ui_heard, info = Generator(sd_pipe).generate(str(files[0]), "", 0.0, "translate", 1, 2.0, 4, False, 2)
    view = np.asarray(Image.open(tmp_path / "gen" / f"{files[0].stem}_1_view.png"), np.int16)
    assert np.abs(np.asarray(ui_images[1], np.int16) - view).max() <= 2
    assert ui_heard == json.loads((tmp_path / "gen" / f"{files[0].stem}_0.json").read_text())["heard"]
    assert f"seed 4 (clip seed {clip_seed(4, files[0].stem)})" in info


def test_canonical_bank_targets_the_first_caption_of_the_nearest_group(sd_preset, tmp_path):
    """--canonical-bank: every row regresses the encoding of its bank group's first caption (a caption outside the
    bank: the group nearest it in S), so all phrasings of one scene share one answer instead of their mean."""
    from fusion.encoders import load_encoder
    from generator.image_text import image_text_encoder
    from generator.train_translator import _load_data

    enc = load_encoder(str(sd_preset / "sd"))
    groups = {"dog": ["a dog barks", "a dog barking"], "rain": ["rain on a roof", "rain falling"]}
    groups["bell"] = ["a bell rings", "a bell ringing"]
    bank_texts = [t for caps in groups.values() for t in caps]
    gids = [g for g, caps in groups.items() for _ in caps]
    write_latents(tmp_path / "bank", enc.encode(bank_texts), [f"{g}#{i}" for i, g in enumerate(gids)], gids,
                  {"modality": "text"}, texts=bank_texts)  # fmt: skip
    own = enc.encode(["a dog barks", "a hound barks"])
    own[1] = enc.encode(["a dog barking"])[0]  # lands where the dog group does: retargeted to "a dog barks"
    write_latents(tmp_path / "text", own, ["t0#0", "t1#0"], ["t0", "t1"], {"modality": "text"},
                  texts=["a dog barks", "a hound barks"])  # fmt: skip
    cfg = TranslatorConfig(
        adapters=str(sd_preset / "adapters"), text_latents=str(tmp_path / "text"), out=str(tmp_path / "tr"),
        kind="stable-diffusion", image_model=str(sd_preset / "sd"), canonical_bank=str(tmp_path / "bank"),
        epochs=150, batch_size=7, noise=0.0, dropout=0.0, progress=False,
    )  # fmt: skip
    data = _load_data(cfg)
    target = {text: data.texts[i] for text, i in zip(data.texts, data.row_caption.tolist(), strict=True)}
    assert target == {
        "a dog barks": "a dog barks", "a hound barks": "a dog barks", "a dog barking": "a dog barks",
        "rain on a roof": "rain on a roof", "rain falling": "rain on a roof",
        "a bell rings": "a bell rings", "a bell ringing": "a bell rings",
    }  # fmt: skip
    out = train_translator(cfg)
    report = json.loads((out / "translator_config.json").read_text())
    assert report["num_captions"] == 7 and report["canonical_bank"] == str(tmp_path / "bank")
    assert report["relative_mse"] < 0.5  # measured against the canonical targets
    encode = image_text_encoder("stable-diffusion", str(sd_preset / "sd"), "cpu")
    head, other = encode(["rain on a roof"]), encode(["rain falling"])
    points = FuseMixAdapters.from_pretrained(sd_preset / "adapters").embed(
        "text", torch.from_numpy(enc.encode(["rain falling"]))
    )
    pred = Translator.from_pretrained(out).eval()(torch.nn.functional.normalize(points, dim=-1))
    assert (pred - head).pow(2).mean() < (pred - other).pow(2).mean()
    # --snap: the translator keeps the three groups' head encodings as anchors, and an output off them all draws one
    snapped = train_translator(replace(cfg, out=str(tmp_path / "snap"), epochs=2, snap=1e-3))
    tr = Translator.from_pretrained(snapped).eval()
    heads = encode(["a dog barks", "rain on a roof", "a bell rings"])
    assert tr.config.anchors == 3 and torch.allclose(tr.anchor_embeds, heads)
    drawn = tr(torch.nn.functional.normalize(torch.randn(5, tr.config.in_dim), dim=-1))
    assert all(any(torch.equal(d, h) for h in tr.anchor_embeds) for d in drawn)
