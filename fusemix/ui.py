"""`fusemix ui`: serve the Gradio app (upload or record a sound, get images and the captions it is nearest to).

    fusemix ui                                   # http://127.0.0.1:7860, shipped demo model, works offline
    fusemix ui --port 8080 --max-file-mb 5
    fusemix ui --preset sd-turbo --device cuda   # a real image model (needs it downloaded)
    fusemix ui --host 0.0.0.0                    # reachable from other machines: only on a network you trust

The model is loaded once, before the server starts. Requests queue and run one at a time (--concurrency).
There is no public share link.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

from fusion.errors import InputError

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class UIConfig:
    """How to serve the app."""

    host: str = "127.0.0.1"  # interface to bind; loopback unless asked
    port: int = 7860  # TCP port
    preset: str = "demo"  # "demo" (shipped, offline), a checkpoint folder, or a real model preset
    device: str = "cpu"  # torch device
    max_file_mb: float = 10.0  # largest upload accepted
    concurrency: int = 1  # generations running at once (the pipeline is shared)
    queue_size: int = 32  # waiting requests beyond which users are told the queue is full


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusemix ui", description="Serve the Gradio app.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--preset", default="demo", help="model: demo (shipped, offline), a folder, sd15, sd-turbo")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--max-file-mb", type=float, default=10.0, help="largest upload in MB (default 10)")
    parser.add_argument("--concurrency", type=int, default=1, help="generations at once (default 1)")
    parser.add_argument("--queue-size", type=int, default=32, help="most requests waiting (default 32)")
    return parser


def parse_config(argv: list[str] | None) -> UIConfig:
    args = build_parser().parse_args(argv)
    config = UIConfig(**vars(args))
    if not 0 < config.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {config.port}")
    if config.max_file_mb <= 0:
        raise InputError(f"--max-file-mb must be positive, got {config.max_file_mb:g}")
    if config.concurrency < 1 or config.queue_size < 1:
        raise InputError("--concurrency and --queue-size must be at least 1")
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no telemetry calls
    from generator.audio_to_image import AudioToImagePipeline

    log.info("loading the %s pipeline on %s", config.preset, config.device)
    pipeline = AudioToImagePipeline.from_preset(config.preset, device=config.device)  # a bad preset fails here
    from ui.app import EXAMPLES, build_app  # gradio: imported once the model is known to load

    app = build_app(pipeline, max_file_mb=config.max_file_mb)
    app.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    if config.host not in LOCAL_HOSTS:
        log.warning("serving on %s: anyone who can reach this machine can use the app", config.host)
    app.launch(
        server_name=config.host,
        server_port=config.port,
        share=False,
        max_file_size=int(config.max_file_mb * 1024 * 1024),
        allowed_paths=[str(EXAMPLES)] if EXAMPLES.is_dir() else None,
        show_error=False,
        quiet=True,  # gradio's banner suggests share=True, which this command does not offer
        prevent_thread_lock=True,
    )
    print(f"fusemix ui: serving on {app.local_url} (Ctrl-C stops)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
