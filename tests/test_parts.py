"""A token tower over two encoders side by side (concat:A+B): laid out as A's tokens then B's, one part blanked
now and then in training so the adapters cannot lean on one encoder alone."""

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


def test_parts_are_laid_out_as_one_token_sequence_per_part():
    tower = SparsePoolTower(in_dim=8, out_dim=4, num_tokens=3, keep=6, parts=2)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    laid = tower.layout(torch.cat([a, b], dim=-1))
    assert laid.shape == (2, 6, 4)
    torch.testing.assert_close(laid[:, :3], a)
    torch.testing.assert_close(laid[:, 3:], b)
    assert tower.position.shape == (6, 4) and tower.select(torch.randn(2, 3, 8))[1].shape == (2, 6)
    with pytest.raises(ValueError, match=r"\(batch, 3, dim\)"):
        tower(torch.randn(2, 4, 8))


def test_part_dropout_blanks_at_most_one_part_at_the_given_rates_and_only_in_training():
    torch.manual_seed(0)
    tower = SparsePoolTower(in_dim=8, out_dim=4, num_tokens=3, keep=6, parts=2, part_dropout=(0.4, 0.2))
    x = tower.layout(torch.randn(20000, 3, 8))
    dropped = tower.drop_parts(x).abs().sum(-1) == 0  # (B, 6) tokens zeroed
    first, second = dropped[:, :3].all(1), dropped[:, 3:].all(1)
    assert (dropped[:, :3].any(1) == first).all() and (dropped[:, 3:].any(1) == second).all()  # whole parts only
    assert not (first & second).any()
    assert abs(first.float().mean().item() - 0.4) < 0.02 and abs(second.float().mean().item() - 0.2) < 0.02
    tower.eval()
    torch.testing.assert_close(tower.drop_parts(x), x)


def test_part_settings_round_trip_and_bad_ones_fail_clearly(tmp_path):
    torch.manual_seed(0)
    args = {"audio_dim": 8, "text_dim": 6, "num_blocks": 1, "audio_adapter": "sparse", "audio_tokens": 3, "keep": 6}
    model = FuseMixAdapters(**args, audio_parts=2, audio_part_dropout=[0.3, 0.1]).eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FuseMixAdapters.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.tower_configs["audio"].parts == 2 and loaded.tower_configs["audio"].part_dropout == (0.3, 0.1)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(loaded.encode({"audio": x})["audio"], model.encode({"audio": x})["audio"])
    with pytest.raises(ValueError, match="summing below 1"):
        FuseMixAdapters(**args, audio_parts=2, audio_part_dropout=[0.6, 0.5])
    with pytest.raises(ValueError, match="one probability >= 0 per part"):
        FuseMixAdapters(**args, audio_parts=2, audio_part_dropout=[0.1])
    with pytest.raises(ValueError, match=r"keep must be in \[1, tokens=3\], got 6"):
        FuseMixAdapters(**args)  # keep 6 of 3 tokens needs two parts
    with pytest.raises(ValueError, match="does not split into 2 equal parts"):
        FuseMixAdapters(**{**args, "audio_dim": 7}, audio_parts=2)
    base = ["--audio-latents", "a", "--text-latents", "t", "--out", "o", "--audio-adapter", "sparse", "--keep", "4"]
    base += ["--audio-parts", "2"]
    cfg = train_cli.parse_config([*base, "--audio-part-dropout", "0.4", "0.2"])
    assert (cfg.audio_parts, cfg.audio_part_dropout) == (2, [0.4, 0.2])
    with pytest.raises(FusemixError, match=r"summing below 1, got \[0.9, 0.2\] \(--audio-part-dropout\)"):
        train_cli.parse_config([*base, "--audio-part-dropout", "0.9", "0.2"]).check()
    with pytest.raises(FusemixError, match=r"parts is only for kind 'sparse'.*\(--audio-parts, --audio-adapter\)"):
        train_cli.parse_config([*base[:6], "--audio-adapter", "mlp", "--audio-parts", "2"]).check()


