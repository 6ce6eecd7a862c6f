"""`fusemix extract` end to end on fake encoders: shapes, ids, failures, --strict, resume after a crash or kill -9."""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import fusion.extract as extract_module
from fusemix.cli import main as cli_main
from fusion.audio import load_audio
from fusion.cache import MANIFEST, PROGRESS, concat_latents, load_latents, write_latents
from fusion.errors import FusemixError
from fusion.extract import FAILURES, ExtractConfig, extract

REPO = Path(__file__).resolve().parents[1]


class FakeAudioEncoder:
    """Deterministic features of a waveform; counts calls and can crash after a given number of them."""

    name = "fake-audio"
    modality = "audio"
    dim = 4
    token_dim = 3
    sample_rate = 8000
    pooling = "stats"

    def __init__(self, crash_after: int | None = None):
        self.calls = 0
        self.items = 0
        self.crash_after = crash_after

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.items += len(batch)
        if tokens:
            return np.stack([[self.token(chunk) for chunk in np.array_split(x, tokens)] for x in batch])
        return np.array([[len(x) / self.sample_rate, x.mean(), x.std(), np.abs(x).max()] for x in batch], np.float32)

    @staticmethod
    def token(chunk: np.ndarray) -> list[float]:
        return [chunk.mean(), chunk.std(), np.abs(chunk).max()]


class FakeTextEncoder:
    """A caption's latent is derived from its sha256, so equal texts give equal latents."""

    name = "fake-text"
    modality = "text"
    dim = 6
    token_dim = 6
    sample_rate = None
    pooling = "hash"

    def __init__(self):
        self.calls = 0

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        self.calls += 1
        vectors = np.array([self.vector(text) for text in batch], np.float32)
        return (
            np.repeat(vectors[:, None], tokens, axis=1) * np.arange(1, tokens + 1)[None, :, None] if tokens else vectors
        )

    @staticmethod
    def vector(text: str) -> np.ndarray:
        return np.frombuffer(hashlib.sha256(text.encode()).digest()[:6], np.uint8).astype(np.float32) / 255


@pytest.fixture
def use_encoder(monkeypatch):
    """Route fusion.extract.load_encoder to a fake; returns a setter and records what was asked for."""
    state: dict = {"asked": []}

    def set_encoder(encoder):
        state["encoder"] = encoder
        return encoder

    def fake_load(name: str, device: str = "cpu"):
        state["asked"].append((name, device))
        return state["encoder"]

    monkeypatch.setattr(extract_module, "load_encoder", fake_load)
    set_encoder.state = state
    return set_encoder


