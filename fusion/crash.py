"""Deterministic crash points, so tests can ``kill -9`` a command at an exact place instead of after a sleep.

Long-running commands call ``maybe_crash("<name>")`` at the places where an interruption must be survivable
(after a training step, between writing a temp file and swapping it in, ...). With the environment variable
``FUSEMIX_CRASH_AT="train.step:7"`` the process sends itself SIGKILL at the 7th time it reaches ``train.step``:
no cleanup handler, ``finally`` block or buffered write runs, exactly as after a power cut or the OOM killer.
``FUSEMIX_CRASH_TRACE=<file>`` appends the name of every point reached to that file instead, so a test can list
the points of a whole run and pick one at random.

Both variables are read once, at import; unset (the normal case), ``maybe_crash`` returns at its first test.

Points: ``atomic.replace`` (``fusion.cache.atomic_write_bytes``: temp file written, not yet swapped in),
``extract.shard`` (shard file written, not yet recorded), ``extract.finalize`` (manifest written, progress files
not yet removed), ``train.step``, ``translator.step`` (an optimizer step taken, not yet checkpointed),
``checkpoint.write`` (checkpoint complete in its temp folder), ``checkpoint.swap`` (old checkpoint moved aside,
new one not yet in place), ``checkpoint.swapped`` (new one in place, old one not yet removed), ``batch.clip`` (a clip's images written, not yet recorded in results.jsonl).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

CRASH_AT = "FUSEMIX_CRASH_AT"
CRASH_TRACE = "FUSEMIX_CRASH_TRACE"


def parse_spec(spec: str | None) -> tuple[str, int] | None:
    """``"point:N"`` -> ``("point", N)`` (N >= 1; a bare ``"point"`` means its first occurrence); None if unset."""
    if not spec:
        return None
    point, _, count = spec.rpartition(":") if ":" in spec else (spec, ":", "1")
    if not point or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{CRASH_AT} must look like 'point:N' with N >= 1, got {spec!r}")
    return point, int(count)


_AT = parse_spec(os.environ.get(CRASH_AT))
_TRACE = os.environ.get(CRASH_TRACE) or None
_seen: Counter[str] = Counter()


def maybe_crash(point: str) -> None:
    """Kill this process with SIGKILL if ``FUSEMIX_CRASH_AT`` names this occurrence of ``point``; else nothing."""
    if _AT is None and _TRACE is None:
        return
    _seen[point] += 1
    if _TRACE is not None:
        with Path(_TRACE).open("a", encoding="utf-8") as f:
            f.write(point + "\n")
    if _AT == (point, _seen[point]):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
