"""FuseMix adapters, mixup and loss on tiny random inputs."""

import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fusion.adapters import (
    FuseMixAdapters,
    TowerConfig,
    TowerConfigError,
    flat_tower_args,
    join_adapters,
)
from fusion.loss import InfoNCELoss
from fusion.mixup import fusemix_mix


def tiny(**kw) -> FuseMixAdapters:
    torch.manual_seed(0)
    return FuseMixAdapters(audio_dim=12, text_dim=10, **{"shared_dim": 16, "num_blocks": 2, **kw})


def test_encode_shapes_and_normalised():
    model = tiny().eval()
    out = model.encode({"audio": torch.randn(5, 12), "text": torch.randn(7, 10)})
    assert out["audio"].shape == (5, 16) and out["text"].shape == (7, 16)
    assert torch.allclose(out["audio"].norm(dim=-1), torch.ones(5), atol=1e-5)
    assert set(model.towers.keys()) == {"audio", "text"}
    assert model.encode({"text": torch.randn(2, 10)}).keys() == {"text"}


def test_save_load_roundtrip(tmp_path):
    model = tiny(dropout=0.2).eval()
    with torch.no_grad():
        model.temperature.fill_(0.05)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["shared_dim"] == 16 and config["audio_dim"] == 12 and config["dropout"] == 0.2
    loaded = FuseMixAdapters.from_pretrained(tmp_path).eval()
    x = {"audio": torch.randn(4, 12), "text": torch.randn(4, 10)}
    for key, value in model.encode(x).items():
        assert torch.equal(value, loaded.encode(x)[key])
    assert loaded.temperature.item() == pytest.approx(0.05)


def test_joined_adapters_are_their_members_side_by_side(tmp_path):
    members = [tiny(), FuseMixAdapters(audio_dim=12, text_dim=10, shared_dim=16, num_blocks=2)]  # other inits
    joined = join_adapters([m.eval() for m in members])
    assert joined.heads == 2 and joined.shared_dim == 32
    x = {"audio": torch.randn(5, 12), "text": torch.randn(6, 10)}
    with torch.no_grad():
        out, alone = joined.encode(x), [m.encode(x) for m in members]
    assert torch.allclose(out["audio"].norm(dim=-1), torch.ones(5), atol=1e-5)
    mean_cosine = sum(a["audio"] @ a["text"].T for a in alone) / 2
    assert torch.allclose(out["audio"] @ out["text"].T, mean_cosine, atol=1e-5)  # one space, the heads' mean
    for head, member in zip(out["text"].chunk(2, dim=-1), alone, strict=True):  # each head's point, scaled 1/sqrt 2
        assert torch.allclose(head * 2**0.5, member["text"], atol=1e-5)
    joined.save_pretrained(tmp_path)
    loaded = FuseMixAdapters.from_pretrained(tmp_path).eval()
    assert loaded.heads == 2 and torch.allclose(loaded.encode(x)["audio"], out["audio"])
    with pytest.raises(ValueError, match="differ in dropout"):
        join_adapters([tiny(), tiny(dropout=0.3)])
    with pytest.raises(ValueError, match="single-head"):
        join_adapters([joined])
    with pytest.raises(ValueError, match="heads must be >= 1"):
        tiny(heads=0)


def test_lock_text_is_identity_into_text_space():
    model = FuseMixAdapters(audio_dim=12, text_dim=10, lock_text=True, num_blocks=1).eval()
    assert model.shared_dim == 10
    text = torch.randn(3, 10)
    assert torch.allclose(model.encode({"text": text})["text"], F.normalize(text, dim=-1))
    assert not any(True for _ in model.towers["text"].parameters())
    with pytest.raises(ValueError, match="shared_dim must equal text_dim"):
        FuseMixAdapters(audio_dim=12, text_dim=10, lock_text=True, shared_dim=16)


def test_default_shared_dim_is_512():
    assert FuseMixAdapters(audio_dim=4, text_dim=6, num_blocks=0).shared_dim == 512


def test_bad_inputs_rejected():
    model = tiny()
    with pytest.raises(ValueError, match="audio latents have dim 11"):
        model.encode({"audio": torch.randn(2, 11)})
    with pytest.raises(ValueError, match="pooled"):
        model.encode({"audio": torch.randn(2, 3, 12)})
    with pytest.raises(ValueError, match="unknown modality"):
        model.encode({"image": torch.randn(2, 12)})
    with pytest.raises(ValueError, match="audio tower: kind must be one of"):
        FuseMixAdapters(audio_dim=4, text_dim=4, audio_adapter="nope")


def test_temperature_is_clamped():
    model = tiny()
    assert model.logit_scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.temperature.fill_(1e-6)
    assert model.logit_scale().item() == pytest.approx(1000.0)
    with torch.no_grad():
        model.temperature.fill_(3.0)
    assert model.logit_scale().item() == pytest.approx(2.0)


