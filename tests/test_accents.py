"""Simulated accents: sound changes bent into espeak-ng's phonemes, held out between training and validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from demoworld import accents, build, speech

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_training_and_validation_hear_disjoint_sound_changes():
    train, val = set(accents.TRAIN_CHANGES), set(accents.VAL_CHANGES)
    assert train and val and not train & val and train | val == set(accents.SOUND_CHANGES)
    pools = speech.ACCENT_POOLS["simulated"]
    assert pools["train"] == accents.TRAIN_CHANGES and pools["val"] == accents.VAL_CHANGES and not pools["test"]


def test_an_accent_is_a_few_changes_of_its_pool():
    rng = np.random.default_rng(0)
    for _ in range(50):
        names = accents.draw_accent(accents.VAL_CHANGES, rng).split(",")
        assert set(names) <= set(accents.VAL_CHANGES) and len(set(names)) == len(names)
        assert accents.CHANGES_PER_ACCENT[0] <= len(names) <= accents.CHANGES_PER_ACCENT[1]
    assert accents.draw_accent((), rng) == ""


def test_bend_changes_most_places_a_change_fits_and_nothing_else():
    phonemes = " ".join(["D'Is"] * 200)  # "this" 200 times
    bent = accents.bend(phonemes, "th-stopping", np.random.default_rng(1)).split()
    stopped = sum(word == "d'Is" for word in bent)
    assert all(word in ("D'Is", "d'Is") for word in bent)
    assert 0.6 * 200 < stopped < 0.95 * 200  # each place with APPLY_PROBABILITY, not all or none
    assert accents.bend(phonemes, "", np.random.default_rng(1)) == phonemes
    devoiced = accents.bend(" ".join(["r'Ed"] * 50), "final-devoicing", np.random.default_rng(5)).split()
    assert set(devoiced) == {"r'Ed", "r'Et"}
    with pytest.raises(ValueError, match="unknown sound change"):
        accents.bend(phonemes, "th-stopping,lisp", np.random.default_rng(0))


def test_simulated_plan_keeps_scenes_and_captions_and_accents_by_split():
    english = build.plan(build.BuildConfig(out=Path("unused"), size="small", seed=4))
    simulated = build.plan(build.BuildConfig(out=Path("unused"), size="small", seed=4, voices="simulated"))
    assert [it.scene for it in simulated] == [it.scene for it in english]
    for item_s, item_e in zip(simulated, english, strict=True):
        for s, e in zip(item_s.clips, item_e.clips, strict=True):
            assert (s.caption, s.settings.voice, s.settings.gain) == (e.caption, e.settings.voice, e.settings.gain)
            assert not e.settings.accent  # an English build draws no accent: its manifests are unchanged
            pool = speech.ACCENT_POOLS["simulated"][item_s.split]
            assert set(filter(None, s.settings.accent.split(","))) <= set(pool)
            assert bool(s.settings.accent) == bool(pool)


@needs_espeak
def test_an_accented_clip_is_spoken_from_bent_phonemes():
    text = "the green scene has one large purple circle in it"
    assert "gr'i:n" in speech.espeak_phonemes(text, "en-us+m3")
    plain = speech.SpeechSettings("en-us+m3", 140, 50, snr_db=30.0, noise="white", gain=0.5)
    bent = speech.SpeechSettings("en-us+m3", 140, 50, snr_db=30.0, noise="white", gain=0.5, accent="sheep-ship")
    a = speech.speak(text, plain, np.random.default_rng(0))
    b = speech.speak(text, bent, np.random.default_rng(0))
    again = speech.speak(text, bent, np.random.default_rng(0))
    assert np.array_equal(b, again)  # the bend is drawn from the clip's generator: a rebuild is identical
    assert len(a) != len(b) or not np.array_equal(a, b)


def test_words_bent_names_the_words_a_change_reaches_wherever_it_fits():
    phonemes = {"square": "skw'e@", "white": "w'aIt", "black": "bl'ak", "the": "D@"}
    assert accents.words_bent("w-to-v", phonemes) == ["square", "white"]
    assert accents.words_bent("l-to-r", phonemes) == ["black"]
    assert accents.words_bent("h-dropping", phonemes) == []
    with pytest.raises(ValueError, match="unknown sound change"):
        accents.words_bent("lisp", phonemes)


@needs_espeak
def test_accent_coverage_names_the_attribute_words_training_never_bends(capsys):
    from scripts.accent_coverage import main

    assert main(["--words", "square", "black", "the"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["val", "w-to-v", "square"] for line in lines)
    # the training pool's changes never reach "square" (stop 36): valsim's far "square" clips test an unseen bend
    assert lines[-1] == "never bent in training: square"
    assert main(["--voice", "xx-nope"]) == 2


@needs_espeak
def test_accent_probe_speaks_the_same_clips_under_each_change(tmp_path, capsys):
    from scripts.accent_probe import main

    assert main(["--out", str(tmp_path), "--changes", "none", "w-to-v,l-to-r", "--clips", "3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()]
    assert [r["change"] for r in rows] == ["none"] * 3 + ["w-to-v,l-to-r"] * 3
    plain, bent = rows[:3], rows[3:]
    for a, b in zip(plain, bent, strict=True):  # paired: one scene, caption and voice, two ways of saying it
        assert (a["scene"], a["caption"], a["voice"]) == (b["scene"], b["caption"], b["voice"])
        assert (tmp_path / a["audio"]).is_file() and (tmp_path / b["audio"]).is_file()
    assert json.loads((tmp_path / "bank.jsonl").read_text().splitlines()[0])["captions"]
    assert main(["--out", str(tmp_path / "x"), "--changes", "lisp"]) == 2
    assert "unknown sound change 'lisp'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # a bad change set fails before anything is written
