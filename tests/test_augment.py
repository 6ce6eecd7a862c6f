"""`fusemix extract --augment K`: deterministic views, sharded = one process, settings recorded; training draws
one of each clip's K + 1 audio rows per epoch and evaluation reads the clean row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusion import train as train_module
from fusion.augment import EFFECTS, SNRS_DB, ViewParams, apply_view, augment_view, draw_view
from fusion.cache import MANIFEST, load_latents, write_latents
from fusion.errors import FusemixError
from fusion.evaluate import load_pairs
from fusion.extract import ExtractConfig, extract
from fusion.pairs import pair_by_clip
from fusion.train import TrainConfig, load_train_data
from tests.test_extract import FakeAudioEncoder, FakeTextEncoder, clips, run_cli, use_encoder  # noqa: F401

SR = 8000  # the fake encoder's rate


def voice(seconds: float = 0.6, f0: float = 180.0) -> np.ndarray:
    """A vowel-like harmonic tone with a syllable envelope: enough structure for every effect to show."""
    t = np.arange(int(seconds * SR)) / SR
    harmonics = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 21))  # up to 3.6 kHz
    return (0.1 * harmonics * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def test_views_are_deterministic_differ_from_the_clean_clip_and_from_each_other():
    x = voice()
    views = [augment_view(x, SR, 0, "clip7", k) for k in range(1, 9)]
    for k, view in enumerate(views, start=1):
        again = augment_view(x.copy(), SR, 0, "clip7", k)
        assert again.dtype == np.float32 and np.array_equal(view, again)  # bit for bit
        assert np.isfinite(view).all() and np.abs(view).max() <= 0.99 + 1e-6
        assert len(view) != len(x) or not np.allclose(view, x, atol=1e-3)
    assert len({v.tobytes() for v in views}) == len(views)
    assert not np.array_equal(augment_view(x, SR, 1, "clip7", 1), views[0])  # the seed matters
    assert not np.array_equal(augment_view(x, SR, 0, "clip8", 1), views[0])  # so does the clip
    drawn = [draw_view(0, f"c{i}", k) for i in range(20) for k in range(1, 4)]
    assert all(p.effects for p in drawn)  # never the clean clip again
    assert {e for p in drawn for e in p.effects} == set(EFFECTS)  # every effect turns up
    assert len({tuple(p.effects) for p in drawn}) > 5  # a random subset per view
    with pytest.raises(ValueError, match="view must be >= 1"):
        draw_view(0, "c0", 0)


@pytest.mark.parametrize("snr", SNRS_DB)
def test_noise_lands_at_the_drawn_snr(snr):
    x = voice(1.0)
    noisy = apply_view(x, SR, ViewParams(snr_db=snr, noise_colour="pink", seed=3))
    measured = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((noisy - x).astype(np.float64) ** 2))
    assert measured == pytest.approx(snr, abs=0.1)


def test_tempo_changes_length_and_band_limits_remove_the_top():
    x = voice(1.0)
    assert len(apply_view(x, SR, ViewParams(tempo=0.8))) == pytest.approx(len(x) / 0.8, rel=0.01)
    assert len(apply_view(x, SR, ViewParams(semitones=2.0))) == len(x)
    freqs, window = np.fft.rfftfreq(len(x), 1 / SR), np.hanning(len(x))

    def spectrum(y: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.rfft(y * window))

    clean, mid = spectrum(x), (freqs > 500) & (freqs < 1500)
    low = spectrum(apply_view(x, SR, ViewParams(band="lowpass", cutoff_hz=2000.0)))
    assert low[freqs > 3000].sum() < 0.01 * clean[freqs > 3000].sum()
    assert low[mid].sum() == pytest.approx(clean[mid].sum(), rel=0.01)
    phone = spectrum(apply_view(x, SR, ViewParams(band="telephone")))
    assert phone[freqs < 200].sum() < 0.1 * clean[freqs < 200].sum()  # the 180 Hz fundamental is gone
    assert phone[mid].sum() == pytest.approx(clean[mid].sum(), rel=0.05)  # mu-law noise, the voice band kept
    wet = apply_view(x, SR, ViewParams(rt60=0.5, drr_db=0.0, seed=1))
    assert len(wet) == len(x) and not np.allclose(wet, x, atol=1e-2)


def extract_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["--encoder", "fake-audio", "--manifest", str(manifest), "--out", str(out), "--batch-size", "2", *extra]


def test_augmented_cache_layout_and_sharded_run_equals_one_process(tmp_path, clips, use_encoder):  # noqa: F811
    use_encoder(FakeAudioEncoder())
    whole, split = tmp_path / "whole", tmp_path / "split"
    aug = ["--augment", "2", "--augment-seed", "5", "--shard-size", "4"]
    assert run_cli(*extract_args(clips, whole, *aug)) == 0
    for index in ("1", "0"):  # out of order: the last part in writes the manifest
        assert run_cli(*extract_args(clips, split, *aug, "--num-shards", "2", "--shard-index", index)) == 0
    one, two = load_latents(whole), load_latents(split)
    assert one.ids == two.ids and np.array_equal(one.array, two.array)
    assert one.ids[:6] == ["clip0", "clip0#aug1", "clip0#aug2", "clip1", "clip1#aug1", "clip1#aug2"]
    assert one.clip_ids == [f"clip{i}" for i in range(5) for _ in range(3)]
    assert one.meta["augment"] == {"views": 2, "seed": 5} and one.meta["fingerprint"]["augment"] == 2
    clean = FakeAudioEncoder().encode([np.zeros(1)])  # shape check only
    assert one.array.shape == (15, clean.shape[1])
    for i in range(5):  # each view differs from the clean clip and from the other view
        rows = one.array[3 * i : 3 * i + 3]
        assert len({r.tobytes() for r in rows}) == 3
    plain = load_latents(extract(ExtractConfig("fake-audio", clips, tmp_path / "plain", progress=False)))
    np.testing.assert_array_equal(plain.array, one.array[::3])  # the clean rows are the un-augmented cache
    assert "augment" not in plain.meta and "augment" not in plain.meta["fingerprint"]


def test_rerun_with_other_augment_settings_refuses(tmp_path, clips, use_encoder):  # noqa: F811
    use_encoder(FakeAudioEncoder())
    out = tmp_path / "c"
    extract(ExtractConfig("fake-audio", clips, out, augment=2, progress=False))
    before = (out / MANIFEST).read_text()
    extract(ExtractConfig("fake-audio", clips, out, augment=2, progress=False))  # same settings: nothing to do
    with pytest.raises(FusemixError, match=r"--augment views \(2 there, 3 now\)"):
        extract(ExtractConfig("fake-audio", clips, out, augment=3, progress=False))
    with pytest.raises(FusemixError, match=r"--augment-seed \(0 there, 1 now\)"):
        extract(ExtractConfig("fake-audio", clips, out, augment=2, augment_seed=1, progress=False))
    with pytest.raises(FusemixError, match=r"--augment views \(2 there, None now\)"):
        extract(ExtractConfig("fake-audio", clips, out, progress=False))
    assert (out / MANIFEST).read_text() == before


def test_unfinished_run_with_other_augment_settings_refuses(tmp_path, clips, use_encoder):  # noqa: F811
    use_encoder(FakeAudioEncoder())
    out = tmp_path / "c"
    config = ExtractConfig("fake-audio", clips, out, augment=1, shard_size=2, num_shards=2, progress=False)
    extract(config)  # part 0 of 2: no manifest yet
    assert not (out / MANIFEST).exists()
    with pytest.raises(FusemixError, match=r"unfinished extraction .*--augment views \(1 there, 2 now\)"):
        extract(ExtractConfig("fake-audio", clips, out, augment=2, shard_size=2, num_shards=2, shard_index=1))


def test_text_encoder_with_augment_is_a_one_line_error(tmp_path, clips, use_encoder, capsys):  # noqa: F811
    use_encoder(FakeTextEncoder())
    args = ["--encoder", "fake-text", "--manifest", str(clips), "--out", str(tmp_path / "t"), "--augment", "2"]
    assert run_cli(*args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--augment 2" in err and "text" in err
    assert not (tmp_path / "t").exists()


def augmented_caches(root: Path, n: int = 40, views: int = 3) -> tuple[Path, Path]:
    """An audio cache with each clip's row followed by ``views`` view rows (the extract layout), and captions."""
    rng = np.random.default_rng(0)
    ids, clip_ids = [], []
    for i in range(n):
        ids += [f"c{i}"] + [f"c{i}#aug{k}" for k in range(1, views + 1)]
        clip_ids += [f"c{i}"] * (views + 1)
    audio = rng.standard_normal((len(ids), 8)).astype(np.float32)
    audio[:, 0] = np.arange(len(ids))  # row number in column 0: the batch tells which row was read
    text = rng.standard_normal((2 * n, 5)).astype(np.float32)
    caption_clips = [f"c{i}" for i in range(n) for _ in range(2)]
    a = write_latents(root / "audio", audio, ids, clip_ids, {"modality": "audio"})
    t = write_latents(
        root / "text", text, [f"{c}#{j}" for j, c in enumerate(caption_clips)], caption_clips, {"modality": "text"}
    )
    return a, t


