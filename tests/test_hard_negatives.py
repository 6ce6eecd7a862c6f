"""Compositional hard negatives: swapping rules, the swap manifest, the loss, and `fusemix train --hard-negatives`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from demoworld import scenes
from fusemix import cli
from fusemix import hard_negatives as hard_cli
from fusemix import train as train_cli
from fusion.cache import load_latents, write_latents
from fusion.errors import FusemixError, InputError
from fusion.extract import _items
from fusion.hard_negatives import (
    encode_with_negatives,
    fusemix_mix_with_negatives,
    load_substitutes,
    load_swap_classes,
    substituted_captions,
    swapped_captions,
    write_swap_manifest,
)
from fusion.loss import InfoNCELoss
from fusion.manifests import read_manifest
from fusion.mixup import fusemix_mix
from tests.interrupt import interrupt_after

COLOURS = {"colour": ["red", "green", "blue", "yellow"]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- swapping rules ------------------------------------------------------------------------------------


def test_swap_exchanges_two_different_words_of_one_class_in_place():
    assert swapped_captions("a red circle on a blue background", COLOURS) == ["a blue circle on a red background"]
    # punctuation and case stay at their positions
    assert swapped_captions("Red circle, blue background.", COLOURS) == ["Blue circle, red background."]
    assert swapped_captions("a RED square on Green", COLOURS) == ["a GREEN square on Red"]
    # words inside other words are not words of the class
    assert swapped_captions("a reddish circle on blue", COLOURS) == []


def test_swap_gives_nothing_without_a_pair_and_respects_limit_and_order():
    assert swapped_captions("a red circle", COLOURS) == []
    assert swapped_captions("a red circle on red", COLOURS) == []  # same word twice: no different pair
    assert swapped_captions("no colour here", COLOURS) == []
    three = "red, green and blue"
    all_swaps = swapped_captions(three, COLOURS)
    assert all_swaps == ["green, red and blue", "blue, green and red", "red, blue and green"]  # pairs in text order
    assert swapped_captions(three, COLOURS, limit=2) == all_swaps[:2]
    assert swapped_captions(three, COLOURS) == all_swaps  # deterministic
    # two classes: only same-class words are exchanged
    classes = {**COLOURS, "size": ["small", "large"]}
    assert swapped_captions("a small red dot on a large blue field", classes) == [
        "a large red dot on a small blue field",
        "a small blue dot on a large red field",
    ]
    with pytest.raises(ValueError, match="limit"):
        swapped_captions(three, COLOURS, limit=0)


@pytest.mark.parametrize(
    "load, content, message",
    [
        (load_swap_classes, "{not json", "not JSON"),
        (load_swap_classes, '["red", "blue"]', "expected an object"),
        (load_swap_classes, '{"colour": ["red"]}', "at least 2 words"),
        (load_swap_classes, '{"colour": ["red", "light blue"]}', "not a single word"),
        (load_swap_classes, '{"colour": ["red", "blue"], "mood": ["blue", "happy"]}', "in both"),
        (load_substitutes, "{not json", "not JSON"),
        (load_substitutes, '["big", "little"]', "expected an object"),
        (load_substitutes, '{"big": "very little"}', "not a single word"),
        (load_substitutes, '{"big": "Big"}', "replace itself"),
    ],
)
def test_bad_swap_classes_or_substitutes_file_is_one_line_naming_it(tmp_path, load, content, message):
    path = tmp_path / "words.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="not found"):
        load(tmp_path / "missing.json")


def test_demo_world_swap_classes_are_its_colours(tmp_path):
    path = tmp_path / "swap_classes.json"
    path.write_text(json.dumps(scenes.SWAP_CLASSES))
    classes = load_swap_classes(path)
    assert sorted(classes["colour"]) == sorted(scenes.COLOURS)
    scene = scenes.Scene("circle", "red", "small", "blue")
    for template in scenes.TEMPLATES:  # every demo caption names two colours: exactly one swap
        caption = template.format(size="small", colour="red", shape=scene.shape, background="blue")
        (swap,) = swapped_captions(caption, classes)
        assert swap == template.format(size="small", colour="blue", shape="circle", background="red")


def test_substitution_replaces_one_word_at_a_time_keeping_case():
    sizes = {"big": "little", "little": "big"}
    assert substituted_captions("a Big red dot", sizes) == ["a Little red dot"]
    assert substituted_captions("BIG dot, little dot.", sizes) == ["LITTLE dot, little dot.", "BIG dot, big dot."]
    assert substituted_captions("a bigger dot", sizes) == []  # whole words only
    assert substituted_captions("big big", sizes) == ["little big", "big little"]
    assert substituted_captions("anything", {}) == []


def test_demo_size_substitutes_give_each_caption_its_other_size():
    scene = scenes.Scene("circle", "red", "small", "blue")
    for template in scenes.TEMPLATES:
        for size, words in scenes.SIZE_WORDS.items():
            other = next(s for s in scenes.SIZE_WORDS if s != size)
            for i, word in enumerate(words):
                caption = template.format(size=word, colour="red", shape=scene.shape, background="blue")
                want = template.format(
                    size=scenes.SIZE_WORDS[other][i], colour="red", shape="circle", background="blue"
                )
                assert substituted_captions(caption, scenes.SIZE_SUBSTITUTES) == [want]


# --- the swap manifest -----------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_swap_manifest_ids_follow_the_caption_ids_of_extract(tmp_path, capsys):
    manifest = write_jsonl(
        tmp_path / "captions.jsonl",
        [
            {"id": "c1", "audio": "c1.wav", "captions": ["a red dot on blue", "plain"]},
            {"id": "c2", "audio": "c2.wav", "caption": "red, green and blue"},
        ],
    )
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(COLOURS))
    out = tmp_path / "swaps.jsonl"
    assert (
        cli.main(["hard-negatives", "--captions", str(manifest), "--swap-classes", str(classes), "--out", str(out)])
        == 0
    )
    assert "3 swapped captions for 2 of 3 captions" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["caption"]) for r in lines] == [
        ("c1#0#swap0", "a blue dot on red"),
        ("c2#0#swap0", "green, red and blue"),
        ("c2#0#swap1", "blue, green and red"),
    ]
    # the prefixes are the ids extract gives the original captions, and extract reads the swap manifest as is
    caption_ids = {item.id for item in _items(read_manifest(manifest), "text")}
    assert {r["id"].rsplit("#swap", 1)[0] for r in lines} <= caption_ids
    items = _items(read_manifest(out), "text")
    assert [(i.id, i.clip_id, i.text) for i in items][0] == ("c1#0#swap0#0", "c1#0#swap0", "a blue dot on red")
    assert write_swap_manifest(manifest, COLOURS, tmp_path / "one.jsonl", limit=1)["swapped"] == 2


def test_substitutes_follow_each_captions_swaps_in_the_manifest(tmp_path, capsys):
    manifest = write_jsonl(
        tmp_path / "captions.jsonl",
        [{"id": "c1", "captions": ["a big red dot on blue", "a little dot"]}, {"id": "c2", "caption": "plain"}],
    )
    classes, subs = tmp_path / "classes.json", tmp_path / "subs.json"
    classes.write_text(json.dumps(COLOURS))
    subs.write_text(json.dumps({"big": "little", "little": "big"}))
    out = tmp_path / "swaps.jsonl"
    args = ["hard-negatives", "--captions", str(manifest), "--swap-classes", str(classes), "--out", str(out)]
    assert cli.main([*args, "--substitutes", str(subs)]) == 0
    assert "3 swapped captions for 2 of 3 captions" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["caption"]) for r in lines] == [
        ("c1#0#swap0", "a big blue dot on red"),  # the swap first, so a --hard-negative-limit of 1 keeps it
        ("c1#0#swap1", "a little red dot on blue"),
        ("c1#1#swap0", "a big dot"),
    ]
    assert cli.main([*args, "--substitutes", str(tmp_path / "missing.json")]) == 1
    assert "--substitutes" in capsys.readouterr().err


def test_swap_manifest_errors(tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "captions.jsonl", [{"id": "c1", "caption": "a red dot"}])
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(COLOURS))
    args = ["hard-negatives", "--captions", str(manifest), "--swap-classes", str(classes), "--out", "x.jsonl"]
    assert cli.main(args) == 1
    assert "none of its 1 captions" in capsys.readouterr().err
    assert cli.main([*args, "--limit", "0"]) == 1
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert not Path("x.jsonl").exists()
    assert hard_cli.build_parser().parse_args(args[1:]).limit == 2


# --- the loss --------------------------------------------------------------------------------------------


def features(b: int, m: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, d, generator=g), dim=-1)  # noqa: E731
    return unit(b), unit(b), unit(b, m)


def test_loss_without_negatives_is_the_plain_loss_exactly():
    audio, text, hard = features(6, 2)
    scale = torch.tensor(10.0)
    loss = InfoNCELoss()
    plain = loss(audio, text, scale)
    assert torch.equal(loss(audio, text, scale, hard_text=hard[:, :0], hard_mask=torch.ones(6, 0, dtype=bool)), plain)
    assert torch.equal(loss(audio, text, scale, hard_text=None), plain)
    # every negative masked out: the same value
    masked = loss(audio, text, scale, hard_text=hard, hard_mask=torch.zeros(6, 2, dtype=bool))
    assert torch.allclose(masked, plain, atol=1e-6, rtol=0)
    # the data-parallel path (all_* given) too
    dp = loss(audio, text, scale, all_audio=audio, all_text=text)
    assert torch.allclose(loss(audio, text, scale, all_audio=audio, all_text=text, hard_text=hard[:, :0]), dp)


def test_loss_adds_each_rows_negatives_to_its_audio_to_text_softmax():
    audio, text, hard = features(5, 2)
    scale = torch.tensor(7.0)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1], [0, 1]], dtype=torch.bool)
    got = InfoNCELoss()(audio, text, scale, hard_text=hard, hard_mask=mask)
    # reference: per row, softmax over [all texts, own present negatives]
    a2t = []
    for i in range(5):
        row = [scale * audio[i] @ t for t in text] + [scale * audio[i] @ hard[i, m] for m in range(2) if mask[i, m]]
        a2t.append(-torch.log_softmax(torch.stack(row), 0)[i])
    t2a = F.cross_entropy(scale * text @ audio.T, torch.arange(5))
    assert torch.allclose(got, 0.5 * (torch.stack(a2t).mean() + t2a), atol=1e-6)
    # data-parallel: two processes' shares, each with its own rows' negatives, average to the one-process loss
    halves = [
        InfoNCELoss()(audio[s], text[s], scale, audio, text, offset=s.start, hard_text=hard[s], hard_mask=mask[s])
        for s in (slice(0, 3), slice(3, 5))
    ]
    assert torch.allclose((3 * halves[0] + 2 * halves[1]) / 5, got, atol=1e-6)


def test_a_negative_equal_to_the_positive_raises_the_loss_more_than_a_random_one():
    audio, _, hard = features(8, 1)
    text = F.normalize(audio + 0.1 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    scale, ones = torch.tensor(10.0), torch.ones(8, 1, dtype=torch.bool)
    plain = InfoNCELoss()(audio, text, scale)
    random = InfoNCELoss()(audio, text, scale, hard_text=hard, hard_mask=ones)
    same = InfoNCELoss()(audio, text, scale, hard_text=text[:, None, :], hard_mask=ones)
    assert plain < random < same
    # the positive and its copy share the audio->text softmax: that half of the loss grows by about log 2
    assert same - plain == pytest.approx(0.5 * np.log(2), abs=0.05)


def test_mixing_negatives_uses_the_positives_lambda_and_partner():
    audio, text, hard = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 2, 4)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [0, 1]], dtype=torch.bool)
    ma, mt = fusemix_mix(audio, text, 1.0, torch.Generator().manual_seed(3))
    ha, ht, hh, hm = fusemix_mix_with_negatives(audio, text, hard, mask, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(ha, ma) and torch.equal(ht, mt)
    lam = ((ma - audio[3:]) / (audio[:3] - audio[3:])).mean()
    assert torch.allclose(hh, lam * hard[:3] + (1 - lam) * hard[3:], atol=1e-5)
    assert hm.tolist() == [[True, True], [True, False], [False, True]]


def test_negatives_go_through_the_token_text_tower_with_the_positives():
    from fusion.adapters import FuseMixAdapters

    torch.manual_seed(0)
    model = FuseMixAdapters(
        audio_dim=8, text_dim=6, shared_dim=8, num_blocks=1, text_adapter="sparse", text_tokens=4, text_keep=2
    )
    model.eval()
    audio, text, hard = torch.randn(3, 8), torch.randn(3, 4, 6), torch.randn(3, 2, 4, 6)
    mask = torch.tensor([[1, 0], [1, 1], [0, 0]], dtype=torch.bool)
    fa, ft, _, fh = encode_with_negatives(model, audio, text, hard, mask)
    assert fh.shape == (3, 2, 8) and torch.equal(fh[~mask], torch.zeros(3, 8))
    expected = model.encode({"text": hard[mask]})["text"]
    assert torch.allclose(fh[mask], expected, atol=1e-6)
    assert torch.allclose(ft, model.encode({"text": text})["text"], atol=1e-6)


# --- fusemix train --hard-negatives ------------------------------------------------------------------------


def swap_world(n: int, seed: int, colours: int = 8, order: float = 0.15, tokens: int | None = None):
    """Clips with a shape colour a and a background colour b (a != b) and a continuous code z.

    The audio latent knows which colour is which; the caption latent is nearly a bag of words: E[a] + E[b] plus a
    small order term ``order * (F[a] - F[b])``, so a caption and its swap (b, a) sit close together.
    Returns audio (n, 32), captions and their swaps (n, 24), or (n, tokens, 24) token latents.
    """
    mats = np.random.default_rng(99)
    a1, a2, az = (mats.standard_normal((k, 32)) for k in (colours, colours, 4))
    e, f, wz = (mats.standard_normal((k, 24)) for k in (colours, colours, 4))
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, colours, n)
    c2 = (c1 + rng.integers(1, colours, n)) % colours
    z = rng.standard_normal((n, 4))
    audio = a1[c1] + a2[c2] + z @ az + 0.1 * rng.standard_normal((n, 32))

    def caption(x, y):
        pooled = e[x] + e[y] + order * (f[x] - f[y]) + z @ wz + 0.05 * rng.standard_normal((n, 24))
        if tokens is None:
            return pooled.astype(np.float32)
        return (pooled[:, None, :] + 0.1 * rng.standard_normal((n, tokens, 24))).astype(np.float32)

    return audio.astype(np.float32), caption(c1, c2), caption(c2, c1)


def write_swap_world(root: Path, n: int, seed: int, tokens: int | None = None) -> tuple[Path, Path, Path]:
    """Caches as extract writes them: captions ``c<i>#0`` stored shuffled; swaps ``c<i>#0#swap<k>#0`` (every
    third clip has none, the others a second, noisier swap listed before the first), also shuffled."""
    audio, text, swaps = swap_world(n, seed, tokens=tokens)
    rng = np.random.default_rng(seed + 1)
    ids = [f"c{i}" for i in range(n)]
    order = rng.permutation(n)
    a = write_latents(root / "audio", audio, ids, ids, {"modality": "audio"})
    t = write_latents(
        root / "text", text[order], [f"{ids[i]}#0" for i in order], [ids[i] for i in order], {"modality": "text"}
    )
    rows, clip_ids = [], []
    for i in range(n):
        if i % 3 == 0:
            continue
        rows += [swaps[i] + 0.3 * rng.standard_normal(swaps[i].shape).astype(np.float32), swaps[i]]
        clip_ids += [f"{ids[i]}#0#swap1", f"{ids[i]}#0#swap0"]
    shuffle = rng.permutation(len(rows))
    s = write_latents(
        root / "swaps",
        np.stack(rows)[shuffle],
        [f"{clip_ids[j]}#0" for j in shuffle],
        [clip_ids[j] for j in shuffle],
        {"modality": "text"},
    )
    return a, t, s


def args_for(audio: Path, text: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("--audio-latents", str(audio), "--text-latents", str(text), "--out", str(out), "--no-progress"),
        *("--warmup-steps", "10", "--dropout", "0.0", "--weight-decay", "0.0", "--shared-dim", "32", "--lr", "3e-3"),
        *extra,
    ]


def test_hard_negative_index_maps_each_caption_to_its_swaps_in_order(tmp_path):
    from fusion.cache import open_latents
    from fusion.hard_negatives import load_hard_negatives

    _, text_dir, swaps_dir = write_swap_world(tmp_path, 30, seed=0)
    text, swaps = open_latents(text_dir), load_latents(swaps_dir)
    hard = load_hard_negatives(swaps_dir, text, limit=2, used_rows=np.arange(30))
    for row, caption_id in enumerate(text.ids):
        found = [swaps.clip_ids[j] for j in hard.index[row] if j >= 0]
        i = int(caption_id[1:].split("#")[0])
        assert found == ([] if i % 3 == 0 else [f"{caption_id}#swap0", f"{caption_id}#swap1"])
    latents, mask = hard.take(np.array([0, 1]))
    assert latents.shape == (2, 2, 24) and mask.shape == (2, 2)
    assert torch.equal(latents[~mask], torch.zeros(int((~mask).sum()), 24))
    one = load_hard_negatives(swaps_dir, text, limit=1, used_rows=np.arange(30))
    assert np.array_equal(one.index[:, 0], hard.index[:, 0])


def test_train_with_hard_negatives_runs_saves_and_resumes(tmp_path, monkeypatch):
    audio, text, swaps = write_swap_world(tmp_path, 240, seed=0)
    base = ["--epochs", "4", "--batch-size", "64", "--val-fraction", "0.1", "--hard-negatives", str(swaps)]
    assert train_cli.main(args_for(audio, text, tmp_path / "full", *base)) == 0
    saved = json.loads((tmp_path / "full" / "checkpoint" / "train_config.json").read_text())
    assert saved["hard_negatives"] == str(swaps) and saved["hard_negative_limit"] == 2

    interrupt_after(monkeypatch, "epoch", 2)  # an interruption right after the epoch-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_cli.main(args_for(audio, text, tmp_path / "cut", *base))
    cut = tmp_path / "cut"
    with pytest.raises(FusemixError, match="hard_negative_limit"):
        train_cli.main(args_for(audio, text, cut, *base, "--resume", "--hard-negative-limit", "1"))
    with pytest.raises(FusemixError, match="hard_negatives"):
        train_cli.main(args_for(audio, text, cut, *base[:-2], "--resume"))
    assert train_cli.main(args_for(audio, text, cut, *base, "--resume")) == 0
    states = [json.loads((tmp_path / r / "checkpoint" / "trainer_state.json").read_text()) for r in ("full", "cut")]
    assert [h["loss"] for h in states[0]["history"]] == [h["loss"] for h in states[1]["history"]]
    weights = [
        load_file(str(tmp_path / r / "checkpoint" / "diffusion_pytorch_model.safetensors")) for r in ("full", "cut")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the negatives change training: the same run without them ends elsewhere
    assert train_cli.main(args_for(audio, text, tmp_path / "plain", *base[:-2])) == 0
    plain = json.loads((tmp_path / "plain" / "checkpoint" / "trainer_state.json").read_text())
    assert plain["history"][0]["loss"] < states[0]["history"][0]["loss"]  # more negatives: a larger loss
    # the state records how many negatives a training caption had: 2 swaps for two captions in three here
    assert 1.2 < states[0]["hard_negatives_per_caption"] < 1.5 and "hard_negatives_per_caption" not in plain


def test_token_text_latents_with_hard_negatives_train_under_bf16(tmp_path):
    audio, text, swaps = write_swap_world(tmp_path, 96, seed=1, tokens=4)
    extra = ["--epochs", "2", "--batch-size", "32", "--text-adapter", "sparse", "--text-keep", "2", "--bf16"]
    out = tmp_path / "run"
    assert train_cli.main(args_for(audio, text, out, *extra, "--hard-negatives", str(swaps))) == 0
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and all(np.isfinite(h["loss"]) for h in state["history"])


def test_hard_negative_caches_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    audio, text, swaps = write_swap_world(tmp_path, 40, seed=0)
    other = write_latents(tmp_path / "other", np.zeros((3, 24), np.float32), ["x#0#swap0#0"] * 3, ["x#0#swap0"] * 3, {})
    wide = write_latents(tmp_path / "wide", np.zeros((2, 7), np.float32), ["c1#0#swap0#0"] * 2, ["c1#0#swap0"] * 2, {})
    cases = [
        (["--hard-negatives", str(other)], "no training caption has swapped captions"),
        (["--hard-negatives", str(wide)], "rows of shape (7,)"),
        (["--hard-negatives", str(tmp_path / "missing")], "no latent cache"),
        (["--hard-negatives", str(swaps), "--hard-negative-limit", "0"], "--hard-negative-limit must be >= 1"),
    ]
    for i, (extra, message) in enumerate(cases):
        assert cli.main(["train", *args_for(audio, text, tmp_path / f"run{i}", "--epochs", "1", *extra)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def swap_confusion(out: Path, seed: int) -> tuple[float, float]:
    """On fresh clips: the share whose audio is closer to its swapped caption than to its own, and the mean gap."""
    from fusion.adapters import FuseMixAdapters
    from fusion.train import find_checkpoint

    model = FuseMixAdapters.from_pretrained(find_checkpoint(out)).eval()
    audio, text, swaps = (torch.from_numpy(x) for x in swap_world(500, 1000 + seed))
    fa, ft, fs = model.embed("audio", audio), model.embed("text", text), model.embed("text", swaps)
    pos, neg = (fa * ft).sum(-1), (fa * fs).sum(-1)
    return float((neg >= pos).float().mean()), float((pos - neg).mean())


@pytest.mark.slow
def test_hard_negatives_lower_swap_confusion_on_a_bag_of_words_task(tmp_path):
    """Captions nearly a bag of words: plain InfoNCE rarely meets a caption's swap in a batch and confuses them."""
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for seed in range(3):
        audio, text, _ = write_swap_world(tmp_path / f"s{seed}", 1000, seed)
        _, _, swaps = swap_world(1000, seed)  # every clip's exact swap (write_swap_world leaves some out)
        ids = [f"c{i}" for i in range(1000)]
        swap_dir = write_latents(
            tmp_path / f"s{seed}" / "all-swaps",
            swaps,
            [f"{i}#0#swap0#0" for i in ids],
            [f"{i}#0#swap0" for i in ids],
            {},
        )
        for hard in (False, True):
            out = tmp_path / f"s{seed}" / str(hard)
            extra = ["--epochs", "20", "--batch-size", "128", "--seed", str(seed)]
            extra += ["--hard-negatives", str(swap_dir)] if hard else []
            assert train_cli.main(args_for(audio, text, out, *extra)) == 0
            results[hard].append(swap_confusion(out, seed))
    confusion = {k: np.mean([c for c, _ in v]) for k, v in results.items()}
    gap = {k: np.mean([g for _, g in v]) for k, v in results.items()}
    # measured: confusion 0.103 -> 0.015, gap 0.021 -> 0.062 (3 seeds)
    assert confusion[False] > 0.05 and confusion[True] < 0.5 * confusion[False], confusion
    assert gap[True] > 1.5 * gap[False], gap
    assert all(h[1] > p[1] for p, h in zip(results[False], results[True], strict=True)), results


@pytest.mark.slow
def test_hard_negatives_across_two_processes(tmp_path):
    """Each process adds its own rows' negatives; the run matches one process's closely (only the mixing differs)."""
    audio, text, swaps = write_swap_world(tmp_path, 256, seed=2)
    extra = ["--epochs", "3", "--batch-size", "64", "--hard-negatives", str(swaps)]
    assert train_cli.main(args_for(audio, text, tmp_path / "single", *extra)) == 0
    out = tmp_path / "run"
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fusemix", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, *launch, *args_for(audio, text, out, *extra)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stderr
    state, single = (
        json.loads((p / "checkpoint" / "trainer_state.json").read_text()) for p in (out, tmp_path / "single")
    )
    losses, single_losses = [h["loss"] for h in state["history"]], [h["loss"] for h in single["history"]]
    assert state["step"] == single["step"] and losses[-1] < losses[0]
    assert abs(losses[-1] - single_losses[-1]) < 0.15 * single_losses[-1], (losses, single_losses)
