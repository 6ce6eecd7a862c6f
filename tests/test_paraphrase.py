"""Paraphrased training captions (demoworld.paraphrase): same scene, other training phrasings, never a held-out one."""

import json

import numpy as np
import pytest

from demoworld import scenes
from demoworld.paraphrase import paraphrases, write_paraphrases
from fusion.errors import InputError
from fusion.manifests import read_manifest


def clip(template: int = 0) -> dict:
    scene = scenes.Scene(shape="cross", colour="red", size="small", background="blue")
    text = scenes.caption(scene, template, np.random.default_rng(0))
    return {"id": "c", "caption": text, "template": template, "scene": scene.attributes()}


def template_of(text: str) -> int:
    """The template a caption was written from (size words and colours differ only in the slots)."""
    matches = [
        t
        for t, pattern in enumerate(scenes.TEMPLATES)
        for size in ("small", "little", "tiny")
        if pattern.format(size=size, colour="red", shape="cross", background="blue") == text
    ]
    assert len(set(matches)) == 1, text
    return matches[0]


def test_paraphrases_keep_the_scene_and_use_only_other_training_phrasings():
    item = clip(template=10)
    out = paraphrases(item, 6, np.random.default_rng(0))
    assert out[0] == item["caption"] and len(out) == 7
    used = [template_of(text) for text in out[1:]]
    assert len(set(used)) == 6 and 10 not in used
    assert set(used) <= set(scenes.TRAIN_TEMPLATES)  # no validation or test phrasing
    for text in out:
        parsed = scenes.parse_caption(text)
        assert (parsed["colour"], parsed["background"], parsed["shape"]) == ("red", "blue", "cross")


def test_bad_counts_fail_in_one_line():
    others = len(scenes.TRAIN_TEMPLATES) - 1
    with pytest.raises(InputError, match=rf"paraphrases must be in \[0, {others}\]"):
        paraphrases(clip(), others + 1, np.random.default_rng(0))


def test_write_paraphrases_gives_a_captions_only_manifest_the_same_for_the_same_seed(tmp_path):
    source = tmp_path / "train.jsonl"
    source.write_text("\n".join(json.dumps({**clip(t), "id": f"c{t}", "audio": f"audio/c{t}.wav"}) for t in (0, 9)))
    first = write_paraphrases(source, tmp_path / "a.jsonl", 3, seed=0).read_text()
    assert write_paraphrases(source, tmp_path / "b.jsonl", 3, seed=0).read_text() == first
    assert write_paraphrases(source, tmp_path / "c.jsonl", 3, seed=1).read_text() != first
    clips = read_manifest(tmp_path / "a.jsonl")
    assert [c.id for c in clips] == ["c0", "c9"] and all(c.audio is None and len(c.captions) == 4 for c in clips)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x", "audio": "x.wav", "caption": "hi"}))
    with pytest.raises(InputError, match="has no scene or caption"):
        write_paraphrases(tmp_path / "bad.jsonl", tmp_path / "d.jsonl", 3, seed=0)
