"""fusion.manifests.read_manifest: AudioCaps CSV, Clotho CSV, generic JSONL/CSV, and errors naming file + line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion.manifests import Clip, ManifestError, manifest_format, read_manifest

AUDIOCAPS = """audiocap_id,youtube_id,start_time,caption
91139,r1nicOVtvkQ,130,A woman talks nearby as water pours
58146,UDGBjjwyaqE,20,"Multiple clanging and clanking sounds, then a man speaks"
91140,r1nicOVtvkQ,130,Water pours while a woman speaks
11,r1nicOVtvkQ,30.0,A different window of the same video
"""

CLOTHO = """file_name,caption_1,caption_2,caption_3,caption_4,caption_5
Distorted AM Radio noise.wav,"A radio, distorted, hums",Static buzzes,Noise from a radio,A radio crackles,Radio static
rain.wav,Rain falls,Rain on a roof,Drops of rain,Rain patters,It rains
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_audiocaps_groups_captions_by_video_and_start(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "r1nicOVtvkQ_130.wav").write_bytes(b"x")
    (tmp_path / "audio" / "UDGBjjwyaqE.flac").write_bytes(b"x")
    path = write(tmp_path / "test.csv", AUDIOCAPS)
    assert manifest_format(path) == "audiocaps"
    clips = read_manifest(path, audio_dir=tmp_path / "audio")
    assert [c.id for c in clips] == ["r1nicOVtvkQ_130", "UDGBjjwyaqE_20", "r1nicOVtvkQ_30"]
    assert clips[0].captions == ["A woman talks nearby as water pours", "Water pours while a woman speaks"]
    assert clips[1].captions == ["Multiple clanging and clanking sounds, then a man speaks"]
    assert clips[0].audio == tmp_path / "audio" / "r1nicOVtvkQ_130.wav"
    assert clips[1].audio == tmp_path / "audio" / "UDGBjjwyaqE.flac"  # <youtube_id>.<ext> fallback
    assert clips[2].audio == tmp_path / "audio" / "r1nicOVtvkQ_30.wav"  # none exists: the documented name


def test_audiocaps_bad_start_time_names_the_line(tmp_path):
    path = write(tmp_path / "a.csv", AUDIOCAPS + "12,abc,soon,A dog barks\n")
    with pytest.raises(ManifestError, match=r"a\.csv, line 6: start_time 'soon'"):
        read_manifest(path)


def test_clotho_keeps_five_captions_per_clip(tmp_path):
    path = write(tmp_path / "clotho_captions_evaluation.csv", CLOTHO)
    assert manifest_format(path) == "clotho"
    clips = read_manifest(path, audio_dir=tmp_path)
    assert [c.id for c in clips] == ["Distorted AM Radio noise.wav", "rain.wav"]
    assert clips[0].captions[0] == "A radio, distorted, hums" and len(clips[0].captions) == 5
    assert clips[1].audio == tmp_path / "rain.wav"


def test_clotho_empty_caption_and_duplicate_file(tmp_path):
    path = write(tmp_path / "c.csv", CLOTHO + "wind.wav,Wind,,Gusts,Wind blows,Air\n")
    with pytest.raises(ManifestError, match=r"c\.csv, line 4: empty caption_2"):
        read_manifest(path)
    path = write(tmp_path / "d.csv", CLOTHO + "rain.wav,a,b,c,d,e\n")
    with pytest.raises(ManifestError, match=r"line 4: file_name 'rain.wav' already on line 3"):
        read_manifest(path)


def test_generic_jsonl(tmp_path):
    rows = [
        {"audio": "clips/dog.wav", "caption": "a dog barks"},
        {"audio": "/abs/cat.wav", "captions": ["a cat meows", "a kitten"], "id": "cat"},
        {"id": "only-text", "caption": "no audio here"},
        {"audio": "clips/dog.wav", "caption": "barking"},  # same clip again: captions merge
    ]
    path = write(tmp_path / "m.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    clips = read_manifest(path)
    assert clips == [
        Clip("dog", tmp_path / "clips" / "dog.wav", ["a dog barks", "barking"]),
        Clip("cat", Path("/abs/cat.wav"), ["a cat meows", "a kitten"]),
        Clip("only-text", None, ["no audio here"]),
    ]
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert read_manifest(path, audio_dir=other)[0].audio == other / "clips" / "dog.wav"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"caption": "x"}', "needs an audio path or an id"),
        ('{"audio": "a.wav", "captions": "one string"}', "captions must be a list"),
        ('{"audio": "a.wav", "caption": ""}', "non-empty string"),
        ('{"audio": "a.wav", "caption": "x", "captions": ["y"]}', "not both"),
        ('{"id": "x"}', "neither audio nor caption"),
    ],
)
def test_generic_jsonl_errors_name_file_and_line(tmp_path, line, reason):
    path = write(tmp_path / "bad.jsonl", '{"audio": "ok.wav", "caption": "fine"}\n' + line + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert f"{path}, line 2" in str(info.value) and reason in str(info.value)


def test_generic_csv_one_caption_per_row_and_json_captions(tmp_path):
    text = 'audio,caption\nx/a.wav,first\nx/b.wav,other\nx/a.wav,"second, with a comma"\n'
    clips = read_manifest(write(tmp_path / "g.csv", text))
    assert [(c.id, c.captions) for c in clips] == [("a", ["first", "second, with a comma"]), ("b", ["other"])]
    text = 'id,audio,captions\nk1,k.wav,"[""one"", ""two""]"\n'
    assert read_manifest(write(tmp_path / "h.csv", text))[0] == Clip("k1", tmp_path / "k.wav", ["one", "two"])
    with pytest.raises(ManifestError, match=r"line 2: captions must be a JSON list"):
        read_manifest(write(tmp_path / "i.csv", "audio,captions\na.wav,not json\n"))


def test_csv_row_with_wrong_field_count(tmp_path):
    path = write(tmp_path / "w.csv", "audio,caption\na.wav,ok\nb.wav,too,many\n")
    with pytest.raises(ManifestError, match=r"w\.csv, line 3: 3 fields, header has 2"):
        read_manifest(path)


def test_unknown_formats_and_missing_files(tmp_path):
    with pytest.raises(ManifestError, match="matches no known format"):
        read_manifest(write(tmp_path / "x.csv", "path,text\na,b\n"))
    with pytest.raises(ManifestError, match="unknown extension"):
        read_manifest(write(tmp_path / "x.txt", "a"))
    with pytest.raises(ManifestError, match="lists no clips"):
        read_manifest(write(tmp_path / "e.jsonl", "\n"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="audio folder"):
        read_manifest(write(tmp_path / "ok.jsonl", '{"audio": "a.wav"}\n'), audio_dir=tmp_path / "missing")
