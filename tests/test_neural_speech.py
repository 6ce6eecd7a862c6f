"""Neural (Kokoro-82M) speakers: the held-out speaker rule, the package check, and `fusemix demo build-neural`."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demoworld import neural_speech as ns
from fusion.errors import FusemixError, InputError, MissingModelError

HAVE_KOKORO = all(importlib.util.find_spec(m) is not None for m in ns.PACKAGES)
needs_kokoro = pytest.mark.skipif(
    not HAVE_KOKORO, reason=f"optional neural-speech packages not installed: {ns.PIP_HINT}"
)


def test_test_speakers_are_never_train_or_val_speakers():
    test = ns.speaker_pool("test", 40, seed=1)
    for split in ("train", "val"):
        pool = ns.speaker_pool(split, 40, seed=1)
        assert pool and all(ns.allowed(s, split) for s in pool)
        assert not any(ns.allowed(s, "test") for s in pool)
        assert not {s.name for s in pool} & {s.name for s in test}
        assert not any(set(s.weights()) & set(ns.TEST_BASE_VOICES) for s in pool)
    assert len(test) == 40 and all(ns.allowed(s, "test") for s in test)
    assert not any(ns.allowed(s, "train") for s in test)
    for s in test:  # the held-out style makes up at least half of every test speaker
        assert sum(w for v, w in s.weights().items() if v in ns.TEST_BASE_VOICES) >= ns.TEST_MIN_HELD_OUT_WEIGHT
    assert [s.name for s in ns.speaker_pool("test", 40, seed=1)] == [s.name for s in test]  # seeded
    assert [s.name for s in ns.speaker_pool("test", 40, seed=2)] != [s.name for s in test]


def test_speaker_names_round_trip_and_bad_ones_fail():
    mix = ns.NeuralSpeaker("jf_tebukuro", "jm_kumo", 0.3)
    assert mix.name == "jf_tebukuro*0.70+jm_kumo*0.30"
    assert ns.NeuralSpeaker.parse(mix.name) == mix
    assert ns.NeuralSpeaker.parse("jf_alpha") == ns.NeuralSpeaker("jf_alpha")
    assert mix.weights() == pytest.approx({"jf_tebukuro": 0.7, "jm_kumo": 0.3})
    for bad in ("af_heart", "jf_alpha*0.5+jf_alpha*0.5", "jf_alpha*0.6+jm_kumo*0.6", "jf_alpha+jm_kumo"):
        with pytest.raises(InputError):
            ns.NeuralSpeaker.parse(bad)
    with pytest.raises(InputError, match="split"):
        ns.speaker_pool("dev", 3)


def test_missing_package_fails_with_one_line_naming_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingModelError) as err:
        ns.KokoroSpeaker()
    message = str(err.value)
    assert "'onnxruntime'" in message and "pip install" in message and "\n" not in message


def test_build_neural_rejects_bad_arguments(tmp_path):
    from fusemix import demo_build_neural

    with pytest.raises(InputError, match="--from"):
        demo_build_neural.build_neural(demo_build_neural.NeuralBuildConfig(out=tmp_path / "o", source=tmp_path))
    with pytest.raises(SystemExit):
        demo_build_neural.main(["--out", str(tmp_path / "o"), "--from", str(tmp_path), "--split", "dev"])


# --- real Kokoro ------------------------------------------------------------------------------------

CAPTIONS = ["a large red circle on a blue background", "a small green square on a yellow background",
            "a white cross on a purple background"]  # fmt: skip


def _source(folder: Path) -> Path:
    """A tiny `fusemix demo build`-shaped folder: test.jsonl and images."""
    from demoworld import scenes
    from demoworld.build import png_bytes

    (folder / "images").mkdir(parents=True)
    lines = []
    for k, caption in enumerate(CAPTIONS):
        (folder / "images" / f"test-{k:05d}.png").write_bytes(png_bytes(np.full((32, 32, 3), 40 * k, np.uint8)))
        lines.append({"id": f"test-{k:05d}-0", "audio": f"audio/test-{k:05d}-0.wav", "caption": caption,
                      "scene": {"colour": caption.split()[2]}, "image": f"images/test-{k:05d}.png",
                      "voice": "en-us+m7", "template": 0, "split": "test", "speed": 140, "pitch": 50,
                      "snr_db": 20.0, "noise": "pink", "gain": 0.5})  # fmt: skip
    assert scenes  # the module the real builder draws from is importable
    (folder / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


@pytest.mark.slow
@needs_kokoro
def test_build_neural_speaks_held_out_speakers_and_resumes(tmp_path):
    from fusemix import demo_build_neural
    from fusion.asr import transcribe

    source, out = _source(tmp_path / "src"), tmp_path / "neural"
    args = ["--out", str(out), "--from", str(source), "--threads", "2", "--speakers", "4", "--no-progress"]
    assert demo_build_neural.main([*args, "--limit", "2"]) == 0
    lines = [json.loads(t) for t in (out / "test.jsonl").read_text().splitlines()]
    source_lines = [json.loads(t) for t in (source / "test.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [line["id"] for line in source_lines[:2]]
    pool = {s.name for s in ns.speaker_pool("test", 4, seed=0)}
    for line, src in zip(lines, source_lines, strict=False):
        assert set(src) <= set(line) and line["caption"] == src["caption"] and line["scene"] == src["scene"]
        assert line["voice"] in pool and ns.allowed(ns.NeuralSpeaker.parse(line["voice"]), "test")
        audio, sr = sf.read(out / line["audio"], dtype="float32")
        assert sr == 16_000 and audio.ndim == 1 and 1.5 < len(audio) / sr < 8.0
        assert (out / line["image"]).read_bytes() == (source / src["image"]).read_bytes()
    first = (out / lines[0]["audio"]).read_bytes()
    readme = json.loads((out / "README.json").read_text())
    assert readme["clips_synthesized_this_run"] == 2 and readme["counts"]["test"]["clips"] == 2

    assert demo_build_neural.main([*args, "--limit", "3"]) == 0  # resumes: only the third clip is new
    readme = json.loads((out / "README.json").read_text())
    assert readme["clips_synthesized_this_run"] == 1 and readme["counts"]["test"]["clips"] == 3
    assert (out / lines[0]["audio"]).read_bytes() == first

    texts = transcribe([out / "audio" / f"test-{k:05d}-0.wav" for k in range(3)])  # natural speech: Whisper hears it
    for text, caption in zip(texts, CAPTIONS, strict=True):
        assert caption.split()[2] in text.lower() and caption.split()[-2] in text.lower(), (caption, text)
    with pytest.raises(FusemixError, match="other settings"):
        demo_build_neural.main([*args, "--seed", "5"])


# --- the other-synthesizer split (Flite) ------------------------------------------------------------

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)")


@pytest.mark.slow
@needs_flite
def test_build_other_speaks_every_clip_with_flite_voices_and_resumes(tmp_path):
    from demoworld import flite_speech
    from fusemix import demo_build_other

    source = _source(tmp_path / "src")
    out = tmp_path / "flite"
    args = ["--out", str(out), "--from", str(source), "--limit", "2", "--no-progress"]
    assert demo_build_other.main(args) == 0
    lines = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["test-00000-0", "test-00001-0"]
    for line in lines:
        assert line["synthesizer"] == "flite" and line["voice"] in flite_speech.VOICES
        audio, sr = sf.read(out / line["audio"])
        assert sr == 16000 and len(audio) > 16000 and abs(np.abs(audio).max() - line["gain"]) < 0.01
        assert (out / line["image"]).is_file()
    before = (out / lines[0]["audio"]).stat().st_mtime_ns
    assert demo_build_other.main([*args[:-3], "--no-progress"]) == 0  # all clips: keeps the two made
    assert (out / lines[0]["audio"]).stat().st_mtime_ns == before
    assert len((out / "test.jsonl").read_text().splitlines()) == len(CAPTIONS)
    with pytest.raises(FusemixError, match="other settings"):
        demo_build_other.main([*args[:-1], "--seed", "3"])