@pytest.fixture
def clips(tmp_path) -> Path:
    """Five short tones at 16 kHz (the fake encoder wants 8 kHz) and a JSONL manifest with 1-2 captions each."""
    rows = []
    for i in range(5):
        seconds = 0.2 + 0.05 * i
        t = np.arange(int(seconds * 16000)) / 16000
        sf.write(
            tmp_path / f"clip{i}.wav", (0.1 * (i + 1) * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 16000
        )
        captions = [f"tone number {i}"] + ([f"a pitch of {220 * (i + 1)} hertz"] if i % 2 == 0 else [])
        rows.append({"audio": f"clip{i}.wav", "captions": captions})
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest


def run_cli(*args: str) -> int:
    return cli_main(["extract", "--no-progress", *args])


def test_audio_end_to_end_through_the_cli(tmp_path, clips, use_encoder, capsys):
    encoder = use_encoder(FakeAudioEncoder())
    out = tmp_path / "latents"
    assert run_cli("--encoder", "fake-audio", "--manifest", str(clips), "--out", str(out), "--batch-size", "2") == 0
    assert "audio latents (5, 4) from fake-audio" in capsys.readouterr().out
    cache = load_latents(out)
    assert cache.array.shape == (5, 4) and cache.array.dtype == np.float32
    assert cache.ids == cache.clip_ids == [f"clip{i}" for i in range(5)]
    assert cache.meta["modality"] == "audio" and cache.meta["pooling"] == "stats" and cache.meta["failed"] == []
    assert cache.meta["sample_rate"] == 8000 and cache.meta["source_manifest"] == str(clips.resolve())
    reference = FakeAudioEncoder().encode([load_audio(clips.parent / "clip3.wav", 8000)])[0]
    np.testing.assert_array_equal(cache.array[3], reference)
    assert cache.array[3, 0] == pytest.approx(0.35, abs=1e-3)  # resampled to 8 kHz, duration kept
    assert encoder.calls == 3  # batches of 2, 2, 1
    assert not (out / PROGRESS).exists() and json.loads((out / FAILURES).read_text()) == []


def test_text_encoder_encodes_every_caption(tmp_path, clips, use_encoder):
    use_encoder(FakeTextEncoder())
    out = extract(ExtractConfig("fake-text", clips, tmp_path / "text", progress=False, batch_size=3))
    cache = load_latents(out)
    assert cache.ids == ["clip0#0", "clip0#1", "clip1#0", "clip2#0", "clip2#1", "clip3#0", "clip4#0", "clip4#1"]
    assert cache.clip_ids == ["clip0", "clip0", "clip1", "clip2", "clip2", "clip3", "clip4", "clip4"]
    assert cache.texts[1] == "a pitch of 220 hertz"
    np.testing.assert_array_equal(cache.array[1], FakeTextEncoder.vector("a pitch of 220 hertz"))
    assert cache.meta["modality"] == "text" and cache.meta["sample_rate"] is None


@pytest.mark.parametrize(("encoder", "shape"), [(FakeAudioEncoder, (5, 4, 3)), (FakeTextEncoder, (8, 4, 6))])
def test_token_mode_shapes(tmp_path, clips, use_encoder, encoder, shape):
    use_encoder(encoder())
    out = tmp_path / "tok"
    assert (
        run_cli("--encoder", "x", "--manifest", str(clips), "--out", str(out), "--tokens", "4", "--shard-size", "3")
        == 0
    )
    cache = load_latents(out)
    assert cache.array.shape == shape and cache.meta["tokens"] == 4 and cache.meta["dim"] == shape[-1]
    assert [s["count"] for s in cache.meta["shards"]] == [3] * (shape[0] // 3) + (
        [shape[0] % 3] if shape[0] % 3 else []
    )


def test_resume_after_a_crash_skips_finished_shards(tmp_path, clips, use_encoder):
    config = ExtractConfig("fake-audio", clips, tmp_path / "resumed", batch_size=1, shard_size=2, progress=False)
    use_encoder(FakeAudioEncoder(crash_after=3))  # shard 0 (2 calls) finishes, shard 1 dies after its first item
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(config)
    progress = json.loads((config.out / PROGRESS).read_text())
    assert list(progress["shards"]) == ["0"] and not (config.out / MANIFEST).exists()
    with pytest.raises(FusemixError, match="unfinished"):
        load_latents(config.out)

    second = use_encoder(FakeAudioEncoder())
    extract(config)
    assert second.items == 3  # clips 2, 3, 4 only: shard 0 was not recomputed
    use_encoder(FakeAudioEncoder())
    whole = extract(ExtractConfig("fake-audio", clips, tmp_path / "whole", batch_size=1, shard_size=2, progress=False))
    resumed, uninterrupted = load_latents(config.out), load_latents(whole)
    np.testing.assert_array_equal(resumed.array, uninterrupted.array)
    assert resumed.ids == uninterrupted.ids


def test_lost_or_orphan_shard_files_are_recomputed(tmp_path, clips, use_encoder):
    config = ExtractConfig("fake-audio", clips, tmp_path / "c", batch_size=2, shard_size=2, progress=False)
    use_encoder(FakeAudioEncoder(crash_after=1))  # shard 0 finishes, shard 1 dies
    with pytest.raises(RuntimeError):
        extract(config)
    (config.out / "shard-00000.npy").unlink()  # recorded in progress.json, yet gone
    np.save(config.out / "shard-00001.npy", np.full((2, 4), 7.0, np.float32))  # on disk, never recorded
    encoder = use_encoder(FakeAudioEncoder())
    extract(config)
    assert encoder.items == 5
    assert not (load_latents(config.out).array == 7.0).any()


def test_finished_cache_is_not_recomputed_and_mismatches_are_refused(tmp_path, clips, use_encoder):
    config = ExtractConfig("fake-audio", clips, tmp_path / "c", shard_size=2, progress=False)
    use_encoder(FakeAudioEncoder())
    extract(config)
    asked = len(use_encoder.state["asked"])
    extract(config)
    assert len(use_encoder.state["asked"]) == asked  # finished: not even the encoder is loaded
    with pytest.raises(FusemixError, match=r"finished extraction with different arguments: tokens"):
        extract(ExtractConfig("fake-audio", clips, config.out, shard_size=2, tokens=2, progress=False))
    clips.write_text(clips.read_text() + json.dumps({"audio": "clip0.wav", "id": "again"}) + "\n")
    with pytest.raises(FusemixError, match="manifest contents"):
        extract(config)


def test_unfinished_cache_refuses_another_encoder(tmp_path, clips, use_encoder):
    config = ExtractConfig("fake-audio", clips, tmp_path / "c", batch_size=1, shard_size=1, progress=False)
    use_encoder(FakeAudioEncoder(crash_after=2))
    with pytest.raises(RuntimeError):
        extract(config)
    use_encoder(FakeTextEncoder())
    with pytest.raises(FusemixError, match=r"unfinished extraction with different arguments: encoder"):
        extract(ExtractConfig("fake-text", clips, config.out, batch_size=1, shard_size=1, progress=False))


def break_clips(folder: Path) -> None:
    (folder / "clip1.wav").write_bytes(b"")
    (folder / "clip3.wav").write_text("just some text\n" * 20)


def test_bad_audio_is_skipped_and_reported(tmp_path, clips, use_encoder, capsys):
    break_clips(clips.parent)
    use_encoder(FakeAudioEncoder())
    out = tmp_path / "c"
    assert run_cli("--encoder", "fake-audio", "--manifest", str(clips), "--out", str(out), "--shard-size", "2") == 0
    assert f"2 failed, listed in {out / FAILURES}" in capsys.readouterr().out
    cache = load_latents(out)
    assert cache.ids == ["clip0", "clip2", "clip4"] and cache.array.shape == (3, 4)
    assert cache.meta["failed"] == ["clip1", "clip3"]
    failures = json.loads((out / FAILURES).read_text())
    assert [f["file"] for f in failures] == [str(clips.parent / "clip1.wav"), str(clips.parent / "clip3.wav")]
    assert "empty (0 bytes)" in failures[0]["reason"] and "not a readable audio file" in failures[1]["reason"]


def test_strict_makes_a_bad_file_fatal(tmp_path, clips, use_encoder, capsys):
    break_clips(clips.parent)
    use_encoder(FakeAudioEncoder())
    out = tmp_path / "c"
    assert run_cli("--encoder", "fake-audio", "--manifest", str(clips), "--out", str(out), "--strict") == 1
    err = capsys.readouterr().err
    assert "clip1.wav: empty (0 bytes)" in err and "--strict" in err and len(err.strip().splitlines()) == 1
    assert not (out / MANIFEST).exists()


def test_every_clip_failing_is_an_error(tmp_path, use_encoder):
    (tmp_path / "bad.wav").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "bad.wav"}\n{"id": "no-audio", "caption": "x"}\n')
    use_encoder(FakeAudioEncoder())
    with pytest.raises(FusemixError, match="no item of .* could be encoded"):
        extract(ExtractConfig("fake-audio", manifest, tmp_path / "c", progress=False))
    failures = json.loads((tmp_path / "c" / FAILURES).read_text())
    assert [f["id"] for f in failures] == ["bad", "no-audio"] and "no audio file" in failures[1]["reason"]


