"""An audio latent that knows what was said: Whisper's own greedy transcript read by a frozen text encoder.

Whisper's encoder states carry the sound; its decoder carries a language model they lack. This encoder runs the
decoder (greedy, CTranslate2), then gives the transcript's sentence vector or token states from the text encoder
(MiniLM by default). Alone (``whisper-tiny.en-transcript``) it is a learnable version of the ASR cascade; beside the
encoder states (``concat:whisper-tiny.en-10s+whisper-tiny.en-transcript``) FuseMix learns what to trust.

    >>> enc = load_encoder("whisper-tiny.en-transcript")
    >>> enc.encode([waveform_16k], tokens=32).shape      # (1, 32, 384): MiniLM token states of the transcript
    >>> enc.last_transcripts                              # what it heard, for inspection
"""

from __future__ import annotations

import numpy as np

from fusion.encoders.base import Encoder, check_tokens, check_waveforms, l2_normalize

SUFFIX = "-transcript"
# Decoding that gives one transcript per clip whatever the batch: greedy, as Whisper decodes by default.
BEAM_SIZE = 1
# Clips that fit in 10 s (padded) are decoded over a 10 s window: ~3x faster on CPU, and a lower WER on the demo
# world's test clips (0.27 against 0.34 greedy, BENCHMARKS.md); longer clips get Whisper's 30 s.
SHORT_WINDOW_S = 10.0


class TranscriptEncoder:
    """Audio in, the text encoder's latents of Whisper's greedy transcript out."""

    modality = "audio"
    sample_rate = 16_000

    def __init__(self, name: str, transcriber, text: Encoder) -> None:
        if text.modality != "text":
            raise ValueError(f"{name}: the transcript reader must be a text encoder, {text.name!r} is {text.modality}")
        self.name = name
        self.transcriber = transcriber
        self.text = text
        self.dim = text.dim
        self.token_dim = text.token_dim
        self.pooling = f"{text.pooling} of the greedy transcript ({text.name}), l2"
        self.last_transcripts: list[str] = []

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        """(B, dim) sentence vectors, or (B, tokens, token_dim) token states, of each clip's transcript, L2-normalised
        (each token; padding stays zero), so it equals its own part of a ``concat:`` latent."""
        check_tokens(tokens)
        waves = check_waveforms(batch, self.name)
        if not waves:
            return np.zeros((0, self.dim) if tokens is None else (0, tokens, self.token_dim), np.float32)
        texts = self.transcriber.transcribe_waves(waves)
        self.last_transcripts = texts
        # silence gives an empty transcript; the text encoder reads it as a space, which names nothing
        return l2_normalize(self.text.encode([t if t.strip() else " " for t in texts], tokens=tokens))


def load_transcript_encoder(name: str, text: Encoder, device: str = "cpu") -> TranscriptEncoder:
    """``<asr model>-transcript`` read by ``text``: the offline ``whisper-tiny.en`` or a CTranslate2 Whisper folder."""
    from fusion.encoders.whisper_asr import AsrSettings, Transcriber

    asr_model = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    transcriber = Transcriber(
        AsrSettings(model=asr_model, beam_size=BEAM_SIZE, short_window_s=SHORT_WINDOW_S), device=device
    )
    return TranscriptEncoder(name, transcriber, text)