def test_pairing_groups_clean_row_first_then_views(tmp_path):
    audio, text = augmented_caches(tmp_path, n=6, views=2)
    pairing = pair_by_clip(load_latents(audio), load_latents(text))
    assert pairing.num_clips == 6 and pairing.has_views
    np.testing.assert_array_equal(pairing.audio_rows, np.arange(0, 18, 3))  # the clean rows
    np.testing.assert_array_equal(pairing.view_counts, np.full(6, 3))
    np.testing.assert_array_equal(pairing.view_rows, np.arange(18))
    np.testing.assert_array_equal(pairing.sample_audio(u=np.full(6, 0.99)), np.arange(2, 18, 3))
    # a plain cache: no views, and sampling returns the clean rows without touching the generator
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    clean_only = write_latents(
        tmp_path / "clean", np.zeros((6, 8), np.float32), [f"c{i}" for i in range(6)], [f"c{i}" for i in range(6)], {}
    )
    solo = pair_by_clip(load_latents(clean_only), load_latents(text))
    assert not solo.has_views and solo.sample_audio(rng) is solo.audio_rows and rng.bit_generator.state == state


def test_orphan_views_are_refused(tmp_path):
    audio, text = augmented_caches(tmp_path, n=3, views=1)
    cache = load_latents(audio)
    keep = [i for i, row in enumerate(cache.ids) if row != "c1"]
    orphaned = write_latents(
        tmp_path / "orphan", cache.array[keep], [cache.ids[i] for i in keep], [cache.clip_ids[i] for i in keep], {}
    )
    captions = load_latents(text)
    own = [i for i, clip in enumerate(captions.clip_ids) if clip != "c1"]  # c1's captions went with its clean row
    kept = write_latents(
        tmp_path / "kept", captions.array[own], [captions.ids[i] for i in own], [captions.clip_ids[i] for i in own], {}
    )
    with pytest.raises(FusemixError, match=r"augmented views of 1 clips without their own row \(e.g. \['c1'\]\)"):
        pair_by_clip(load_latents(orphaned), load_latents(kept))


