"""`fusemix batch`: clip discovery, per-clip seeds, results.jsonl, resume, bad clips, exit codes.

Most tests drive a fake pipeline (tests/fake_audio_to_image.py) that really decodes the audio; the slow test at the
end runs the shipped demo pipeline over the example clips.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fusemix import batch as batch_cli
from fusemix import cli
from fusion.errors import InputError
from generator import batch
from generator import records as schema
from generator.batch import (
    RESULTS,
    BatchClip,
    BatchConfig,
    StaleResultsError,
    clip_seed,
    completed_clips,
    find_clips,
    read_results,
    run_batch,
)
from generator.presets import load_preset
from tests.fake_audio_to_image import EXAMPLES, FakeAudioToImagePipeline, install_if_missing

DEMO_MODE = load_preset("demo").mode  # the shipped preset's default mode, and the other one
OTHER_MODE = {"retrieve": "translate", "translate": "retrieve"}[DEMO_MODE]

CLIPS = sorted(EXAMPLES.glob("*.ogg"))


@pytest.fixture
def fake(monkeypatch) -> FakeAudioToImagePipeline:
    install_if_missing(monkeypatch)
    return FakeAudioToImagePipeline()


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three good clips (one in a sub-folder), a non-audio file, a hidden file."""
    root = tmp_path / "sounds"
    (root / "sub").mkdir(parents=True)
    shutil.copy(CLIPS[0], root / "a.ogg")
    shutil.copy(CLIPS[1], root / "b.OGG")
    shutil.copy(CLIPS[2], root / "sub" / "c.ogg")
    (root / "notes.txt").write_text("not audio")
    (root / ".hidden.ogg").write_bytes(CLIPS[0].read_bytes())
    return root


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines() if line.strip()]


def test_find_clips_folder_recursive_with_relative_ids(folder):
    clips = find_clips(folder)
    assert [c.id for c in clips] == ["a", "b", "sub/c"]
    assert clips[2].audio == folder / "sub" / "c.ogg"


def test_find_clips_keeps_extension_when_stems_collide(folder):
    shutil.copy(CLIPS[3], folder / "a.wav")  # not a real wav: fine, discovery does not decode
    ids = [c.id for c in find_clips(folder)]
    assert "a.ogg" in ids and "a.wav" in ids and "a" not in ids


def test_find_clips_manifest_and_single_file():
    clips = find_clips(EXAMPLES / "prompts.jsonl")
    assert len(clips) == len(CLIPS)
    assert all(c.audio.is_file() and c.id == c.audio.stem for c in clips)
    assert [c.id for c in find_clips(CLIPS[0])] == [CLIPS[0].stem]


def test_find_clips_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        find_clips(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no audio"):
        find_clips(tmp_path / "empty")
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="expected a folder"):
        find_clips(tmp_path / "x.bin")


