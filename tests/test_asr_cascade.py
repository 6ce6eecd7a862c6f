"""The ASR-cascade baseline: Whisper transcripts, their on-disk cache, nearest caption, and `fusemix eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusion.asr import AsrSettings, TranscriptCache, cascade_nearest, transcribe
from fusion.cache import write_latents
from fusion.errors import InputError


class BagOfWords:
    """A stand-in text encoder: counts of a fixed vocabulary, so cosine rewards shared words."""

    vocab = ("red", "blue", "green", "circle", "square", "triangle", "small", "large")

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([[t.lower().split().count(w) for w in self.vocab] for t in texts], np.float32)


class NoTranscriber:
    """Fails if asked to transcribe: proves a call was answered from the cache."""

    settings = AsrSettings()

    def transcribe_waves(self, waves):
        raise AssertionError(f"asked to transcribe {len(waves)} clips that should come from the cache")


def test_cascade_nearest_picks_the_caption_sharing_most_words():
    bank = ["a small red circle", "a large blue square", "a green triangle"]
    picks = cascade_nearest(["uh a blue square large", "small red circle", "green triangle!"], bank, BagOfWords())
    assert picks.tolist() == [1, 0, 2]
    assert cascade_nearest([], bank, BagOfWords()).tolist() == []
    with pytest.raises(InputError, match="empty"):
        cascade_nearest(["red"], [], BagOfWords())


def test_transcript_cache_key_follows_file_and_settings(tmp_path):
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF....")
    greedy, beam = (
        TranscriptCache(tmp_path / "t.json", AsrSettings(beam_size=1)),
        TranscriptCache(tmp_path / "t.json", AsrSettings(beam_size=5)),
    )
    assert greedy.key(clip) != beam.key(clip)
    assert AsrSettings(batch_size=2).key() == AsrSettings(batch_size=16).key()  # batching does not change text
    greedy.put(clip, "hello")
    greedy.save()
    assert TranscriptCache(tmp_path / "t.json", AsrSettings(beam_size=1)).get(clip) == "hello"
    assert TranscriptCache(tmp_path / "t.json", AsrSettings(beam_size=5)).get(clip) is None
    clip.write_bytes(b"RIFF......")  # a rebuilt file is transcribed again
    assert TranscriptCache(tmp_path / "t.json", AsrSettings(beam_size=1)).get(clip) is None


# --- real Whisper on espeak-ng speech ---------------------------------------------------------------

SPOKEN = ["a large red circle on a blue background", "a small green square on a yellow background"]
BANK = [
    "a large red circle on a blue background",
    "a small green square on a yellow background",
    "a small white cross on a purple background",
    "a large orange star on a black background",
]


@pytest.fixture(scope="module")
def spoken_clips(tmp_path_factory) -> list[Path]:
    from demoworld import speech

    folder = tmp_path_factory.mktemp("asr")
    paths = []
    for k, text in enumerate(SPOKEN):
        settings = speech.SpeechSettings(voice="en-us+m1", speed=130, pitch=50, snr_db=30.0, noise="pink", gain=0.7)
        paths.append(folder / f"clip{k}.wav")
        speech.write_wav(paths[-1], speech.speak(text, settings, np.random.default_rng(k)))
    return paths


@pytest.mark.slow
def test_whisper_transcribes_espeak_and_the_cascade_finds_the_caption(spoken_clips, tmp_path):
    cache = tmp_path / "transcripts.json"
    texts = transcribe(spoken_clips, cache=cache)
    for text, words in zip(texts, (("red", "circle", "blue"), ("green", "square", "yellow")), strict=True):
        heard = text.lower()
        assert all(w in heard for w in words), f"{words} not all in transcript {text!r}"
    assert cascade_nearest(texts, BANK).tolist() == [0, 1]
    assert transcribe(spoken_clips, cache=cache, transcriber=NoTranscriber()) == texts  # from the cache
    assert len(json.loads(cache.read_text())["items"]) == 2


@pytest.mark.slow
def test_fusemix_eval_asr_cascade_reports_recall_and_keeps_transcripts(spoken_clips, tmp_path):
    from fusemix import evaluate

    manifest = tmp_path / "test.jsonl"
    lines = [{"id": f"c{k}", "audio": str(p), "caption": SPOKEN[k]} for k, p in enumerate(spoken_clips)]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ids = [line["id"] for line in lines]
    audio = write_latents(
        tmp_path / "audio", np.zeros((2, 4), np.float32), ids, ids, {"source_manifest": str(manifest)}
    )
    text = write_latents(
        tmp_path / "text", np.zeros((2, 4), np.float32), [f"{i}#0" for i in ids], ids, {}, texts=SPOKEN
    )
    out = tmp_path / "eval" / "eval.json"
    args = ["--audio-latents", str(audio), "--text-latents", str(text), "--method", "asr-cascade"]
    assert evaluate.main([*args, "--json", str(out), "--no-progress"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["text_to_audio"]["R@1"] == 1.0 and metrics["audio_to_text"]["R@1"] == 1.0
    assert metrics["asr"]["beam_size"] == 5
    transcripts = out.parent / "asr_transcripts.json"
    assert len(json.loads(transcripts.read_text())["items"]) == 2
    with pytest.raises(InputError, match="manifest"):
        evaluate.main([*args, "--manifest", str(tmp_path / "missing.jsonl")])


@pytest.mark.slow
def test_transcript_encoder_reads_what_was_said_with_the_text_encoder(spoken_clips):
    """`whisper-tiny.en-transcript`: Whisper's greedy transcript through MiniLM, pooled or as token states."""
    from fusion.audio import load_audio
    from fusion.encoders import load_encoder

    enc = load_encoder("whisper-tiny.en-transcript")
    minilm = load_encoder("all-MiniLM-L6-v2")
    assert (enc.modality, enc.sample_rate, enc.dim, enc.token_dim) == ("audio", 16000, 384, 384)
    waves = [load_audio(p, 16000) for p in spoken_clips]
    pooled = enc.encode(waves)
    heard = enc.last_transcripts
    assert all(w in heard[0].lower() for w in ("red", "circle", "blue")), heard
    reference = minilm.encode(heard)
    np.testing.assert_allclose(pooled, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=1e-5)
    captions = minilm.encode(BANK)
    assert ((pooled @ captions.T).argmax(axis=1) == [0, 1]).all()
    tokens = enc.encode(waves, tokens=24)
    states = minilm.encode(heard, tokens=24)
    norms = np.linalg.norm(states, axis=-1, keepdims=True)
    np.testing.assert_allclose(tokens, states / np.maximum(norms, 1e-12), atol=1e-5)  # each token l2, padding 0
    assert (norms[:, -1] == 0).all() and (tokens[:, -1] == 0).all()
    both = load_encoder("concat:whisper-tiny.en-10s+whisper-tiny.en-transcript").encode(waves[:1], tokens=8)
    assert both.shape == (1, 8, 768)
    np.testing.assert_allclose(both[0, :, 384:], enc.encode(waves[:1], tokens=8)[0], atol=1e-5)  # its own part


@pytest.mark.slow
def test_short_window_decodes_short_clips_fast_and_long_clips_over_30_s(spoken_clips):
    """A clip decides its own window: a 12 s clip does not fit 10 s and is decoded over 30 s, in any batch."""
    from fusion.asr import Transcriber
    from fusion.audio import load_audio

    short = load_audio(spoken_clips[0], 16000)
    long = np.concatenate([np.zeros(16000 * 9, np.float32), short])  # speech after 9 s of silence: >10 s padded
    windows = []
    transcriber = Transcriber(AsrSettings(beam_size=1, short_window_s=10.0))
    decode = transcriber._decode
    transcriber._decode = lambda features: windows.append(features.shape[-1]) or decode(features)
    alone = transcriber.transcribe_waves([long])
    mixed = transcriber.transcribe_waves([short, long])
    assert windows == [3000, 1000, 3000]  # 100 mel frames a second
    assert mixed[1] == alone[0] and "circle" in alone[0].lower()  # the spoken words after 9 s are not cut off