@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 5)])
def test_mixup_shares_one_lambda(shape):
    audio, text = torch.randn(*shape), torch.randn(*shape)
    mixed_a, mixed_t = fusemix_mix(audio, text, alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert mixed_a.shape == (4, *shape[1:])

    def solve_lambda(mixed, x):  # mixed = lam * x1 + (1 - lam) * x2  ->  lam per element
        return (mixed - x[4:]) / (x[:4] - x[4:])

    lam_a, lam_t = solve_lambda(mixed_a, audio), solve_lambda(mixed_t, text)
    lam = lam_a.flatten()[0].item()
    assert 0 < lam < 1
    assert torch.allclose(lam_a, torch.full_like(lam_a, lam), atol=1e-4)
    assert torch.allclose(lam_t, torch.full_like(lam_t, lam), atol=1e-4)


def test_mixup_generator_decides_lambda():
    a, t = torch.randn(6, 4), torch.randn(6, 4)
    first = fusemix_mix(a, t, 1.0, torch.Generator().manual_seed(1))[0]
    again = fusemix_mix(a, t, 1.0, torch.Generator().manual_seed(1))[0]
    other = fusemix_mix(a, t, 1.0, torch.Generator().manual_seed(2))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    # small alpha puts lambda near 0 or 1: mixed rows stay close to one of the originals
    lams = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        m = fusemix_mix(a, t, 0.1, gen)[0]
        lams.append(((m - a[3:]) / (a[:3] - a[3:]))[0, 0].item())
    assert sum(min(x, 1 - x) < 0.1 for x in lams) > 120


def test_mixup_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        fusemix_mix(torch.randn(4, 2), torch.randn(3, 2), 1.0, torch.Generator())
    with pytest.raises(ValueError, match="at least 2"):
        fusemix_mix(torch.randn(1, 2), torch.randn(1, 2), 1.0, torch.Generator())
    with pytest.raises(ValueError, match="alpha"):
        fusemix_mix(torch.randn(4, 2), torch.randn(4, 2), 0.0, torch.Generator())


def test_infonce_matches_manual_and_prefers_aligned():
    torch.manual_seed(0)
    a, t = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * a @ t.T
    labels = torch.arange(6)
    manual = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss = InfoNCELoss()
    assert loss(a, t, scale).item() == pytest.approx(manual.item(), rel=1e-6)
    assert loss(a, a, scale) < loss(a, t, scale)
    # the gathered form with this process's rows at an offset equals the loss of those rows in the full batch
    part = loss(a[3:], t[3:], scale, all_audio=a, all_text=t, offset=3)
    rows = slice(3, 6)
    manual_part = (F.cross_entropy(logits[rows], labels[rows]) + F.cross_entropy(logits.T[rows], labels[rows])) / 2
    assert part.item() == pytest.approx(manual_part.item(), rel=1e-6)


ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "demo" / "adapters"


def test_tower_errors_name_the_modality_at_fault():
    with pytest.raises(TowerConfigError, match=r"^text tower: keep must be in \[1, tokens=4\], got 6$") as err:
        FuseMixAdapters(audio_dim=8, text_dim=8, text_adapter="sparse", text_tokens=4, text_keep=6)
    assert (err.value.modality, err.value.fields) == ("text", ("keep",))
    with pytest.raises(TowerConfigError, match=r"^audio tower: keep must be in \[1, tokens=4\], got 6$"):
        FuseMixAdapters(audio_dim=8, text_dim=8, audio_adapter="sparse", audio_tokens=4, keep=6)
    with pytest.raises(TowerConfigError, match="text tower: keep is only for kind 'sparse'"):
        FuseMixAdapters(audio_dim=8, text_dim=8, text_keep=2)
    for bad in (
        TowerConfig("sparse", tokens=4, keep=0),
        TowerConfig("sparse", keep=2),
        TowerConfig("sparse", tokens=4, keep=2, token_blocks=0),
        TowerConfig("sparse", tokens=4, keep=2, sparse_mode="best"),
        TowerConfig("mlp", tokens=4),
    ):
        with pytest.raises(TowerConfigError) as err:
            bad.check("text")
        assert str(err.value).startswith("text tower: ") and "--" not in str(err.value)
    TowerConfig("sparse", keep=2).check("audio", tokens_known=False)  # K comes later, from the cache


def test_typed_towers_build_the_same_model_as_flat_names():
    audio = TowerConfig("sparse", tokens=8, keep=3, token_blocks=2)
    text = TowerConfig("sparse", tokens=4, keep=4, token_blocks=2)
    torch.manual_seed(0)
    typed = FuseMixAdapters.from_towers(12, 10, audio=audio, text=text, num_blocks=1)
    torch.manual_seed(0)
    flat = FuseMixAdapters(
        audio_dim=12, text_dim=10, num_blocks=1, audio_adapter="sparse", audio_tokens=8, keep=3,
        text_adapter="sparse", text_tokens=4, text_keep=4, token_blocks=2,
    )  # fmt: skip
    assert typed.tower_configs == {"audio": audio, "text": text} == flat.tower_configs
    public = [{k: v for k, v in m.config.items() if not k.startswith("_")} for m in (typed, flat)]
    assert public[0] == public[1]
    for (name, a), (_, b) in zip(typed.state_dict().items(), flat.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert typed.tokens_for("audio") == 8 and typed.tokens_for("text") == 4
    assert FuseMixAdapters.from_towers(4, 4).tower_configs["text"] == TowerConfig()
    with pytest.raises(TowerConfigError, match="text tower: token_blocks is shared by both towers"):
        flat_tower_args({"audio": audio, "text": TowerConfig("sparse", tokens=4, keep=2, token_blocks=1)})
    # an mlp tower's sparse-only fields do not clash with the sparse tower's
    assert flat_tower_args({"audio": audio, "text": TowerConfig()})["token_blocks"] == 2


def test_old_style_config_loads_with_identical_outputs(tmp_path):
    """A config.json with only the flat names of earlier versions (no token_blocks or parts yet) loads and gives the same
    outputs; the stored config still holds only those flat names."""
    torch.manual_seed(0)
    model = FuseMixAdapters(
        audio_dim=12, text_dim=10, num_blocks=1, audio_adapter="sparse", audio_tokens=8, keep=3,
        text_adapter="sparse", text_tokens=4, text_keep=2,
    ).eval()  # fmt: skip
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    old_names = {"audio_dim", "text_dim", "shared_dim", "num_blocks", "expansion", "dropout", "lock_text"}
    old_names |= {"audio_adapter", "audio_tokens", "keep", "sparse_mode", "text_adapter", "text_tokens", "text_keep"}
    added = {"token_blocks", "audio_parts", "audio_part_dropout", "text_parts", "text_part_dropout", "heads"}
    assert set(saved) - {"_class_name", "_diffusers_version"} == old_names | added
    for name in added:  # as configs were written before these existed
        del saved[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = FuseMixAdapters.from_pretrained(tmp_path).eval()
    assert loaded.tower_configs == {
        "audio": TowerConfig("sparse", tokens=8, keep=3),
        "text": TowerConfig("sparse", tokens=4, keep=2),
    }
    x = {"audio": torch.randn(3, 8, 12), "text": torch.randn(3, 4, 10)}
    with torch.no_grad():
        want, got = model.encode(x), loaded.encode(x)
    assert all(torch.equal(want[k], got[k]) for k in x)


def test_shipped_checkpoint_loads_as_typed_towers():
    """checkpoints/demo/adapters loads into the towers its flat names describe (two audio parts), weights and all."""
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["audio_adapter"] == "sparse" and config["audio_parts"] == 2
    loaded = FuseMixAdapters.from_pretrained(SHIPPED).eval()
    parts = {"parts": 2, "part_dropout": tuple(config["audio_part_dropout"])}
    audio = TowerConfig("sparse", tokens=config["audio_tokens"], keep=config["keep"], **parts)
    text = TowerConfig("sparse", tokens=config["text_tokens"], keep=config["text_keep"])
    assert loaded.tower_configs == {"audio": audio, "text": text}
    arch = {k: config[k] for k in ("shared_dim", "num_blocks", "expansion", "dropout", "heads")}
    typed = FuseMixAdapters.from_towers(config["audio_dim"], config["text_dim"], audio=audio, text=text, **arch)
    typed.load_state_dict(load_file(SHIPPED / "diffusion_pytorch_model.safetensors"), strict=True)
    gen = torch.Generator().manual_seed(0)
    x = {
        "audio": torch.randn(2, audio.tokens, config["audio_dim"], generator=gen),
        "text": torch.randn(2, text.tokens, config["text_dim"], generator=gen),
    }
    with torch.no_grad():
        want, got = typed.eval().encode(x), loaded.encode(x)
    assert all(torch.equal(want[k], got[k]) for k in x)


def fusion_imports(module: str) -> set[str]:
    """The fusion.* modules ``module`` imports, anywhere in its file (lazy imports inside functions too)."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {name for name in names if name.startswith("fusion.")}


def test_sparse_does_not_import_adapters():
    """No import cycle: everything fusion.sparse reaches, directly or not, stands without fusion.adapters."""
    seen, todo = set(), ["fusion.sparse"]
    while todo:
        module = todo.pop()
        seen.add(module)
        todo += sorted(fusion_imports(module) - seen)
    assert seen == {"fusion.sparse", "fusion.blocks"}
    assert {"fusion.blocks", "fusion.sparse"} <= fusion_imports("fusion.adapters")
