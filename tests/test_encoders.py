"""Encoders on tiny random models saved to temp folders and loaded through the real from_pretrained path,
plus slow checks on the offline whisper-tiny.en and all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import shutil
import socket
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_whisper  # noqa: E402

from fusion.encoders import ENCODERS, Encoder, load_encoder
from fusion.encoders import hub as hub_mod
from fusion.encoders.base import pool_frames, segment_bounds, sound_frames
from fusion.encoders.text import pooling_rule
from fusion.errors import ModelUnavailableError

WORDS = "a red blue green circle square triangle big small the on of is".split()


# ---------- tiny models ----------


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A 1 s-window Whisper: 100 mel frames -> 50 encoder frames."""
    return tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(
            vocab_size=100,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=40,
            projection_dim=16,
        ),
        audio_config=dict(
            patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[1, 2], hidden_size=16, projection_dim=16
        ),
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("clap")
    ClapModel(config).eval().save_pretrained(folder)
    ClapFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("bert")
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    return folder


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:  # no merges: every word is spelled out letter by letter
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def _clip_text_config(n_vocab: int) -> dict:
    return dict(
        vocab_size=n_vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=12,
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    tok = _clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=_clip_text_config(len(tok)),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=12,
    )
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _noise(seconds: float, rate: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


# ---------- pooling arithmetic ----------


@pytest.mark.parametrize(("n", "k"), [(10, 3), (7, 7), (3, 5), (50, 1), (1, 4)])
def test_segment_pooling_matches_plain_reference(n, k):
    frames = np.random.default_rng(n * 10 + k).standard_normal((60, 4)).astype(np.float32)
    bounds = segment_bounds(n, k)
    assert len(bounds) == k
    assert all(0 <= a < b <= n for a, b in bounds)
    assert bounds[0][0] == 0 and bounds[-1][1] == n  # the segments span exactly the frames that hold sound
    pooled = pool_frames(frames, n, k)
    ref = np.stack([frames[a:b].mean(axis=0) for a, b in bounds])
    np.testing.assert_allclose(pooled, ref, rtol=1e-6)
    np.testing.assert_allclose(pool_frames(frames, n, None), frames[:n].mean(axis=0), rtol=1e-6)


def test_sound_frames_counts_50_per_second_and_clamps():
    assert sound_frames(16000, 16000, 50, 1500) == 50
    assert sound_frames(16001, 16000, 50, 1500) == 51
    assert sound_frames(1, 16000, 50, 1500) == 1
    assert sound_frames(16000 * 40, 16000, 50, 1500) == 1500


# ---------- whisper (transformers) ----------


def test_whisper_folder_shapes_tokens_and_protocol(whisper_dir):
    enc = load_encoder(str(whisper_dir))
    assert isinstance(enc, Encoder)
    assert (enc.modality, enc.dim, enc.sample_rate, enc.pooling) == ("audio", 16, 16000, "mean-over-sound-frames")
    clips = [_noise(0.3, 16000, 1), _noise(0.8, 16000, 2), _noise(0.5, 16000, 3)]
    z = enc.encode(clips)
    assert z.shape == (3, 16) and z.dtype == np.float32
    zt = enc.encode(clips, tokens=4)
    assert zt.shape == (3, 4, 16) and zt.dtype == np.float32
    np.testing.assert_array_equal(enc.encode(clips), z)  # deterministic
    assert enc.encode([]).shape == (0, 16)


def test_whisper_pools_only_the_frames_that_hold_the_clip(whisper_dir):
    from transformers import WhisperFeatureExtractor, WhisperModel

    enc = load_encoder(str(whisper_dir))
    clip = _noise(0.3, 16000, 4)  # 0.3 s of a 1 s window: 15 of 50 frames
    fe = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    model = WhisperModel.from_pretrained(whisper_dir).get_encoder().eval()
    feats = fe([clip], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        frames = model(feats).last_hidden_state[0].numpy()
    assert frames.shape == (50, 16)
    z = enc.encode([clip])[0]
    np.testing.assert_allclose(z, frames[:15].mean(axis=0), atol=1e-5)
    assert np.abs(z - frames.mean(axis=0)).max() > 1e-3  # the padded window would give something else
    # Alone or next to a longer clip: same latent.
    together = enc.encode([_noise(0.9, 16000, 5), clip, _noise(0.1, 16000, 6)])
    np.testing.assert_allclose(together[1], z, atol=1e-5)
    tokens = enc.encode([clip], tokens=3)[0]
    np.testing.assert_allclose(tokens, np.stack([frames[a:b].mean(0) for a, b in segment_bounds(15, 3)]), atol=1e-5)


def test_whisper_folder_without_preprocessor_config_uses_its_config(whisper_dir, tmp_path):
    bare = tmp_path / "bare-whisper"
    shutil.copytree(whisper_dir, bare)
    (bare / "preprocessor_config.json").unlink()
    clip = _noise(0.4, 16000, 7)
    np.testing.assert_allclose(load_encoder(str(bare)).encode([clip]), load_encoder(str(whisper_dir)).encode([clip]))


# ---------- CLAP ----------


def test_clap_folder_matches_clap_model_audio_features(clap_dir):
    from transformers import ClapFeatureExtractor, ClapModel

    enc = load_encoder(str(clap_dir))
    assert (enc.modality, enc.dim, enc.sample_rate) == ("audio", 16, 48000)
    short, long = _noise(1.0, 48000, 8), _noise(11.0, 48000, 9)
    z = enc.encode([short, long])
    assert z.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    # Same weights as the full ClapModel checkpoint's audio tower (none left at random init).
    model = ClapModel.from_pretrained(clap_dir).eval()
    extractor = ClapFeatureExtractor.from_pretrained(clap_dir)
    feats = extractor([short], sampling_rate=48000, truncation="rand_trunc", return_tensors="pt")  # unfused model
    with torch.no_grad():
        ref = model.get_audio_features(**feats)
    ref = getattr(ref, "pooler_output", ref)
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(z[0], ref[0], atol=1e-5)
    np.testing.assert_allclose(enc.encode([short])[0], z[0], atol=1e-5)  # batch-independent
    np.testing.assert_array_equal(enc.encode([long]), enc.encode([long]))  # the random crop is seeded
    assert enc.encode([short], tokens=3).shape == (1, 3, enc.token_dim)


# ---------- sentence encoders ----------


def test_sentence_encoder_mean_pools_over_the_attention_mask(bert_dir):
    from transformers import AutoTokenizer, BertModel

    enc = load_encoder(str(bert_dir))
    assert (enc.modality, enc.dim, enc.sample_rate, enc.pooling) == ("text", 16, None, "mean")
    short, long = "a red circle", "the big blue square is on the small green triangle"
    z = enc.encode([short, long])
    assert z.shape == (2, 16) and z.dtype == np.float32
    np.testing.assert_allclose(enc.encode([short])[0], z[0], atol=1e-5)  # padding in the batch is ignored
    tok = AutoTokenizer.from_pretrained(bert_dir)
    model = BertModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        states = model(**tok([short], return_tensors="pt")).last_hidden_state[0].numpy()
    np.testing.assert_allclose(z[0], states.mean(axis=0), atol=1e-5)
    tokens = enc.encode([short, long], tokens=8)
    assert tokens.shape == (2, 8, 16)
    n_short = states.shape[0]  # [CLS] a red circle [SEP] = 5
    np.testing.assert_allclose(tokens[0, :n_short], states, atol=1e-5)
    assert np.all(tokens[0, n_short:] == 0)
    assert np.all(np.abs(tokens[1]).sum(axis=1) > 0)  # the long text fills all 8


def test_sentence_transformers_folder_declares_cls_and_normalize(bert_dir, tmp_path):
    folder = tmp_path / "st-model"
    shutil.copytree(bert_dir, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 16, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    enc = load_encoder(str(folder))
    assert enc.pooling == "cls"
    z = enc.encode(["a red circle", "the small square"])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    plain = load_encoder(str(bert_dir)).encode(["a red circle"], tokens=1)[0, 0]  # the [CLS] state
    np.testing.assert_allclose(z[0], plain / np.linalg.norm(plain), atol=1e-5)


def test_pooling_rules_of_hub_families(tmp_path):
    assert pooling_rule("BAAI/bge-small-en-v1.5").pooling == "cls"
    e5 = pooling_rule("intfloat/e5-small-v2")
    assert (e5.pooling, e5.normalize, e5.prefix) == ("mean", True, "query: ")
    assert pooling_rule("someone/other-model").pooling == "mean"
    folder = tmp_path / "e5-base-v2"
    folder.mkdir()
    assert pooling_rule(str(folder), folder).prefix == "query: "  # a downloaded folder keeps its family's prefix


# ---------- CLIP text ----------


def test_clip_folder_matches_clip_text_features_and_sd_tokens(clip_dir):
    from transformers import CLIPModel, CLIPTokenizer

    enc = load_encoder(str(clip_dir))
    assert (enc.modality, enc.dim, enc.token_dim, enc.sample_rate) == ("text", 12, 16, None)
    texts = ["a red circle", "the big blue square is on the small green triangle"]
    z = enc.encode(texts)
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        ref = model.get_text_features(**tok(texts[:1], return_tensors="pt"))
        ref = getattr(ref, "pooler_output", ref)
        ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
        padded = tok(texts[:1], padding="max_length", max_length=77, return_tensors="pt").input_ids
        sd_states = model.text_model(input_ids=padded).last_hidden_state[0].numpy()
    np.testing.assert_allclose(z[0], ref[0], atol=1e-5)
    tokens = enc.encode(texts, tokens=77)
    assert tokens.shape == (2, 77, 16)
    np.testing.assert_allclose(tokens[0], sd_states, atol=1e-5)  # what a Stable Diffusion UNet reads
    with pytest.raises(ValueError, match="at most 77"):
        enc.encode(texts, tokens=78)


def test_clip_text_tower_without_projection_in_a_pipeline_folder(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = _clip_tokenizer()
    torch.manual_seed(0)
    pipe = tmp_path / "tiny-sd"
    CLIPTextModel(CLIPTextConfig(**_clip_text_config(len(tok)))).save_pretrained(pipe / "text_encoder")
    tok.save_pretrained(pipe / "tokenizer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    enc = load_encoder(str(pipe))
    assert enc.dim == 16 and enc.pooling == "eos+l2"
    assert enc.encode(["a red circle"]).shape == (1, 16)
    assert enc.encode(["a red circle"], tokens=10).shape == (1, 10, 16)


# ---------- concatenation ----------


@pytest.mark.slow
def test_concat_encodes_both_at_their_rates_and_normalises_each(whisper_dir, clap_dir):
    enc = load_encoder(f"concat:{whisper_dir}+{clap_dir}")
    assert (enc.modality, enc.sample_rate, enc.dim) == ("audio", 16000, 16 + 16)
    clips = [_noise(0.5, 16000, 10), _noise(0.7, 16000, 11)]
    z = enc.encode(clips)
    assert z.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(z[:, :16], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(z[:, 16:], axis=1), 1.0, atol=1e-5)
    whisper_part = load_encoder(str(whisper_dir)).encode(clips)
    np.testing.assert_allclose(z[:, :16], whisper_part / np.linalg.norm(whisper_part, axis=1, keepdims=True), atol=1e-5)
    assert enc.encode(clips, tokens=3).shape == (2, 3, enc.token_dim)
    with pytest.raises(ValueError, match="concat:A\\+B"):
        load_encoder("concat:only-one")


# ---------- names, errors ----------


def test_table_holds_the_documented_names():
    for key in ("whisper-tiny.en", "all-MiniLM-L6-v2", "openai/whisper-", "laion/clap-htsat-", "openai/clip-vit-"):
        assert key in ENCODERS
    assert "BAAI/bge-" in ENCODERS and "intfloat/e5-" in ENCODERS and "concat:" in ENCODERS


def record_connections(monkeypatch) -> list:
    """Every address a socket of this process tries to connect to from now on (the connection still happens)."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(address[:2] if isinstance(address, tuple) else address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.mark.parametrize("name", ["no-such-org/no-such-model", "openai/whisper-nonexistent", "laion/clap-htsat-nope"])
def test_unknown_or_unfetchable_id_fails_fast_naming_it(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = record_connections(monkeypatch)
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder(name)
    assert attempts == []  # fast because offline mode never touches the network (no retries to wait out)
    msg = str(err.value)
    assert f"'{name}'" in msg and "offline" in msg and "\n" not in msg


def test_unreachable_hub_is_detected_by_one_quick_probe(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    hub_mod.hub_reachable.cache_clear()
    probes = []
    real_create_connection = hub_mod.socket.create_connection

    def probe(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        return real_create_connection(address, timeout, *args, **kwargs)

    monkeypatch.setattr(hub_mod.socket, "create_connection", probe)
    attempts = record_connections(monkeypatch)
    try:
        with pytest.raises(ModelUnavailableError, match="cannot load 'some-org/some-model': the machine is offline"):
            load_encoder("some-org/some-model")
        # fast because the only network use is one connection with a short timeout: no download retries
        assert probes == [(("127.0.0.1", 9), hub_mod.PROBE_TIMEOUT_S)] and hub_mod.PROBE_TIMEOUT_S <= 5
        assert attempts == [("127.0.0.1", 9)]
    finally:
        hub_mod.hub_reachable.cache_clear()


def test_bad_paths_and_inputs_give_clear_errors(tmp_path, whisper_dir, bert_dir):
    with pytest.raises(ModelUnavailableError, match="no such folder"):
        load_encoder(str(tmp_path / "missing" / "model"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailableError, match="is a file"):
        load_encoder(str(tmp_path / "weights.bin"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match="config.json"):
        load_encoder(str(empty))
    with pytest.raises(ValueError, match="non-empty"):
        load_encoder("  ")
    audio = load_encoder(str(whisper_dir))
    with pytest.raises(ValueError, match="NaN"):
        audio.encode([np.array([0.0, np.nan], np.float32)])
    with pytest.raises(ValueError, match="1-D"):
        audio.encode([np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match="0 samples"):
        audio.encode([np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="tokens"):
        audio.encode([_noise(0.1, 16000, 0)], tokens=0)
    with pytest.raises(ValueError, match="string"):
        load_encoder(str(bert_dir)).encode([b"bytes"])


# ---------- the real offline models ----------


def _espeak(text: str, path, voice: str = "en") -> np.ndarray:
    import librosa
    import soundfile as sf

    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    wave, rate = sf.read(str(path), dtype="float32")
    return librosa.resample(wave, orig_sr=rate, target_sr=16000).astype(np.float32)


@pytest.mark.slow
def test_offline_whisper_tiny_en_on_speech(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    enc = load_encoder("whisper-tiny.en")
    assert (enc.dim, enc.sample_rate, enc.modality) == (384, 16000, "audio")
    texts = ["a red circle", "a red circle", "a small blue triangle on a green background"]
    clips = [
        _espeak(t, tmp_path / f"{i}.wav", v) for i, (t, v) in enumerate(zip(texts, ["en", "en-us", "en"], strict=True))
    ]
    z = enc.encode(clips)
    assert z.shape == (3, 384) and np.all(np.isfinite(z))
    alone = enc.encode(clips[2:])
    np.testing.assert_allclose(alone[0], z[2], atol=1e-3 * np.abs(z).max())
    tokens = enc.encode(clips[:1], tokens=8)
    assert tokens.shape == (1, 8, 384)
    np.testing.assert_allclose(tokens[0].mean(axis=0), z[0], atol=0.05 * np.abs(z[0]).max())  # ~even segments


@pytest.mark.slow
def test_offline_minilm_paraphrases_are_closer_than_unrelated():
    enc = load_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert (enc.dim, enc.modality, enc.pooling) == (384, "text", "mean")
    z = enc.encode(["a red circle on a blue background", "a blue backdrop with a red circle", "the stock market fell"])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert z[0] @ z[1] > 0.5 and z[0] @ z[1] > z[0] @ z[2] + 0.3
    assert load_encoder("all-MiniLM-L6-v2").encode(["a red circle"]).shape == (1, 384)


def test_checkpoint_missing_weights_is_refused_but_an_unused_pooler_may_be_missing(bert_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(bert_dir / "model.safetensors"))
    no_pooler, no_layer = tmp_path / "no-pooler", tmp_path / "no-layer"
    for folder, drop in ((no_pooler, "pooler."), (no_layer, "encoder.layer.0.output.dense.")):
        shutil.copytree(bert_dir, folder)
        kept = {k: v for k, v in weights.items() if not k.startswith(drop)}
        assert len(kept) < len(weights)
        save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    text = "a red circle"
    np.testing.assert_allclose(load_encoder(str(no_pooler)).encode([text]), load_encoder(str(bert_dir)).encode([text]))
    with pytest.raises(ModelUnavailableError, match="lacks 2 weights"):
        load_encoder(str(no_layer))
