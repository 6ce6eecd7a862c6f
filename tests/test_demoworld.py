"""The demo-world builder and its spoken captions: determinism, splits, audio format, intelligibility."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demoworld import build, scenes, speech
from demoworld.wer import edit_distance, normalize_words, word_error_rate
from fusemix import cli, demo_build
from fusion.errors import FusemixError, InputError

REPO = Path(__file__).resolve().parents[1]


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "README.json"  # README.json holds the build time
    }


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "small"
    assert demo_build.main(["--out", str(out), "--size", "small", "--seed", "3", "--no-progress"]) == 0
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- word error rate -------------------------------------------------------------------------------


def test_edit_distance_counts_substitutions_insertions_deletions():
    assert edit_distance("a b c".split(), "a b c".split()) == 0
    assert edit_distance("a b c".split(), "a x c".split()) == 1
    assert edit_distance("a b c".split(), "a c".split()) == 1
    assert edit_distance("a b".split(), "x a b y".split()) == 2
    assert edit_distance([], "a b".split()) == 2
    assert edit_distance("kitten sitting".split(), []) == 2


def test_word_error_rate_is_corpus_level_and_ignores_case_and_punctuation():
    assert normalize_words("A Red, circle.") == ["a", "red", "circle"]
    assert word_error_rate(["a red circle"], ["A red circle."]) == 0.0
    # 1 edit over 3 words + 2 edits over 1 word = 3 / 4 (a mean of rates would give (1/3 + 2) / 2)
    assert word_error_rate(["a red circle", "blue"], ["a blue circle", "big blue sky"]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one length"):
        word_error_rate(["a"], [])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate([""], ["a"])


# --- plan and splits (no audio) --------------------------------------------------------------------


def test_scene_counts_presets_and_numbers():
    assert build.scene_counts("small") == build.SIZE_PRESETS["small"]
    counts = build.scene_counts(2300)
    assert sum(counts.values()) == 2300 and counts == build.SIZE_PRESETS["default"]
    assert sum(build.scene_counts(7).values()) == 7 and min(build.scene_counts(7).values()) >= 1
    for bad in ("huge", "2", -5, "x1"):
        with pytest.raises(ValueError, match="--size"):
            build.scene_counts(bad)


def test_voice_splits_are_disjoint_and_large_enough():
    train, val, test = (set(speech.VOICES[s]) for s in build.SPLITS)
    assert len(train | val | test) >= 12
    assert not (train & test) and not (train & val) and not (val & test)
    # the test timbres (variants) are never heard in training either
    assert not {v.split("+")[1] for v in test} & {v.split("+")[1] for v in train}
    assert all(not v.startswith("mb-") and "+" in v for v in train | val | test)


def test_voice_rule_holds_out_test_variants_and_accent_and_uses_every_other_variant():
    train_pairs = [v.split("+") for v in speech.TRAIN_VOICES]
    held_out = set(speech.TEST_VARIANTS) | set(speech.VAL_VARIANTS)
    assert {v for _, v in train_pairs} == set(speech.ALL_VARIANTS) - held_out - set(speech.UNUSED_VARIANTS)
    assert {a for a, _ in train_pairs} == set(speech.TRAIN_ACCENTS)
    assert not {a for a, _ in train_pairs} & set(speech.TEST_ACCENTS)
    assert len(speech.TRAIN_VOICES) >= 600
    for voice in speech.TEST_VOICES:
        accent, variant = voice.split("+")
        assert variant in speech.TEST_VARIANTS or accent in speech.TEST_ACCENTS


def test_accented_voices_hold_out_their_validation_accent_and_keep_the_test_voices():
    accented = speech.VOICE_SETS["accented"]
    train_accents = {v.split("+")[0] for v in accented["train"]}
    val_accents = {v.split("+")[0] for v in accented["val"]}
    assert train_accents == set(speech.ACCENTED_TRAIN_ACCENTS) and val_accents == set(speech.ACCENTED_VAL_ACCENTS)
    every_train_accent = train_accents | set(speech.TRAIN_ACCENTS)
    assert not val_accents & every_train_accent and not set(speech.TEST_ACCENTS) & every_train_accent
    assert {v.split("+")[1] for v in accented["train"]} == set(speech.TRAIN_VARIANTS)
    assert {v.split("+")[1] for v in accented["val"]} == set(speech.VAL_VARIANTS)
    assert accented["test"] == speech.TEST_VOICES and speech.VOICE_SETS["english"] is speech.VOICES
    if shutil.which("espeak-ng"):  # espeak-ng knows every one (it would otherwise speak its default voice)
        for voice in accented["train"][:: len(speech.TRAIN_VARIANTS)] + accented["val"]:
            speech.check_voice(voice)


def test_accented_plan_changes_only_the_voices():
    english = build.plan(build.BuildConfig(out=Path("unused"), size="small", seed=4))
    accented = build.plan(build.BuildConfig(out=Path("unused"), size="small", seed=4, voices="accented"))
    assert [it.scene for it in accented] == [it.scene for it in english]
    pairs = [(a, e) for ia, ie in zip(accented, english, strict=True) for a, e in zip(ia.clips, ie.clips, strict=True)]
    assert all(a.caption == e.caption and a.template == e.template for a, e in pairs)
    for item in accented:
        for clip in item.clips:
            assert clip.settings.voice in speech.ACCENTED_VOICES[item.split]
    assert {c.settings.voice.split("+")[0] for it in accented if it.split == "train" for c in it.clips} <= {"hi", "ru"}
    assert all(c.settings.voice in speech.VOICES[it.split] for it in english for c in it.clips)


def test_templates_are_many_disjoint_and_every_one_parses_to_its_scene():
    train, val, test = (set(t) for t in (scenes.TRAIN_TEMPLATES, scenes.VAL_TEMPLATES, scenes.TEST_TEMPLATES))
    assert len(train | val | test) == len(scenes.TEMPLATES) >= 30 and len(test) >= 6
    assert not train & test and not train & val and not val & test
    assert set(scenes.IMAGE_TEMPLATES) <= train and set(scenes.EXAMPLE_TEMPLATES) <= test
    rng = np.random.default_rng(0)
    for template in range(len(scenes.TEMPLATES)):
        for combo in scenes.all_attribute_combinations()[template::37]:
            scene = scenes.Scene(*combo)
            assert scenes.parse_caption(scenes.caption(scene, template, rng)) == scene.attributes(), template


def test_default_plan_splits_voices_templates_and_covers_every_combination():
    config = build.BuildConfig(out=Path("unused"), size="default", seed=0)
    items = build.plan(config)
    clips = {s: [(c, it) for it in items if it.split == s for c in it.clips] for s in build.SPLITS}
    assert {s: len(v) for s, v in clips.items()} == {"train": 3000, "val": 300, "test": 500}
    voices = {s: {c.settings.voice for c, _ in v} for s, v in clips.items()}
    templates = {s: {c.template for c, _ in v} for s, v in clips.items()}
    assert not voices["test"] & voices["train"] and not voices["val"] & voices["train"]
    assert not templates["test"] & templates["train"] and not templates["val"] & templates["train"]
    assert templates["train"] == set(scenes.TRAIN_TEMPLATES) and len(voices["train"]) > 500  # of 644 voices
    combos = {s: {tuple(it.scene.attributes().values()) for it in items if it.split == s} for s in build.SPLITS}
    assert len(combos["test"]) == len(scenes.all_attribute_combinations())  # 500 scenes deal all 448
    for clip, item in clips["train"][:200]:
        assert scenes.parse_caption(clip.caption) == item.scene.attributes()
        low, high = speech.SPEED_RANGE
        assert low <= clip.settings.speed <= high
    assert build.plan(config)[5].clips[0] == items[5].clips[0]  # deterministic
    other = build.plan(build.BuildConfig(out=Path("unused"), size="default", seed=1))
    assert [it.scene for it in other[:50]] != [it.scene for it in items[:50]]


# --- speech ----------------------------------------------------------------------------------------


def test_coloured_noise_is_unit_rms_and_coloured():
    rng = np.random.default_rng(0)
    for colour in speech.NOISE_COLOURS:
        noise = speech.coloured_noise(16000, colour, rng)
        assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-3)
    white, brown = speech.coloured_noise(16000, "white", rng), speech.coloured_noise(16000, "brown", rng)
    # brown noise changes slowly: neighbouring samples are strongly correlated, white ones are not
    assert np.corrcoef(brown[:-1], brown[1:])[0, 1] > 0.9 > 0.2 > abs(np.corrcoef(white[:-1], white[1:])[0, 1])
    with pytest.raises(ValueError, match="noise"):
        speech.coloured_noise(10, "purple", rng)


def test_speak_pads_with_half_a_second_and_keeps_the_peak():
    settings = speech.SpeechSettings("en-us+m7", 150, 50, snr_db=30.0, noise="white", gain=0.5)
    audio = speech.speak("a small red circle on a blue background", settings, np.random.default_rng(0))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.max(np.abs(audio)) == pytest.approx(0.5, rel=1e-4)
    head = audio[: int(0.45 * speech.SAMPLE_RATE)]
    middle = audio[len(audio) // 2 - 4000 : len(audio) // 2 + 4000]
    assert np.sqrt(np.mean(head**2)) < 0.15 * np.sqrt(np.mean(middle**2))  # only noise in the padding
    again = speech.speak("a small red circle on a blue background", settings, np.random.default_rng(0))
    assert np.array_equal(audio, again)


def test_espeak_errors_are_clear():
    with pytest.raises(ValueError, match="empty"):
        speech.espeak("  ", "en-us", 150, 50)
    with pytest.raises(FusemixError, match="espeak-ng"):
        speech.espeak("hello", "no-such-voice-xyz", 150, 50)


# --- the build -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_small_build_is_deterministic_resumable_and_well_formed(small_build, tmp_path):
    again = tmp_path / "again"
    assert (
        demo_build.main(["--out", str(again), "--size", "small", "--seed", "3", "--no-progress", "--workers", "1"]) == 0
    )
    assert tree_hashes(again) == tree_hashes(small_build)

    readme = json.loads((small_build / "README.json").read_text())
    assert readme["total"] == {"scenes": 24, "clips": 36}
    assert readme["settings"]["seed"] == 3 and readme["settings"]["voices"]["test"] == list(speech.TEST_VOICES)
    assert readme["build_seconds"] > 0

    lines = {s: read_jsonl(small_build / f"{s}.jsonl") for s in build.SPLITS}
    assert {s: len(v) for s, v in lines.items()} == {"train": 24, "val": 4, "test": 8}
    for split, split_lines in lines.items():
        for line in split_lines:
            assert {"id", "audio", "caption", "scene", "image", "voice", "template"} <= set(line)
            assert line["voice"] in speech.VOICES[split] and line["template"] in build.SPLIT_TEMPLATES[split]
            assert scenes.parse_caption(line["caption"]) == {
                k: line["scene"][k] for k in ("shape", "colour", "size", "background")
            }
            info = sf.info(small_build / line["audio"])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert 1.5 < info.duration < 8
            assert (small_build / line["image"]).is_file()

    # resume: nothing is synthesized again, a deleted clip comes back identical
    victim = small_build / lines["test"][0]["audio"]
    before = victim.read_bytes()
    victim.unlink()
    readme = build.build(build.BuildConfig(out=small_build, size="small", seed=3, progress=False))
    assert readme["clips_synthesized_this_run"] == 1 and victim.read_bytes() == before

    with pytest.raises(FusemixError, match="other settings"):
        build.build(build.BuildConfig(out=small_build, size="small", seed=4, progress=False))


def test_build_cli_rejects_bad_arguments(tmp_path, capsys):
    assert cli.main(["demo", "build", "--out", str(tmp_path / "x"), "--size", "gigantic"]) == 1
    assert "--size" in capsys.readouterr().err
    assert cli.main(["demo", "build", "--out", str(tmp_path / "x"), "--size", "small", "--workers", "0"]) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        demo_build.main(["--out", str(tmp_path / "y"), "--resolution", "48"])
    with pytest.raises(SystemExit):
        demo_build.main(["--out", str(tmp_path / "y"), "--voices", "klingon"])
    with pytest.raises(InputError, match="--voices"):
        build.build(build.BuildConfig(out=tmp_path / "z", size="small", voices="klingon"))
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_examples_ship_spoken_test_prompts():
    lines = read_jsonl(REPO / "examples" / "prompts.jsonl")
    assert 5 <= len(lines) <= 8
    for line in lines:
        path = REPO / "examples" / line["audio"]
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert path.stat().st_size < 200_000
        assert line["voice"] in speech.TEST_VOICES
        assert scenes.parse_caption(line["caption"]) == line["scene"]


# --- intelligibility -------------------------------------------------------------------------------


def transcribe(clips: list[np.ndarray]) -> list[str]:
    """Greedy Whisper tiny.en (CTranslate2, offline) transcripts of 16 kHz clips."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    from fusion.offline import whisper_tiny_en_ct2

    folder = whisper_tiny_en_ct2()
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    features = WhisperFeatureExtractor()(clips, sampling_rate=16000, return_tensors="np").input_features
    prompts = [[50257, 50362]] * len(clips)  # <|startoftranscript|><|notimestamps|> for the English-only model
    results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), prompts,
                             beam_size=1, max_length=64, no_repeat_ngram_size=3)  # fmt: skip
    return [tokenizer.decode(r.sequences_ids[0]) for r in results]


@pytest.mark.slow
def test_whisper_understands_the_test_split(small_build):
    lines = read_jsonl(small_build / "test.jsonl") + read_jsonl(small_build / "val.jsonl")[:2]
    clips = [sf.read(small_build / line["audio"], dtype="float32")[0] for line in lines]
    hypotheses = transcribe(clips)
    references = [line["caption"] for line in lines]
    wer = word_error_rate(references, hypotheses)
    colour_hits = sum(line["scene"]["colour"] in normalize_words(h) for line, h in zip(lines, hypotheses, strict=True))
    print(
        f"\nWhisper tiny.en on {len(lines)} held-out spoken captions: WER {wer:.3f}, shape colour heard {colour_hits}/{len(lines)}"
    )
    for ref, hyp in zip(references, hypotheses, strict=True):
        print(f"  {ref!r} -> {hyp!r}")
    assert wer < 0.6
    assert colour_hits >= 0.7 * len(lines)
