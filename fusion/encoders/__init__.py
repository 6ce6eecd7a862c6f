"""Frozen unimodal encoders, plug and play: a name in, an `Encoder` out.

`ENCODERS` is the one table from a name (or a hub id prefix such as "openai/whisper-") to its loader. Names that are
neither in it nor prefixed by one of its keys are local folders or hub ids; their config.json decides the family
(whisper, clap, clip, or a sentence encoder). `concat:A+B` concatenates two audio encoders; `A-transcript` (e.g.
`whisper-tiny.en-transcript`) reads Whisper A's greedy transcript with MiniLM.

    >>> enc = load_encoder("whisper-tiny.en")
    >>> enc.encode([waveform_16k]).shape     # (1, 384)
"""

from __future__ import annotations

from collections.abc import Callable

from fusion.encoders.base import Encoder
from fusion.encoders.clap import load_clap
from fusion.encoders.clip_text import load_clip_text
from fusion.encoders.concat import PREFIX as CONCAT_PREFIX
from fusion.encoders.concat import ConcatEncoder, split_concat_name
from fusion.encoders.hub import local_folder, read_config
from fusion.encoders.text import load_minilm, load_sentence_encoder
from fusion.encoders.transcript import SUFFIX as TRANSCRIPT_SUFFIX
from fusion.encoders.transcript import load_transcript_encoder
from fusion.encoders.whisper import (
    CT2WhisperEncoder,
    is_ct2_folder,
    load_hf_whisper,
    load_whisper_tiny_en,
    load_whisper_tiny_en_10s,
)
from fusion.errors import InputError, MissingModelError, ModelUnavailableError

TRANSCRIPT_TEXT_ENCODER = "all-MiniLM-L6-v2"  # reads the transcripts of `<whisper>-transcript` encoders

__all__ = ["ENCODERS", "Encoder", "MissingModelError", "ModelUnavailableError", "load_encoder"]


def _load_concat(name: str, device: str = "cpu") -> Encoder:
    first, second = split_concat_name(name)
    return ConcatEncoder(name, load_encoder(first, device), load_encoder(second, device))


def _load_transcript(name: str, device: str = "cpu") -> Encoder:
    """``A-transcript``: Whisper A's greedy transcript read by MiniLM (the demo's text encoder)."""
    return load_transcript_encoder(name, load_encoder(TRANSCRIPT_TEXT_ENCODER, device), device)


def _load_by_config(name: str, device: str = "cpu") -> Encoder:
    """A folder or hub id whose family is read from its config."""
    folder = local_folder(name)
    if folder is not None and (folder / "model_index.json").is_file():
        return load_clip_text(name, device)
    if folder is not None and is_ct2_folder(folder):
        return CT2WhisperEncoder(name, folder, device=device)
    model_type = read_config(name).get("model_type", "")
    if model_type == "whisper":
        return load_hf_whisper(name, device)
    if model_type in ("clap", "clap_audio_model"):
        return load_clap(name, device)
    if model_type in ("clip", "clip_text_model"):
        return load_clip_text(name, device)
    return load_sentence_encoder(name, device)


# Name or hub-id prefix -> loader(name, device). Exact names win over prefixes; the longest prefix wins.
ENCODERS: dict[str, Callable[..., Encoder]] = {
    "whisper-tiny.en": load_whisper_tiny_en,
    "whisper-tiny.en-10s": load_whisper_tiny_en_10s,
    "whisper-tiny.en-transcript": _load_transcript,
    "all-MiniLM-L6-v2": load_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": load_minilm,
    "openai/whisper-": load_hf_whisper,
    "laion/clap-htsat-": load_clap,
    "laion/larger_clap_": load_clap,
    "openai/clip-vit-": load_clip_text,
    "BAAI/bge-": load_sentence_encoder,
    "intfloat/e5-": load_sentence_encoder,
    "intfloat/multilingual-e5-": load_sentence_encoder,
    "sentence-transformers/": load_sentence_encoder,
    CONCAT_PREFIX: _load_concat,
}


def load_encoder(name: str, device: str = "cpu") -> Encoder:
    """The encoder called `name` (table key, hub id, folder, or `concat:A+B`), frozen and in eval mode.

    Raises MissingModelError naming the model when it cannot be loaded (unknown id, offline, broken folder).
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"encoder name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name in ENCODERS:
        return ENCODERS[name](name, device)
    if name.startswith(CONCAT_PREFIX):
        return _load_concat(name, device)
    if name.endswith(TRANSCRIPT_SUFFIX):  # a CTranslate2 Whisper folder + "-transcript"
        return _load_transcript(name, device)
    if local_folder(name) is not None:
        return _load_by_config(name, device)
    prefixes = sorted((k for k in ENCODERS if name.startswith(k)), key=len, reverse=True)
    if prefixes:
        return ENCODERS[prefixes[0]](name, device)
    return _load_by_config(name, device)