def test_training_draws_one_of_the_k_plus_1_rows_per_clip_and_varies_across_epochs(tmp_path, monkeypatch):
    audio, text = augmented_caches(tmp_path, n=40, views=3)
    cache = load_latents(audio)
    seen: list[np.ndarray] = []
    original = train_module.TrainData.batch

    def spy(self, audio_rows, captions):
        batch = original(self, audio_rows, captions)
        seen.append(batch[0][:, 0].numpy().astype(int))  # column 0 holds the row number
        return batch

    monkeypatch.setattr(train_module.TrainData, "batch", spy)
    cfg = TrainConfig(
        str(audio), str(text), str(tmp_path / "run"), epochs=4, batch_size=36, shared_dim=8, val_fraction=0.1
    )
    cfg.no_progress = True
    data = load_train_data(cfg)
    assert data.pairing.num_clips == 36 and (data.pairing.view_counts == 4).all()
    train_module.train(cfg)
    assert len(seen) == 4  # one step per epoch of 36 clips
    clips_of = [[cache.clip_ids[r] for r in rows] for rows in seen]
    assert all(len(set(c)) == 36 for c in clips_of)  # one row per clip per epoch
    assert set().union(*map(set, clips_of)) == {cache.clip_ids[r] for r in data.pairing.audio_rows}
    by_epoch = [dict(zip(c, rows, strict=True)) for c, rows in zip(clips_of, seen, strict=True)]
    changed = sum(by_epoch[0][clip] != by_epoch[1][clip] for clip in by_epoch[0])
    assert changed > 18  # 3 in 4 clips expected to change view between epochs
    views_used = {cache.ids[r].partition("#")[2] or "clean" for rows in seen for r in rows}
    assert views_used == {"clean", "aug1", "aug2", "aug3"}
    # held-out clips are evaluated on their clean rows only
    val_rows = data.val.audio[:, 0].numpy().astype(int)
    assert len(val_rows) == 4 and all(cache.ids[r] == cache.clip_ids[r] for r in val_rows)


def test_evaluation_pairs_read_the_clean_rows(tmp_path):
    audio, text = augmented_caches(tmp_path, n=5, views=2)
    pairs = load_pairs(audio, text)
    np.testing.assert_array_equal(pairs.audio[:, 0].numpy(), np.arange(0, 15, 3))
    assert json.loads((audio / MANIFEST).read_text())["count"] == 15
