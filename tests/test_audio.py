"""fusion.audio.load_audio: formats, resampling, and one clear AudioError per kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from fusion.audio import load_audio
from fusion.errors import AudioError


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def test_reads_wav_as_float32_mono(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(0.5, 16000), 16000, subtype="PCM_16")
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == 8000
    np.testing.assert_allclose(audio, tone(0.5, 16000), atol=1e-3)


@pytest.mark.parametrize(
    ("src_sr", "dst_sr", "seconds"), [(44100, 16000, 1.0), (8000, 16000, 0.5), (22050, 22050, 0.3)]
)
def test_resampling_gives_the_right_length(tmp_path, src_sr, dst_sr, seconds):
    path = tmp_path / "r.flac"
    sf.write(path, tone(seconds, src_sr, channels=2), src_sr)
    audio = load_audio(path, dst_sr)
    assert audio.ndim == 1
    assert abs(len(audio) - seconds * dst_sr) <= 1
    # the tone keeps its pitch: the spectrum peaks at 440 Hz after resampling
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * dst_sr / len(audio)
    assert abs(peak_hz - 440) < 5


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(0.2, 16000, 300), tone(0.2, 16000, 500)
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 16000), (left + right) / 2, atol=1e-6)


def test_mp3_decodes(tmp_path):
    path = tmp_path / "a.mp3"
    sf.write(path, tone(1.0, 16000), 16000)
    audio = load_audio(path, 16000)
    assert abs(len(audio) - 16000) < 1200 and np.abs(audio).max() > 0.1


def test_silence_is_valid(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    assert not load_audio(path, 16000).any()


def expect_error(path, reason: str, **kwargs) -> None:
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000, **kwargs)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.wav", "not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_error(path, "empty (0 bytes)")


def test_text_file_renamed_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 50)
    expect_error(path, "not a readable audio file")


def test_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(1.0, 16000), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    expect_error(path, "truncated")


def test_wav_cut_inside_the_header(tmp_path):
    path = tmp_path / "head.wav"
    sf.write(path, tone(1.0, 16000), 16000)
    path.write_bytes(path.read_bytes()[:30])
    expect_error(path, "truncated or corrupt")


def test_zero_samples(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    expect_error(path, "no samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_samples(tmp_path, bad):
    samples = tone(0.1, 16000)
    samples[10:13] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    expect_error(path, "3 samples are NaN or infinite")


def test_too_long_is_rejected_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 3, dtype=np.float32), 16000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file the header already showed too long")

    monkeypatch.setattr(sf, "read", no_decoding)
    expect_error(path, "longer than the limit of 2 s", max_seconds=2)


def test_limit_can_be_lifted(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 3, dtype=np.float32), 16000)
    assert len(load_audio(path, 16000, max_seconds=None)) == 48000


def test_directory_is_not_a_file(tmp_path):
    expect_error(tmp_path, "is a directory")


def test_a_clip_shorter_than_the_minimum_is_padded_and_says_so(tmp_path, caplog):
    from fusion.audio import MIN_SECONDS

    path = tmp_path / "blip.wav"
    sf.write(path, tone(0.05, 16000), 16000)
    with caplog.at_level("WARNING", logger="fusion.audio"):
        audio = load_audio(path, 16000)
    assert len(audio) == round(MIN_SECONDS * 16000) and np.all(audio[800:] == 0)
    assert "blip.wav" in caplog.text and f"{MIN_SECONDS:g} s the audio encoder needs" in caplog.text
    caplog.clear()
    assert len(load_audio(path, 16000, min_seconds=None)) == 800 and not caplog.text
