"""The `fusemix` command: dispatches to one module per subcommand.

fusemix extract --encoder whisper-tiny.en --manifest clips.jsonl --out latents/audio
fusemix --help
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys

from fusion.errors import FusemixError, InputError

# subcommand -> (module with a main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("fusemix.extract", "encode audio or captions once and cache the latents on disk"),
    "hard-negatives": ("fusemix.hard_negatives", "captions with two same-class words swapped, as extra negatives"),
    "train": ("fusemix.train", "train FuseMix adapters on cached latents"),
    "eval": ("fusemix.evaluate", "audio-text retrieval benchmark (R@1/5/10, mAP@10)"),
    "train-translator": ("fusemix.train_translator", "train the shared-space -> image-conditioning translator"),
    "generate": ("fusemix.generate", "turn audio files into images"),
    "batch": ("fusemix.batch", "turn a folder or manifest of audio into images, resumably"),
    "ui": ("fusemix.ui", "start the Gradio app"),
    "demo": ("fusemix.demo", "the demo world: build, build-neural, judge, train-image-model, make-default, run"),
}


def usage() -> str:
    lines = ["usage: fusemix COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `fusemix COMMAND --help` for a command's options. FUSEMIX_DEBUG=1 shows tracebacks."]
    return "\n".join(lines)


def quiet_model_loading() -> None:
    """Hide transformers'/diffusers' per-weight loading bars; our own bars show progress on long work."""
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        sys.modules["diffusers"].utils.logging.disable_progress_bar()


def check_count(flag: str, value: int | None, minimum: int = 1) -> None:
    """A count option (``--steps``, ``--batch-size``, ...) below ``minimum`` is a one-line error naming the flag."""
    if value is not None and value < minimum:
        raise InputError(f"{flag} must be at least {minimum}, got {value}")


def check_number(flag: str, value: float | None, low: float = 0.0, high: float = math.inf) -> None:
    """A real-valued option must be finite and in ``[low, high]`` (NaN and inf are refused)."""
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        bounds = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise InputError(f"{flag} must be a finite number {bounds}, got {value}")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors (``FusemixError``) become one line on stderr and exit code 1.

    Any other exception is a bug and keeps its traceback; ``FUSEMIX_DEBUG=1`` shows tracebacks of user errors too.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fusemix: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # per-file/per-weight loading bars: noise here
    logging.basicConfig(level=os.environ.get("FUSEMIX_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    quiet_model_loading()
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print("fusemix: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130
    except FusemixError as err:
        if os.environ.get("FUSEMIX_DEBUG"):
            raise
        print(f"fusemix {name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
