"""Sparse-pooling audio adapter: top-k selection, gradients to the scorer, save/load, and learning where mean fails."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fusemix import train as train_cli
from fusion.adapters import FuseMixAdapters
from fusion.cache import write_latents
from fusion.errors import FusemixError
from fusion.evaluate import evaluate, load_pairs
from fusion.sparse import SparsePoolTower

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def sparse_adapters(**kw) -> FuseMixAdapters:
    torch.manual_seed(0)
    args = {"audio_dim": 12, "text_dim": 10, "shared_dim": 16, "num_blocks": 1, "dropout": 0.0}
    args.update({"audio_adapter": "sparse", "audio_tokens": 8, "keep": 3, **kw})
    return FuseMixAdapters(**args)


@pytest.mark.parametrize("keep", [1, 3, 8])
def test_topk_keeps_exactly_k_highest_scored_tokens(keep):
    torch.manual_seed(0)
    tower = SparsePoolTower(in_dim=12, out_dim=16, num_tokens=8, keep=keep).eval()
    x = torch.randn(5, 8, 12)
    kept, index, gates = tower.select(x)
    assert kept.shape == (5, keep, 12) and index.shape == (5, keep) and gates.shape == (5, keep)
    # distinct tokens, in their original order, and exactly the best-scored ones
    assert (index.diff(dim=1) > 0).all()
    scores = tower.scores(x)
    reference = torch.sort(torch.argsort(scores, dim=1, descending=True)[:, :keep], dim=1).values
    assert torch.equal(index, reference)
    # each kept token is its (position-tagged) input scaled by its gate
    rows = torch.arange(5)[:, None]
    expected = (x + tower.position)[rows, index] * gates.unsqueeze(-1)
    torch.testing.assert_close(kept, expected)
    assert tower(x).shape == (5, 16)


def test_training_mode_explores_other_tokens():
    """In training the k tokens are sampled (Gumbel-top-k), so a low-scored token is tried now and then."""
    torch.manual_seed(0)
    tower = SparsePoolTower(in_dim=12, out_dim=16, num_tokens=8, keep=2)
    x = torch.randn(1, 8, 12).expand(200, -1, -1)
    eval_index = tower.eval().select(x)[1]
    assert (eval_index == eval_index[0]).all()  # deterministic at inference
    train_index = tower.train().select(x)[1]
    assert len(torch.unique(train_index)) > 2


@pytest.mark.parametrize("keep", [1, 2])
def test_gradients_reach_the_scorer(keep):
    torch.manual_seed(0)
    tower = SparsePoolTower(in_dim=12, out_dim=16, num_tokens=8, keep=keep)
    tower(torch.randn(4, 8, 12)).pow(2).sum().backward()
    for name, param in tower.scorer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert tower.position.grad.abs().sum() > 0


def test_keep_all_tokens_is_the_unsparsified_control():
    tower = SparsePoolTower(in_dim=12, out_dim=16, num_tokens=8, keep=8).eval()
    kept, index, _ = tower.select(torch.randn(3, 8, 12))
    assert kept.shape == (3, 8, 12) and torch.equal(index, torch.arange(8).expand(3, -1))


def test_slots_mode_pools_into_k_learned_slots():
    torch.manual_seed(0)
    tower = SparsePoolTower(in_dim=12, out_dim=16, num_tokens=8, keep=3, mode="slots")
    x = torch.randn(4, 8, 12, requires_grad=True)
    kept, index, gates = tower.select(x)
    assert kept.shape == (4, 3, 12) and index is None and gates is None
    tower(x).sum().backward()
    assert tower.slots.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["topk", "slots"])
def test_sparse_adapter_saves_and_loads(tmp_path, mode):
    model = sparse_adapters(sparse_mode=mode).eval()
    model.save_pretrained(tmp_path)
    loaded = FuseMixAdapters.from_pretrained(tmp_path).eval()
    assert loaded.config.audio_tokens == 8 and loaded.config.keep == 3 and loaded.config.sparse_mode == mode
    assert loaded.config.get("audio_tokens") == 8  # what the generator reads to ask the encoder for tokens
    x, t = torch.randn(6, 8, 12), torch.randn(6, 10)
    with torch.no_grad():
        a, b = model.encode({"audio": x, "text": t}), loaded.encode({"audio": x, "text": t})
    assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["text"], b["text"])
    assert FuseMixAdapters(audio_dim=4, text_dim=4).config.get("audio_tokens") is None


def test_bad_arguments_and_shapes_fail_clearly():
    with pytest.raises(ValueError, match=r"audio tower: keep must be in \[1, tokens=8\], got 9"):
        sparse_adapters(keep=9)
    with pytest.raises(ValueError, match="audio tower: kind 'sparse' needs tokens >= 1"):
        FuseMixAdapters(audio_dim=4, text_dim=4, audio_adapter="sparse", keep=2)
    with pytest.raises(ValueError, match="audio tower: keep is only for kind 'sparse'"):
        FuseMixAdapters(audio_dim=4, text_dim=4, keep=2)
    with pytest.raises(ValueError, match="audio tower: sparse_mode must be one of"):
        sparse_adapters(sparse_mode="best")
    model = sparse_adapters()
    with pytest.raises(ValueError, match=r"audio tower \(kind 'sparse'\) takes token latents \(batch, 8, dim\)"):
        model.encode({"audio": torch.randn(2, 12)})
    with pytest.raises(ValueError, match=r"token latents \(batch, 8, dim\), got shape \(2, 5, 12\)"):
        model.encode({"audio": torch.randn(2, 5, 12)})


def write_signal_in_one_token(root: Path, split: str, n: int, seed: int, tokens: int = 16, dim: int = 32):
    """Token caches where one token (random position, marked by a fixed pattern) holds the caption's code.

    The other tokens are pure noise, so the mean over tokens buries the code; a scorer can find the marked token.
    Also writes the mean over tokens as a pooled cache for the mlp baseline.
    """
    code = 4
    fixed = np.random.default_rng(1234)
    to_text, marker = fixed.standard_normal((code, 24)), np.zeros(dim)
    marker[code:] = fixed.choice([-1.0, 1.0], dim - code)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, code))
    x = rng.standard_normal((n, tokens, dim))
    x[np.arange(n), rng.integers(0, tokens, n)] = marker + np.pad(2 * z, ((0, 0), (0, dim - code)))
    text = z @ to_text + 0.05 * rng.standard_normal((n, 24))
    ids = [f"{split}-{i}" for i in range(n)]
    meta = {"modality": "audio"}
    write_latents(root / split / "tokens", x.astype(np.float32), ids, ids, meta)
    write_latents(root / split / "mean", x.mean(1).astype(np.float32), ids, ids, meta)
    caption_ids = [f"{i}#0" for i in ids]
    write_latents(root / split / "text", text.astype(np.float32), caption_ids, ids, {"modality": "text"}, texts=ids)


@pytest.mark.slow
def test_sparse_beats_mean_pooling_when_the_signal_sits_in_one_token(tmp_path):
    write_signal_in_one_token(tmp_path, "train", 384, seed=0)
    write_signal_in_one_token(tmp_path, "test", 200, seed=1)
    common = "--epochs 100 --batch-size 128 --lr 2e-3 --warmup-steps 10 --dropout 0 --num-blocks 1 --expansion 2"
    common += " --shared-dim 32 --no-progress"
    r1 = {}
    for name, cache, extra in [
        ("mean", "mean", []),
        ("sparse", "tokens", ["--audio-adapter", "sparse", "--keep", "4"]),
    ]:
        out = tmp_path / name
        args = ["--audio-latents", str(tmp_path / "train" / cache), "--text-latents", str(tmp_path / "train" / "text")]
        assert train_cli.main([*args, "--out", str(out), *common.split(), *extra]) == 0
        model = FuseMixAdapters.from_pretrained(out / "checkpoint")
        metrics = evaluate(model, load_pairs(tmp_path / "test" / cache, tmp_path / "test" / "text"))
        r1[name] = metrics["text_to_audio"]["R@1"]
    assert r1["sparse"] > 0.25, r1
    assert r1["sparse"] > r1["mean"] + 0.15, r1


def test_trainer_refuses_mismatched_caches(tmp_path):
    write_signal_in_one_token(tmp_path, "train", 8, seed=0)
    args = ["--text-latents", str(tmp_path / "train" / "text"), "--epochs", "1", "--no-progress"]
    with pytest.raises(FusemixError, match="needs token latents"):
        train_cli.main(
            [*args, "--audio-latents", str(tmp_path / "train" / "mean"), "--out", str(tmp_path / "a")]
            + ["--audio-adapter", "sparse", "--keep", "2"]
        )
    with pytest.raises(FusemixError, match="needs pooled latents"):
        train_cli.main(
            [*args, "--audio-latents", str(tmp_path / "train" / "tokens"), "--out", str(tmp_path / "b")]
            + ["--audio-adapter", "mlp"]
        )
    with pytest.raises(FusemixError, match=r"audio tower: keep must be in \[1, tokens=16\], got 17: .* \(--keep\)"):
        train_cli.main(
            [*args, "--audio-latents", str(tmp_path / "train" / "tokens"), "--out", str(tmp_path / "c")]
            + ["--audio-adapter", "sparse", "--keep", "17"]
        )
    with pytest.raises(FusemixError, match=r"audio tower: keep is only for kind 'sparse'.*\(--keep, --audio-adapter\)"):
        train_cli.main(
            [*args, "--audio-latents", str(tmp_path / "train" / "mean"), "--out", str(tmp_path / "d")] + ["--keep", "2"]
        )


def write_order_matters(root: Path, split: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """Captions of two words (a, b) whose order matters: "red on blue" is not "blue on red".

    Text token states are word vector + position vector (as in a BERT-style encoder) at positions 0 and 1, so the
    mean over tokens is the same for (a, b) and (b, a); the audio latent encodes the ordered pair. Also writes the
    token mean as a pooled text cache.
    """
    fixed = np.random.default_rng(99)
    words, positions = fixed.standard_normal((4, 8)), fixed.standard_normal((4, 8))
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, 4, (n, 2))
    tokens = np.zeros((n, 4, 8))
    tokens[:, 0], tokens[:, 1] = words[pairs[:, 0]], words[pairs[:, 1]]
    tokens += positions
    tokens += 0.05 * rng.standard_normal(tokens.shape)
    audio = np.concatenate([np.eye(4)[pairs[:, 0]], np.eye(4)[pairs[:, 1]]], 1) + 0.1 * rng.standard_normal((n, 8))
    ids = [f"{split}-{i}" for i in range(n)]
    caption_ids = [f"{i}#0" for i in ids]
    write_latents(root / split / "audio", audio.astype(np.float32), ids, ids, {"modality": "audio"})
    for name, array in (("tokens", tokens), ("mean", tokens.mean(1))):
        write_latents(root / split / name, array.astype(np.float32), caption_ids, ids, {"modality": "text"}, texts=ids)
    return {"pairs": pairs, "audio": audio, "tokens": tokens, "mean": tokens.mean(1)}


@pytest.mark.slow
def test_token_text_tower_keeps_word_order_that_mean_pooling_loses(tmp_path):
    write_order_matters(tmp_path, "train", 384, seed=0)
    test = write_order_matters(tmp_path, "test", 200, seed=1)
    pairs = test["pairs"]
    common = "--epochs 60 --batch-size 128 --lr 2e-3 --warmup-steps 10 --dropout 0 --num-blocks 1 --expansion 2"
    common += " --shared-dim 32 --no-progress"
    accuracy = {}
    for name, extra in [("mean", []), ("tokens", ["--text-adapter", "sparse", "--text-keep", "4"])]:
        out = tmp_path / name
        args = ["--audio-latents", str(tmp_path / "train" / "audio"), "--text-latents", str(tmp_path / "train" / name)]
        assert train_cli.main([*args, "--out", str(out), *common.split(), *extra]) == 0
        model = FuseMixAdapters.from_pretrained(out / "checkpoint").eval()
        text = model.embed("text", torch.from_numpy(test[name]).float())
        best = (text @ model.embed("audio", torch.from_numpy(test["audio"]).float()).T).argmax(1).numpy()
        accuracy[name] = float((pairs[best] == pairs).all(1).mean())  # the top audio has the same ordered pair
    assert model.config.text_tokens == 4 and model.tokens_for("text") == 4
    assert accuracy["tokens"] > 0.9, accuracy
    assert accuracy["mean"] < 0.8, accuracy


def test_text_tower_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="text tower: kind 'sparse' needs tokens"):
        FuseMixAdapters(audio_dim=4, text_dim=4, text_adapter="sparse", text_keep=2)
    with pytest.raises(ValueError, match="text tower: lock_text keeps text latents as they are"):
        FuseMixAdapters(audio_dim=4, text_dim=4, lock_text=True, text_adapter="sparse", text_tokens=4, text_keep=2)
    model = FuseMixAdapters(audio_dim=4, text_dim=4, text_adapter="sparse", text_tokens=4, text_keep=4)
    with pytest.raises(ValueError, match=r"text tower \(kind 'sparse'\) takes token latents"):
        model.encode({"text": torch.randn(2, 4)})
    write_order_matters(tmp_path, "train", 8, seed=0)
    args = ["--audio-latents", str(tmp_path / "train" / "audio"), "--epochs", "1", "--no-progress"]
    with pytest.raises(FusemixError, match="--text-adapter sparse needs token latents"):
        train_cli.main(
            [*args, "--text-latents", str(tmp_path / "train" / "mean"), "--out", str(tmp_path / "a")]
            + ["--text-adapter", "sparse", "--text-keep", "2"]
        )
    with pytest.raises(FusemixError, match="--text-adapter mlp needs pooled latents"):
        train_cli.main(
            [*args, "--text-latents", str(tmp_path / "train" / "tokens"), "--out", str(tmp_path / "b")]
            + ["--text-adapter", "mlp"]
        )
    with pytest.raises(FusemixError, match=r"text tower: keep is only .*\(--text-keep, --text-adapter\)"):
        train_cli.main(
            [*args, "--text-latents", str(tmp_path / "train" / "mean"), "--out", str(tmp_path / "c")]
            + ["--text-keep", "2"]
        )


def test_token_blocks_stack_transformer_blocks_and_round_trip(tmp_path):
    """``token_blocks`` adds blocks over the kept tokens; the count is saved with the config."""
    model = sparse_adapters(text_adapter="sparse", text_tokens=4, text_keep=4, token_blocks=3).eval()
    assert len(model.towers["audio"].blocks) == 3 and len(model.towers["text"].blocks) == 3
    assert len(sparse_adapters().towers["audio"].blocks) == 1
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FuseMixAdapters.from_pretrained(tmp_path / "ckpt").eval()
    x = torch.randn(2, 8, 12)
    torch.testing.assert_close(loaded.encode({"audio": x})["audio"], model.encode({"audio": x})["audio"])
    with pytest.raises(ValueError, match="audio tower: token_blocks must be >= 1, got 0"):
        sparse_adapters(token_blocks=0)
    with pytest.raises(FusemixError, match=r"token_blocks must be >= 1, got 0 \(--token-blocks\)"):
        train_cli.parse_config(
            ["--audio-latents", "a", "--text-latents", "t", "--out", "o", "--token-blocks", "0"]
        ).check()
