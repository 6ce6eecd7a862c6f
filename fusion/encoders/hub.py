"""Loading from a local folder or the Hugging Face hub, failing fast and clearly when the hub cannot be reached.

huggingface_hub retries an unreachable host for ~25 s before giving up; on an offline machine every wrong id would
cost that. So: a local folder loads directly; a hub id is first tried from the local cache only; then, unless offline
mode is on, one short TCP probe decides whether the hub is reachable at all before the real download.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fusion.errors import MissingModelError

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
PROBE_TIMEOUT_S = 3.0


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no network."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One TCP connection to the hub endpoint (HF_ENDPOINT or huggingface.co) with a short timeout."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError as err:
        log.debug("hub probe %s:%s failed: %s", host, port, err)
        return False


def unavailable(name: str, why: str | None = None) -> MissingModelError:
    """The one-line error for a model that cannot be loaded."""
    reason = why or "the machine is offline or the id is unknown"
    return MissingModelError(
        f"cannot load {name!r}: {reason}; download it on a machine with network and pass its folder"
    )


def local_folder(name: str) -> Path | None:
    """The folder `name` points at, None when it names no existing path, an error when it names a file."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MissingModelError(f"cannot load {name!r}: it is a file, not a model folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise MissingModelError(f"cannot load {name!r}: no such folder")
    return None


def from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name)` from a folder, the hub cache, or the hub; MissingModelError otherwise."""
    if local_folder(name) is not None:
        try:
            return cls.from_pretrained(str(Path(name).expanduser()), **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            raise MissingModelError(f"cannot load {name!r}: {str(err).splitlines()[0]}") from err
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        pass
    if offline_mode():
        raise unavailable(name, "offline mode is on (HF_HUB_OFFLINE) and it is not in the local cache")
    if not hub_reachable():
        raise unavailable(name, "the machine is offline (the hub cannot be reached) and it is not in the local cache")
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise unavailable(name, f"the hub refused it ({str(err).splitlines()[0]})") from err


def from_pretrained_strict(cls: Any, name: str, unused: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """Like `from_pretrained`, but a checkpoint that leaves weights of `cls` uninitialised is refused.

    Weights are read from safetensors only: a folder or hub id offering only a pickle (`.bin`) is refused.

    `unused`: name prefixes of weights we never read (e.g. BERT's pooler), allowed to be missing.
    """
    from transformers.utils import logging as hf_logging

    # transformers prints a table of unexpected keys (e.g. the text tower we skip); missing keys are checked here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = from_pretrained(cls, name, output_loading_info=True, use_safetensors=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if k and not k.startswith(unused)]
    if missing:
        shown = ", ".join(sorted(missing)[:3])
        raise MissingModelError(
            f"cannot load {name!r} as {cls.__name__}: the checkpoint lacks {len(missing)} weights ({shown}, ...)"
        )
    return model


def read_config(name: str) -> dict:
    """The config.json of a folder or hub id, as a dict (through the same fail-fast path)."""
    folder = local_folder(name)
    if folder is not None:
        path = folder / "config.json"
        if not path.is_file():
            raise MissingModelError(f"cannot load {name!r}: the folder has no config.json")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise MissingModelError(f"cannot load {name!r}: config.json is unreadable ({err})") from err
    from transformers import AutoConfig

    return from_pretrained(AutoConfig, name).to_dict()