@pytest.mark.parametrize(
    ("bad_id", "why"),
    [("../../etc/x", "'..'"), ("a/../../b", "'..'"), ("/etc/x", "absolute"), ("a\x00b", "NUL"), ("./", "file name")],
)
def test_manifest_ids_that_would_leave_the_output_folder_are_refused_with_their_line(tmp_path, bad_id, why):
    good = {"id": "fine", "audio": str(CLIPS[0])}
    (tmp_path / "m.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"id": bad_id, "audio": str(CLIPS[1])}))
    with pytest.raises(InputError, match=rf"m.jsonl, line 2: clip id .*{why}"):
        find_clips(tmp_path / "m.jsonl")


def test_manifest_ids_with_backslashes_or_dots_become_relative_paths(tmp_path):
    lines = [{"id": "sub\\dog", "audio": str(CLIPS[0])}, {"id": "./x//y", "audio": str(CLIPS[1])}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [c.id for c in find_clips(tmp_path / "m.jsonl")] == ["sub/dog", "x/y"]


def test_clip_seed_is_stable_and_depends_on_both_inputs():
    assert clip_seed is schema.clip_seed  # one seed rule for generate, batch and the UI
    assert clip_seed(0, "a") == clip_seed(0, "a")
    assert len({clip_seed(0, "a"), clip_seed(1, "a"), clip_seed(0, "b")}) == 3
    assert 0 <= clip_seed(123, "x" * 500) < 2**31


def test_run_batch_writes_images_and_results(fake, folder, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(fake, find_clips(folder), out, BatchConfig(num_images_per_audio=2, seed=5, progress=False))
    assert (summary.done, summary.skipped, summary.failed, summary.images) == (3, 0, 0, 6)
    records = lines(out)
    assert [(r["clip"], r["index"]) for r in records] == [(c, k) for c in ("a", "b", "sub/c") for k in (0, 1)]
    for r in records:
        assert r["error"] is None and r["heard"] and r["timings"]["total"] >= 0
        assert r["seed"] == clip_seed(5, r["clip"])
        assert Image.open(out / r["image"]).size == (32, 32)
        assert Image.open(out / r["view"]).size == (256, 256)
    assert (out / "sub" / "c_1.png").is_file()
    assert [call["seed"] for call in fake.calls] == [[clip_seed(5, c)] for c in ("a", "b", "sub/c")]
    assert all(tuple(r) == schema.RECORD_KEYS and r["settings"] == BatchConfig(
        num_images_per_audio=2, seed=5).settings().as_dict() for r in records)  # fmt: skip


def test_images_do_not_depend_on_order_or_resume(fake, folder, tmp_path):
    clips = find_clips(folder)
    config = BatchConfig(seed=3, progress=False, view_size=0)
    run_batch(fake, clips, tmp_path / "forward", config)
    run_batch(fake, clips[::-1], tmp_path / "backward", config)
    for clip in clips:
        name = f"{clip.id}_0.png"
        assert (tmp_path / "forward" / name).read_bytes() == (tmp_path / "backward" / name).read_bytes()
    run_batch(fake, clips, tmp_path / "other-seed", BatchConfig(seed=4, progress=False, view_size=0))
    assert (tmp_path / "other-seed" / "a_0.png").read_bytes() != (tmp_path / "forward" / "a_0.png").read_bytes()


def test_rerun_does_no_new_work_and_redoes_missing_images(fake, folder, tmp_path):
    out = tmp_path / "out"
    config = BatchConfig(progress=False)
    run_batch(fake, find_clips(folder), out, config)
    calls = len(fake.calls)
    again = run_batch(fake, find_clips(folder), out, config)
    assert (again.done, again.skipped, again.failed) == (0, 3, 0)
    assert len(fake.calls) == calls and len(lines(out)) == 3
    (out / "b_0.png").unlink()
    third = run_batch(fake, find_clips(folder), out, config)
    assert (third.done, third.skipped) == (1, 2)
    assert fake.calls[-1]["audio"] == [folder / "b.OGG"]
    # more images per clip than before: other settings, refused unless asked to overwrite
    two = BatchConfig(num_images_per_audio=2, progress=False)
    with pytest.raises(StaleResultsError, match="num_images_per_audio 1 -> 2"):
        run_batch(fake, find_clips(folder), out, two)
    fourth = run_batch(fake, find_clips(folder), out, two, overwrite=True)
    assert fourth.done == 3 and completed_clips(out, 2) == {"a", "b", "sub/c"} and len(lines(out)) == 6


def test_bad_clip_is_recorded_and_the_rest_still_run(fake, folder, tmp_path):
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    (folder / "text.mp3").write_text("this is not an mp3 at all")
    out = tmp_path / "out"
    summary = run_batch(fake, find_clips(folder), out, BatchConfig(progress=False))
    assert (summary.done, summary.failed) == (3, 2)
    errors = {r["clip"]: r["error"] for r in lines(out) if r["error"]}
    assert set(errors) == {"broken", "text"}
    assert "broken.wav" in errors["broken"] and "text.mp3" in errors["text"]
    assert completed_clips(out, 1) == {"a", "b", "sub/c"}
    # failed clips are retried on a re-run (the file may have been fixed); done ones are not
    shutil.copy(CLIPS[4], folder / "broken.wav")
    again = run_batch(fake, find_clips(folder), out, BatchConfig(progress=False))
    assert (again.done, again.skipped, again.failed) == (1, 3, 1)


def test_torn_last_line_is_ignored_and_not_glued_to_the_next(fake, folder, tmp_path):
    out = tmp_path / "out"
    run_batch(fake, find_clips(folder)[:1], out, BatchConfig(progress=False))
    with (out / RESULTS).open("a") as f:
        f.write('{"clip": "b", "ind')  # a crash mid-write
    summary = run_batch(fake, find_clips(folder), out, BatchConfig(progress=False))
    assert (summary.done, summary.skipped) == (2, 1)
    assert {r["clip"] for r in read_results(out)} == {"a", "b", "sub/c"}


def test_duplicate_ids_and_bad_config_are_refused(fake, tmp_path):
    clips = [BatchClip("x", CLIPS[0]), BatchClip("x", CLIPS[1])]
    with pytest.raises(ValueError, match="unique"):
        run_batch(fake, clips, tmp_path / "out")
    with pytest.raises(ValueError, match="num_images_per_audio"):
        run_batch(fake, clips[:1], tmp_path / "out", BatchConfig(num_images_per_audio=0))


def test_cli_summary_and_exit_codes(fake, folder, tmp_path, monkeypatch, capsys):
    import generator.audio_to_image as a2i

    presets = []

    def from_preset(cls, preset="demo", device="cpu"):
        presets.append((preset, device))
        return fake

    monkeypatch.setattr(a2i.AudioToImagePipeline, "from_preset", classmethod(from_preset))
    out = tmp_path / "out"
    argv = ["--input", str(folder), "--out", str(out), "--seed", "9", "--no-progress", "--steps", "3"]
    assert batch_cli.main(argv) == 0
    assert "3 done, 0 skipped (already done), 0 failed" in capsys.readouterr().out
    assert presets == [("demo", "cpu")]
    assert batch_cli.main(argv) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert len(presets) == 1  # nothing left to do: no model loaded
    (folder / "bad.flac").write_bytes(b"fLaC" + b"\0" * 40)
    assert batch_cli.main(argv) == 1
    printed = capsys.readouterr().out
    assert "1 failed" in printed and "bad.flac" in printed
    assert fake.calls[-1]["seed"] == [clip_seed(9, "bad")]


def test_cli_rejects_bad_input_before_loading_a_model(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        batch_cli.main(["--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])


@pytest.mark.slow
def test_real_demo_pipeline_over_the_examples(tmp_path):
    pytest.importorskip("generator.audio_to_image", reason="generator.audio_to_image (the lead's pipeline) not there")
    out = tmp_path / "out"
    argv = ["--input", str(EXAMPLES / "prompts.jsonl"), "--out", str(out), "--no-progress", "--steps", "8"]
    assert batch_cli.main(argv) == 0
    records = lines(out)
    assert sorted(r["clip"] for r in records) == sorted(c.stem for c in CLIPS)
    for r in records:
        image = Image.open(out / r["image"])
        assert image.size[0] >= 16 and image.getextrema() != ((0, 0), (0, 0), (0, 0))
        assert len(r["heard"]) == 5 and r["heard"][0][1] >= r["heard"][-1][1]
    assert batch_cli.main(argv) == 0
    assert len(lines(out)) == len(records)  # the re-run did no new work


def test_records_name_the_mode_used_preset_default_or_asked(folder, tmp_path, monkeypatch):
    """Without --mode a clip runs in the preset's default mode, and its record says which one it was."""
    install_if_missing(monkeypatch)
    retrieving = FakeAudioToImagePipeline(default_mode="retrieve")
    run_batch(retrieving, find_clips(folder), tmp_path / "default", BatchConfig(progress=False))
    records = lines(tmp_path / "default")
    assert {r["mode"] for r in records} == {"retrieve"} and all(r["prompt"] for r in records)
    run_batch(retrieving, find_clips(folder), tmp_path / "asked", BatchConfig(mode="translate", progress=False))
    assert {r["mode"] for r in lines(tmp_path / "asked")} == {"translate"}
    with pytest.raises(ValueError, match="mode must be one of"):
        run_batch(retrieving, find_clips(folder), tmp_path / "bad", BatchConfig(mode="paint", progress=False))


# ---------- a clip fails alone, writing included; ids that cannot be file names are refused up front ----------


def test_a_clip_whose_files_cannot_be_written_fails_alone(fake, folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where clip sub/c needs a folder")
    (out / "b_0.png").mkdir()  # a folder where clip b's image goes
    summary = run_batch(fake, find_clips(folder), out, BatchConfig(progress=False))
    assert (summary.done, summary.failed) == (1, 2) and set(summary.errors) == {"b", "sub/c"}
    errors = {r["clip"]: r for r in lines(out) if r["error"]}
    assert "cannot write the images of clip 'sub/c'" in errors["sub/c"]["error"]
    assert tuple(errors["b"]) == schema.RECORD_KEYS and errors["b"]["seed"] == clip_seed(0, "b")
    assert completed_clips(out, 1) == {"a"} and not list(out.rglob(".*.tmp"))
    (out / "sub").unlink()
    (out / "b_0.png").rmdir()
    again = run_batch(fake, find_clips(folder), out, BatchConfig(progress=False))
    assert (again.done, again.skipped, again.failed) == (2, 1, 0)


def test_write_errors_isolate_clips_even_past_the_up_front_check(fake, tmp_path, monkeypatch):
    """The per-clip isolation does not rely on the name check: with it switched off, the issue's two cases (a
    300-character id, ids ``a`` and ``a_0.png/b``) give those clips error lines and the later clips still run."""
    monkeypatch.setattr(batch, "check_output_names", lambda *args: None)
    clips = [
        BatchClip("x" * 300, CLIPS[0]),
        BatchClip("a", CLIPS[1]),
        BatchClip("a_0.png/b", CLIPS[2]),
        BatchClip("last", CLIPS[3]),
    ]
    summary = run_batch(fake, clips, tmp_path / "out", BatchConfig(progress=False, view_size=0))
    assert summary.failed == 2 and summary.done == 2
    assert set(summary.errors) == {"x" * 300, "a_0.png/b"}
    assert "too long" in summary.errors["x" * 300].lower()
    assert (tmp_path / "out" / "last_0.png").is_file()


def write_manifest(path: Path, ids: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"id": i, "audio": str(CLIPS[k % len(CLIPS)])}) + "\n" for k, i in enumerate(ids))
    )
    return path


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["ok", "x" * 300], r"line 2: clip id 'x{300}' is too long"),
        (
            ["a", "ok", "a_0.png/b"],
            r"line 3: clip id 'a_0.png/b' needs a folder 'a_0.png', which is a file of .*line 1",
        ),
        (["ok", "results.jsonl/x"], r"line 2: .*the results file"),
        (["d/" + "y" * 256 + "/z"], r"line 1: clip id .* too long"),
    ],
)
def test_cli_refuses_ids_that_cannot_be_file_names_before_loading_a_model(tmp_path, monkeypatch, capsys, ids, message):
    import generator.audio_to_image as a2i

    loaded = []
    monkeypatch.setattr(a2i.AudioToImagePipeline, "from_preset", classmethod(lambda cls, *a, **k: loaded.append(a)))
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.jsonl", ids)
    assert cli.main(["batch", "--input", str(manifest), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fusemix batch: error: manifest ")
    assert re.search(message, err[0]), err[0]
    assert not loaded and not out.exists()  # nothing loaded, nothing written


# ---------- a re-run never hands back images made with other settings ----------


@pytest.fixture
def cli_fake(fake, monkeypatch) -> FakeAudioToImagePipeline:
    import generator.audio_to_image as a2i

    monkeypatch.setattr(a2i.AudioToImagePipeline, "from_preset", classmethod(lambda cls, *a, **k: fake))
    return fake


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (["--seed", "10"], "seed 9 -> 10"),
        (["--steps", "4"], "steps 3 -> 4"),
        (["--mode", OTHER_MODE], f"mode {DEMO_MODE!r} -> {OTHER_MODE!r}"),
        (["--guidance", "1.5"], "guidance 3 -> 1.5"),
        (["--num-images-per-audio", "2"], "num_images_per_audio 1 -> 2"),
        (["--top-k", "2"], "top_k 5 -> 2"),
        (["--preset", str(Path(__file__).resolve().parent.parent / "checkpoints" / "demo")], "preset 'demo' -> "),
    ],
)
def test_rerun_with_other_settings_refuses_in_one_line_or_regenerates_with_overwrite(
    cli_fake, folder, tmp_path, capsys, changed, named
):
    out = tmp_path / "out"
    argv = ["batch", "--input", str(folder), "--out", str(out), "--no-progress", "--seed", "9", "--steps", "3"]
    assert cli.main(argv) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    other = argv + changed  # argparse: the later flag wins
    assert cli.main(other) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "--overwrite" in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    calls = len(cli_fake.calls)
    assert cli.main([*other, "--overwrite"]) == 0
    assert "3 done, 0 skipped" in capsys.readouterr().out and len(cli_fake.calls) == calls + 3
    settings = {json.dumps(r["settings"], sort_keys=True) for r in lines(out)}
    assert len(settings) == 1  # only the new run's results are listed
    assert cli.main(other) == 0 and "0 done, 3 skipped" in capsys.readouterr().out  # same settings: resume


def test_spelling_out_the_presets_defaults_is_not_a_change(cli_fake, folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["batch", "--input", str(folder), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert {r["settings"]["mode"] for r in lines(out)} == {DEMO_MODE}  # the demo preset's, recorded as such
    spelt = [*argv, "--mode", DEMO_MODE, "--steps", "20", "--guidance", "3"]
    assert cli.main(spelt) == 0 and "0 done, 3 skipped" in capsys.readouterr().out


def test_results_that_do_not_record_their_settings_are_not_reused(fake, folder, tmp_path):
    out = tmp_path / "out"
    run_batch(fake, find_clips(folder), out, BatchConfig(progress=False))
    old = [{k: v for k, v in r.items() if k != "settings"} for r in lines(out)]  # as an earlier version wrote them
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(StaleResultsError, match="do not record their settings"):
        run_batch(fake, find_clips(folder), out, BatchConfig(progress=False))
    assert run_batch(fake, find_clips(folder), out, BatchConfig(progress=False), overwrite=True).done == 3