def test_wrong_encoder_output_and_arguments(tmp_path, clips, use_encoder):
    class Wrong(FakeAudioEncoder):
        dim = 5  # declares 5, returns 4

    use_encoder(Wrong())
    with pytest.raises(FusemixError, match=r"returned shape \(2, 4\) for a batch, expected \(2, 5\)"):
        extract(ExtractConfig("w", clips, tmp_path / "c", batch_size=2, progress=False))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        extract(ExtractConfig("w", clips, tmp_path / "d", batch_size=0))
    assert run_cli("--encoder", "x", "--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "e")) == 1


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import fusion.extract as fx
from test_extract import FakeAudioEncoder

class StopsAt(FakeAudioEncoder):
    def encode(self, batch, tokens=None):
        if self.calls == {kill_at}:  # shards 0..kill_at-1 are written and recorded: say so, wait to be killed
            print("ready", flush=True)
            sys.stdin.read()
        return super().encode(batch, tokens)

fx.load_encoder = lambda name, device="cpu": StopsAt()
fx.extract(fx.ExtractConfig("fake-audio", {manifest!r}, {out!r}, batch_size=1, shard_size=1, progress=False))
"""


@pytest.mark.slow
def test_kill_9_loses_at_most_the_shard_in_flight(tmp_path, clips, use_encoder):
    out = tmp_path / "killed"
    kill_at = random.randint(1, 4)  # a random point, reached deterministically: the child stops there and says so
    script = KILL_SCRIPT.format(tests=str(REPO / "tests"), manifest=str(clips), out=str(out), kill_at=kill_at)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        # the child answers within seconds; the 300 s is only a safety net against a hung child
        readable, _, _ = select.select([proc.stdout], [], [], 300)
        assert readable and proc.stdout.readline() == "ready\n", f"the extraction ended before shard {kill_at}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    done = len(json.loads((out / PROGRESS).read_text())["shards"])
    assert done == kill_at and not (out / MANIFEST).exists(), (done, kill_at)

    encoder = use_encoder(FakeAudioEncoder())
    extract(ExtractConfig("fake-audio", clips, out, batch_size=1, shard_size=1, progress=False))
    assert encoder.items == 5 - done and not list(out.glob(".*.tmp"))
    use_encoder(FakeAudioEncoder())
    whole = extract(ExtractConfig("fake-audio", clips, tmp_path / "whole", batch_size=1, shard_size=1, progress=False))
    np.testing.assert_array_equal(load_latents(out).array, load_latents(whole).array)


@pytest.mark.slow
def test_real_encoders_on_spoken_clips(tmp_path):
    """The issue's acceptance check: whisper-tiny.en on three spoken clips gives (3, 384); MiniLM ranks paraphrases."""
    try:
        import fusion.encoders  # noqa: F401
    except ImportError as err:
        pytest.skip(f"fusion.encoders is not importable yet ({err})")
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    sentences = ["a red circle on a blue background", "a small green square", "the big yellow triangle"]
    rows = []
    for i, sentence in enumerate(sentences):
        subprocess.run([espeak, "-w", str(tmp_path / f"s{i}.wav"), sentence], check=True, capture_output=True)
        rows.append({"audio": f"s{i}.wav", "caption": sentence})
    rows.append(
        {"id": "paraphrase", "captions": ["a crimson ring over a blue backdrop", "stock markets fell sharply today"]}
    )
    manifest = tmp_path / "spoken.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    audio = load_latents(extract(ExtractConfig("whisper-tiny.en", manifest, tmp_path / "audio", progress=False)))
    assert audio.array.shape == (3, 384) and audio.ids == ["s0", "s1", "s2"] and np.isfinite(audio.array).all()
    assert audio.meta["failed"] == ["paraphrase"]  # no audio for the caption-only clip

    text = load_latents(extract(ExtractConfig("all-MiniLM-L6-v2", manifest, tmp_path / "text", progress=False)))
    vectors = {t: v / np.linalg.norm(v) for t, v in zip(text.texts, text.array, strict=True)}
    anchor = vectors[sentences[0]]
    assert (
        anchor @ vectors["a crimson ring over a blue backdrop"]
        > anchor @ vectors["stock markets fell sharply today"] + 0.2
    )


def test_concat_latents_prefixes_ids_and_refuses_mismatched_caches(tmp_path):
    a, b = np.ones((2, 3, 4), np.float32), np.zeros((1, 3, 4), np.float32)
    meta = {"encoder": "e", "modality": "text"}
    write_latents(tmp_path / "a", a, ["c0#0", "c1#0"], ["c0", "c1"], meta, texts=["x", "y"])
    write_latents(tmp_path / "b", b, ["c0#0"], ["c0"], meta, texts=["z"])
    joined = load_latents(concat_latents([("a/", tmp_path / "a"), ("b/", tmp_path / "b")], tmp_path / "ab"))
    assert joined.array.shape == (3, 3, 4) and joined.array[:2].sum() == 24 and joined.array[2].sum() == 0
    assert joined.ids == ["a/c0#0", "a/c1#0", "b/c0#0"] and joined.clip_ids == ["a/c0", "a/c1", "b/c0"]
    assert joined.texts == ["x", "y", "z"] and joined.meta["tokens"] == 3 and joined.meta["encoder"] == "e"
    write_latents(tmp_path / "c", np.zeros((1, 4), np.float32), ["c0#0"], ["c0"], meta)
    with pytest.raises(FusemixError, match="rows of shape"):
        concat_latents([("a/", tmp_path / "a"), ("c/", tmp_path / "c")], tmp_path / "ac")
    write_latents(tmp_path / "d", b, ["c0#0"], ["c0"], {**meta, "encoder": "other"})
    with pytest.raises(FusemixError, match="encoder"):
        concat_latents([("a/", tmp_path / "a"), ("d/", tmp_path / "d")], tmp_path / "ad")


# --- several processes and machines: parts of one extraction merge into the one-process cache -------------------


def cache_state(out: Path) -> tuple[dict, np.ndarray, list]:
    """Everything a finished cache holds, to compare two of them exactly."""
    manifest = json.loads((out / MANIFEST).read_text())
    assert not list(out.glob("progress*.json")) and not list(out.glob(".*.tmp"))
    return manifest, load_latents(out).array, json.loads((out / FAILURES).read_text())


def assert_same_cache(out: Path, reference: Path) -> None:
    manifest, array, failures = cache_state(out)
    ref_manifest, ref_array, ref_failures = cache_state(reference)
    assert manifest == ref_manifest  # same ids in the same order, same shards, same fingerprint
    assert array.dtype == ref_array.dtype
    np.testing.assert_array_equal(array, ref_array)
    assert failures == ref_failures


@pytest.mark.parametrize("encoder", [FakeAudioEncoder, FakeTextEncoder])
def test_job_array_parts_merge_into_the_one_process_cache(tmp_path, clips, use_encoder, encoder, capsys):
    (clips.parent / "clip3.wav").write_bytes(b"")  # a failure inside part 1's range is merged too
    args = ["--encoder", "fake", "--manifest", str(clips), "--batch-size", "1", "--shard-size", "2"]
    use_encoder(encoder())
    assert run_cli(*args, "--out", str(tmp_path / "one")) == 0
    out = tmp_path / "parts"
    first = use_encoder(encoder())
    assert run_cli(*args, "--out", str(out), "--num-shards", "2", "--shard-index", "0") == 0
    assert "part 0 of 0..1 done" in capsys.readouterr().out
    assert not (out / MANIFEST).exists() and (out / "progress-part00000-of-00002.json").is_file()
    part_0 = ["shard-00000.npy"] if encoder is FakeAudioEncoder else ["shard-00000.npy", "shard-00001.npy"]
    assert sorted(p.name for p in out.glob("shard-*.npy")) == part_0  # 3 or 4 shards of 2: part 0 has the first half
    with pytest.raises(FusemixError, match="extraction unfinished"):
        load_latents(out)
    assert run_cli("--finalize", "--out", str(out)) == 1
    assert "cannot write manifest.json: " in capsys.readouterr().err

    second = use_encoder(encoder())
    assert run_cli(*args, "--out", str(out), "--num-shards", "2", "--shard-index", "1") == 0  # the last part in
    assert "latents (" in capsys.readouterr().out
    items = 5 if encoder is FakeAudioEncoder else 8
    assert first.calls + second.calls == items - (1 if encoder is FakeAudioEncoder else 0)  # each item encoded once
    assert_same_cache(out, tmp_path / "one")
    assert run_cli("--finalize", "--out", str(out)) == 0  # already finished: nothing to do


def test_finalize_after_a_part_died_before_writing_the_manifest(tmp_path, clips, use_encoder, monkeypatch):
    args = ["--encoder", "fake", "--manifest", str(clips), "--batch-size", "2", "--shard-size", "1", "--tokens", "2"]
    use_encoder(FakeAudioEncoder())
    assert run_cli(*args, "--out", str(tmp_path / "one")) == 0
    out = tmp_path / "parts"
    for index in (2, 0):
        assert run_cli(*args, "--out", str(out), "--num-shards", "3", "--shard-index", str(index)) == 0
    crashing = use_encoder(FakeAudioEncoder(crash_after=1))  # part 1 (clips 1, 2) dies after one shard
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(ExtractConfig("fake", clips, out, tokens=2, batch_size=2, shard_size=1, num_shards=3, shard_index=1))
    assert crashing.items == 1

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # as if killed between its last shard and the manifest

    resumed = use_encoder(FakeAudioEncoder())
    original = extract_module._finalize
    monkeypatch.setattr(extract_module, "_finalize", killed)
    assert run_cli(*args, "--out", str(out), "--num-shards", "3", "--shard-index", "1") == 130
    assert resumed.items == 1  # only the shard lost in the crash
    monkeypatch.setattr(extract_module, "_finalize", original)
    assert not (out / MANIFEST).exists()
    assert run_cli("--finalize", "--out", str(out), "--encoder", "other") == 1
    assert run_cli("--finalize", "--out", str(out)) == 0
    assert_same_cache(out, tmp_path / "one")


def test_parts_that_disagree_are_refused_in_one_line(tmp_path, clips, use_encoder, capsys):
    class Wider(FakeAudioEncoder):
        dim = 5  # same encoder name, another model behind it (say, another version on another machine)

        def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
            features = super().encode(batch, tokens)
            return np.concatenate([features, features[:, :1]], axis=1)

    args = ["--encoder", "fake", "--manifest", str(clips), "--shard-size", "2", "--num-shards", "2"]
    out = str(tmp_path / "c")
    use_encoder(FakeAudioEncoder())
    assert run_cli(*args, "--out", out, "--shard-index", "0") == 0
    capsys.readouterr()
    use_encoder(Wider())
    assert run_cli(*args, "--out", out, "--shard-index", "1") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "parts disagree on dim (4 in progress-part00000-of-00002.json, 5 in progress-part00001-" in err
    use_encoder(FakeAudioEncoder())
    assert run_cli(*args, "--out", out, "--shard-index", "1", "--tokens", "2") == 1
    assert "different arguments: tokens (None there, 2 now)" in capsys.readouterr().err
    assert run_cli(*[a if a != "fake" else "other" for a in args], "--out", out, "--shard-index", "1") == 1
    assert "different arguments: encoder ('fake' there, 'other' now)" in capsys.readouterr().err
    assert run_cli(*args, "--out", out, "--shard-index", "2") == 1
    assert "shard_index must be in [0, num_shards=2), got 2" in capsys.readouterr().err

    # parts that started at once meet only at the end: there the manifest is refused
    late = tmp_path / "late"
    use_encoder(FakeAudioEncoder(crash_after=0))  # part 0 records itself, then dies on its first shard
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(ExtractConfig("fake", clips, late, shard_size=2, num_shards=2, shard_index=0, progress=False))
    use_encoder(FakeAudioEncoder())
    assert run_cli(*args, "--out", str(late), "--shard-index", "1") == 0
    progress = late / "progress-part00001-of-00002.json"
    progress.write_text(progress.read_text().replace('"float32"', '"float16"'))
    assert run_cli("--finalize", "--out", str(late)) == 1
    err = capsys.readouterr().err
    assert "parts disagree on dtype ('float32' in progress-part00000-of-00002.json, 'float16' in" in err
    with pytest.raises(FusemixError, match="parts disagree on dtype"):
        extract(ExtractConfig("fake", clips, late, shard_size=2, num_shards=2, shard_index=0, progress=False))
    assert not (late / MANIFEST).exists()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LAUNCHERS = {
    # accelerate's torchrun launcher; without CUDA it runs CPU processes over gloo (`--cpu` would start only one)
    "accelerate": ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"],
    "torchrun": ["torch.distributed.run", "--nproc_per_node", "2"],
}


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import tiny_whisper

    return tiny_whisper(tmp_path_factory.mktemp("whisper"))


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "CUDA_VISIBLE_DEVICES": "",
        "FUSEMIX_LOG": "INFO",
    }
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_processes_under_a_launcher_equal_one_process(tmp_path, clips, tiny_whisper_dir):
    """A real (tiny, random, offline) Whisper in 2 CPU processes over gloo; rank 0 writes the manifest."""
    args = ["extract", "--no-progress", "--encoder", str(tiny_whisper_dir), "--manifest", str(clips)]
    args += ["--batch-size", "1", "--shard-size", "2"]
    one = run_module("fusemix", *args, "--out", str(tmp_path / "one"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    for launcher, command in sorted(LAUNCHERS.items()):
        port = ["--main_process_port" if launcher == "accelerate" else "--master_port", str(free_port())]
        out = tmp_path / launcher
        two = run_module(*command, *port, "-m", "fusemix", *args, "--out", str(out), cwd=tmp_path)
        assert two.returncode == 0, (launcher, two.stderr[-3000:])
        assert "part 0 of 0..1: shards 0-0 of 3 (2 items)" in two.stderr  # the work really was split
        assert "part 1 of 0..1: shards 1-2 of 3 (3 items)" in two.stderr
        assert two.stdout.count("audio latents (5, 16)") == 1  # rank 0 reports
        assert_same_cache(out, tmp_path / "one")


def test_more_parts_than_shards_still_merge(tmp_path, clips, use_encoder):
    use_encoder(FakeTextEncoder())
    reference = extract(ExtractConfig("fake-text", clips, tmp_path / "one", shard_size=3, progress=False))
    out = tmp_path / "parts"
    for index in (4, 0, 2, 1, 3):  # 8 captions in 3 shards over 5 parts: two parts have nothing to do
        assert not (out / MANIFEST).exists()
        encoder = use_encoder(FakeTextEncoder())
        extract(ExtractConfig("fake-text", clips, out, shard_size=3, num_shards=5, shard_index=index, progress=False))
        assert encoder.calls == (0 if index in (0, 2) else 1)
    assert_same_cache(out, reference)