def write_two_part_caches(root: Path, split: str, n: int, seed: int, blank_first: bool = False) -> None:
    """Clip i's text is a random code; part A says it almost cleanly, part B through another projection and noise."""
    codes = np.random.default_rng(0).standard_normal((64, 8))  # the same 64 "captions" in every split
    rng = np.random.default_rng(seed)
    item = rng.integers(0, 64, n) if n > 64 else rng.permutation(64)[:n]  # test: each caption once
    mix_a, mix_b = np.random.default_rng(1).standard_normal((2, 8, 8))
    part_a = np.repeat((codes[item] @ mix_a)[:, None], 2, 1) + 0.05 * rng.standard_normal((n, 2, 8))
    part_a *= 0.0 if blank_first else 1.0
    part_b = np.repeat((codes[item] @ mix_b)[:, None], 2, 1) + 0.6 * rng.standard_normal((n, 2, 8))
    ids = [f"{split}-{i}" for i in range(n)]
    audio = np.concatenate([part_a, part_b], axis=-1).astype(np.float32)
    write_latents(root / split / "audio", audio, ids, ids, {"modality": "audio"})
    caption_ids = [f"{i}#0" for i in ids]
    texts = [f"caption {k}" for k in item]
    text = (codes[item] + 0.05 * rng.standard_normal((n, 8))).astype(np.float32)
    write_latents(root / split / "text", text, caption_ids, ids, {"modality": "text"}, texts=texts)


@pytest.mark.slow
def test_part_dropout_keeps_retrieval_when_the_easy_part_fails(tmp_path):
    """Without part dropout the tower leans on the clean part A; when A says nothing (an encoder lost on a voice it
    never heard) retrieval falls apart. Blanking A now and then in training teaches it to read B on its own."""
    write_two_part_caches(tmp_path, "train", 1024, seed=0)
    write_two_part_caches(tmp_path, "test", 64, seed=1, blank_first=True)
    common = "--epochs 60 --batch-size 128 --lr 2e-3 --warmup-steps 10 --dropout 0 --num-blocks 1 --expansion 2"
    common += " --shared-dim 32 --no-progress --keep 4 --audio-parts 2 --text-adapter mlp"
    r1 = {}
    for name, extra in [("plain", []), ("dropout", ["--audio-part-dropout", "0.5", "0.0"])]:
        out = tmp_path / name
        args = ["--audio-latents", str(tmp_path / "train" / "audio"), "--text-latents", str(tmp_path / "train/text")]
        assert train_cli.main([*args, "--out", str(out), *common.split(), *extra]) == 0
        model = FuseMixAdapters.from_pretrained(out / "checkpoint").eval()
        r1[name] = evaluate(model, load_pairs(tmp_path / "test" / "audio", tmp_path / "test" / "text"))
        r1[name] = r1[name]["audio_to_text"]["R@1"]
    assert r1["dropout"] > r1["plain"] + 0.15, r1


def test_a_concat_cache_is_read_as_its_parts_by_default(tmp_path):
    """`fusemix train` with no tower flags reads a concat:A+B token cache of equal widths as the recipe does (two
    parts, every token kept, the recipe's part dropout); other caches, or an explicit --audio-parts, keep theirs."""
    from types import SimpleNamespace

    from fusion.encoders.concat import ConcatEncoder
    from fusion.extract import _part_dims

    part = SimpleNamespace(modality="audio", dim=4, token_dim=4, sample_rate=16000, pooling="mean")
    wide = SimpleNamespace(modality="audio", dim=6, token_dim=6, sample_rate=16000, pooling="mean")
    assert _part_dims(ConcatEncoder("concat:a+b", part, part), tokens=3) == [4, 4]
    assert _part_dims(part, tokens=3) is None
    rng = np.random.default_rng(0)
    text = rng.standard_normal((4, 2, 8)).astype(np.float32)
    write_latents(tmp_path / "text", text, [f"{i}#0" for i in range(4)], [str(i) for i in range(4)], {}, ["c"] * 4)

    def config(dims, *flags):
        audio = tmp_path / f"audio-{dims}"
        meta = {"modality": "audio"} | ({"part_dims": dims} if dims else {})
        write_latents(audio, rng.standard_normal((4, 3, 8)).astype(np.float32), list("0123"), list("0123"), meta)
        args = ["--audio-latents", str(audio), "--text-latents", str(tmp_path / "text"), "--out", "o", *flags]
        cfg = train_cli.parse_config(args)
        return cfg.audio_adapter, cfg.audio_parts, cfg.keep, cfg.audio_part_dropout

    assert config([4, 4]) == ("sparse", 2, 6, [0.4, 0.2])
    assert config([4, 4], "--audio-part-dropout", "0.1", "0.1") == ("sparse", 2, 6, [0.1, 0.1])
    assert config([4, 4], "--audio-parts", "1") == ("sparse", 1, 3, None)
    assert config([4, 4], "--audio-adapter", "mlp") == ("mlp", 1, None, None)
    assert config([2, 6]) == ("sparse", 1, 3, None)  # unequal widths cannot be read as one token sequence
    assert config(None) == ("sparse", 1, 3, None)
    assert _part_dims(ConcatEncoder("concat:a+c", part, wide), tokens=3) == [4, 6]
