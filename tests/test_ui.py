"""The Gradio app: handler behaviour on a fake pipeline, then the real app driven in headless Chromium.

The browser test starts `fusemix ui` (shipped demo model) on a free port, uploads a file that is not audio
(error in the page, no traceback), then an example clip (images + captions table), and generates again to show
the app still serves. Its screenshot goes to test-artifacts/ui.png.

The load test starts `fusemix ui` on a gated fake pipeline with a small queue and sends many requests at once through
`gradio_client`: each gets its images or "queue is full", the server keeps serving and its memory stays bounded.

No test here waits on the clock: the server says when it serves (a line on its stdout), the browser steps use
Playwright's auto-waiting, and the fake pipeline of the load test reports each call and holds it until told to go.
Deadlines are safety nets against a hung process, never the thing waited for.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures
from pathlib import Path

import pytest

from generator.records import clip_seed
from tests.fake_audio_to_image import EXAMPLES, FakeAudioToImagePipeline, install_if_missing

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLIP = EXAMPLES / "small_blue_square_on_purple.ogg"
# Safety nets against a hung process, not waits: each wait ends as soon as its condition holds. Generous, because
# on a shared 2-core machine at load 15 starting `fusemix ui` with the demo model took over 3 minutes (idle: ~20 s).
STARTUP_S = 900
STEP_MS = 300_000


# ---------- the handler, on a fake pipeline (fast) ----------


@pytest.fixture
def handler(monkeypatch):
    pytest.importorskip("gradio")
    install_if_missing(monkeypatch)
    from ui.app import Generator

    return Generator(FakeAudioToImagePipeline())


def call(handler, audio, **kw):
    args = {
        "text": "",
        "text_weight": 0.5,
        "mode": "translate",
        "steps": 4,
        "guidance": 3.0,
        "seed": 11,
        "random_seed": False,
        "num_images": 2,
    }
    args.update(kw)
    return handler.generate(audio, **args)


def test_handler_returns_upscaled_images_captions_and_timings(handler):
    images, heard, info = call(handler, str(CLIP))
    assert len(images) == 2 and all(im.size == (256, 256) for im in images)
    assert heard and all(isinstance(c, str) and isinstance(s, float) for c, s in heard)
    assert "seed 11" in info and " s" in info
    # one seed rule (generator.records.clip_seed): the seed and the file's name, as in fusemix generate/batch
    assert (
        handler.pipeline.calls[-1]["seed"] == [clip_seed(11, CLIP.stem)] and handler.pipeline.calls[-1]["text"] is None
    )


def test_handler_random_seed_text_and_retrieve(handler):
    call(handler, str(CLIP), random_seed=True)
    call(handler, str(CLIP), random_seed=True)
    seeds = [c["seed"] for c in handler.pipeline.calls]
    assert seeds[0] != seeds[1]
    _, _, info = call(handler, str(CLIP), text="  a red circle ", mode="retrieve")
    assert handler.pipeline.calls[-1]["text"] == "a red circle"
    assert "prompt used" in info


def test_handler_turns_bad_input_into_a_one_line_page_error(handler, tmp_path):
    import gradio as gr

    with pytest.raises(gr.Error, match="Upload a clip"):
        call(handler, None)
    bad = tmp_path / "upload-dir" / "notes.wav"
    bad.parent.mkdir()
    bad.write_text("not audio <script>")
    with pytest.raises(gr.Error) as err:
        call(handler, str(bad))
    message = str(err.value)
    assert "notes.wav" in message and str(bad.parent) not in message  # the user's file name, not the temp path
    assert "<script>" not in message and "\n" not in message
    with pytest.raises(gr.Error, match="mode"):
        call(handler, str(CLIP), mode="paint")


def test_handler_hides_unexpected_errors(handler, monkeypatch):
    import gradio as gr

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(handler, "pipeline", boom)
    with pytest.raises(gr.Error) as err:
        call(handler, str(CLIP))
    assert "RuntimeError" in str(err.value) and "secret internals" not in str(err.value)


def test_cli_refuses_bad_settings():
    from fusemix.ui import parse_config

    assert parse_config([]).host == "127.0.0.1"
    with pytest.raises(ValueError, match="--port"):
        parse_config(["--port", "70000"])
    with pytest.raises(ValueError, match="--max-file-mb"):
        parse_config(["--max-file-mb", "0"])


# ---------- the real app in a browser ----------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `fusemix ui` child process whose output is logged to a file and read line by line as it comes."""

    def __init__(self, args: list[str], log_path: Path, stdin: bool = False):
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with self.log_path.open("w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output: the process is gone

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]

    def wait_for(self, prefix: str, safety_s: float = STARTUP_S) -> str:
        """The next output line starting with `prefix` (earlier lines are skipped); fails if the process ends first."""
        deadline = time.monotonic() + safety_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line {prefix!r} from the server within {safety_s} s:\n{self.log()}")
            if line is None:
                self.process.wait()
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log()}")
            if line.startswith(prefix):
                return line

    def serve_url(self) -> str:
        """Wait until `fusemix ui` says it serves, check that it answers, and return its URL."""
        url = self.wait_for("fusemix ui: serving on ").split("serving on ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=STEP_MS / 1000) as answer:
            assert answer.status == 200
        return url

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join()
        if self.process.stdin:
            self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def app_url(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (scripts/system-deps.sh installs chromium)")
    pytest.importorskip("generator.audio_to_image", reason="generator.audio_to_image (the real pipeline) missing")
    server = Server(["-m", "fusemix", "ui", "--port", str(free_port())], tmp_path / "ui.log")
    try:
        yield server.serve_url()
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text(), server.log()


def generate_and_wait(page, previous_info: str) -> str:
    """Click Generate and wait until the info line changes (a new result arrived); return it."""
    page.click("#generate")
    page.wait_for_function(
        "prev => { const e = document.querySelector('#info'); return e && e.innerText.includes('seed') "
        "&& e.innerText !== prev; }",
        arg=previous_info,
        timeout=STEP_MS,
    )
    return page.locator("#info").inner_text()


def upload(page, path: Path, replace: bool = False) -> None:
    """Put a file in the audio input; `replace`: one is there already (cleared first, waiting for its button)."""
    if replace:
        page.locator("#audio button[aria-label='Clear']").click()
    page.locator("#audio input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#audio button[aria-label='Clear']", timeout=STEP_MS)


@pytest.mark.slow
@pytest.mark.browser
def test_app_in_browser(app_url, tmp_path):
    drive(app_url, tmp_path)
    if os.environ.get("FUSEMIX_UPDATE_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "ui.png", ROOT / "docs" / "ui.png")


def drive(app_url: str, tmp_path: Path) -> None:
    """The browser session: bad upload, good upload, generate twice."""
    from playwright.sync_api import expect, sync_playwright

    bad = tmp_path / "notes.wav"
    bad.write_text("these are meeting notes, not a recording")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(STEP_MS)
            page.goto(app_url)
            page.wait_for_selector("#generate")
            expect(page.locator("text=an image of a large black square against white")).to_have_count(1)  # examples

            # a file that is not audio: one line in the page, no traceback
            upload(page, bad)
            page.click("#generate")
            toast = page.locator(".toast-body", has_text="notes.wav")
            toast.wait_for()
            assert "Traceback" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "ui-error.png"))
            page.locator(".toast-close").first.click()

            # an example clip: an image and the captions table
            upload(page, CLIP, replace=True)
            info = generate_and_wait(page, "")
            image = page.locator("#gallery img").first
            image.wait_for()
            width = page.wait_for_function(
                "() => { const i = document.querySelector('#gallery img'); return i && i.complete && i.naturalWidth; }"
            ).json_value()
            assert width >= 32
            rows = page.wait_for_function(
                "() => { const rows = [...document.querySelectorAll('#heard [role=row][data-index]')]"
                ".map(r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.innerText.trim()));"
                " return rows.length && rows.every(r => r.length === 2 && r[0] && r[1]) && rows; }"
            ).json_value()
            assert len(rows) >= 3, rows
            scores = [float(score) for _, score in rows]
            assert all(-1.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True), rows
            assert "seed" in info
            page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)

            # the app still serves: generate again, new seed, new result
            again = generate_and_wait(page, info)
            assert again != info
        finally:
            browser.close()


# ---------- many requests at once ----------

GATED_SERVER = """
import sys, threading, types
sys.path.insert(0, {root!r})
from tests.fake_audio_to_image import FakeAudioToImagePipeline, FakeOutput, upscale

class GatedPipeline(FakeAudioToImagePipeline):
    '''The fake pipeline; each call says it started, then waits while the test holds the gate closed.'''

    gate = threading.Event()

    @classmethod
    def from_preset(cls, preset="demo", device="cpu"):
        return cls()

    def __call__(self, audio, **kwargs):
        print("fake: entered", flush=True)
        self.gate.wait()
        return super().__call__(audio, **kwargs)

def control():
    for line in sys.stdin:  # the test writes "close" / "open"
        GatedPipeline.gate.clear() if line.strip() == "close" else GatedPipeline.gate.set()
        print("fake: gate", line.strip(), flush=True)

GatedPipeline.gate.set()
threading.Thread(target=control, daemon=True).start()
module = types.ModuleType("generator.audio_to_image")
module.AudioToImagePipeline, module.AudioToImageOutput, module.upscale = GatedPipeline, FakeOutput, upscale
sys.modules["generator.audio_to_image"] = module
from fusemix.ui import main
sys.exit(main(["--port", "{port}", "--queue-size", "{queue_size}", "--concurrency", "1"]))
"""
QUEUE_SIZE = 2
BURST = 12  # requests sent at once while one is running: QUEUE_SIZE wait, the rest are told the queue is full
ROUNDS = 3
RSS_GROWTH_MB = 150  # a leak of the images, uploads or jobs of 3 x 12 requests would pass this easily


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@pytest.fixture
def gated_server(tmp_path):
    pytest.importorskip("gradio_client")
    if not Path("/proc/self/status").exists():
        pytest.skip("reads memory from /proc (Linux)")
    script = GATED_SERVER.format(root=str(ROOT), port=free_port(), queue_size=QUEUE_SIZE)
    server = Server(["-c", script], tmp_path / "ui-load.log", stdin=True)
    try:
        url = server.serve_url()
        yield server, url
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text(), server.log()


def submit(client, **kw):
    from gradio_client import handle_file

    args = dict(text="", text_weight=0.5, mode="translate", steps=4, guidance=3.0, seed=1, random_seed=True)
    args.update(num_images=2, **kw)
    return client.submit(handle_file(str(CLIP)), *args.values(), api_name="/generate")


def assert_images(result) -> None:
    gallery, heard, info = result
    assert len(gallery) == 2 and all(Path(item["image"]).stat().st_size > 0 for item in gallery), gallery
    assert heard["data"] and "seed" in info


def burst(server: Server, client) -> tuple[int, int]:
    """One round: hold a request in the pipeline, send BURST more at once, let them all run; (served, refused)."""
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    server.send("close")
    server.wait_for("fake: gate close")
    running = submit(client)
    server.wait_for("fake: entered")  # it left the queue: the queue is empty and the pipeline busy
    jobs = [submit(client) for _ in range(BURST)]
    futures = [job.future for job in jobs]
    refused: set[Future] = set()
    while len(refused) < BURST - QUEUE_SIZE:  # the refusals come back while the gate is still closed
        done, _ = wait_futures(set(futures) - refused, timeout=STEP_MS / 1000, return_when=FIRST_COMPLETED)
        assert done, f"{len(refused)} refusals after {STEP_MS / 1000} s:\n{server.log()}"
        for future in done:
            with pytest.raises(QueueError, match="[Qq]ueue is full"):
                future.result()
        refused |= done
    server.send("open")
    served = 0
    for job in [running, *jobs]:
        if job.future in refused:
            continue
        try:
            assert_images(job.result(timeout=STEP_MS / 1000))
        except (QueueError, AppError) as err:  # a failure here is a bug: say which one
            pytest.fail(f"an accepted request failed: {err!r}\n{server.log()}")
        served += 1
    return served, len(refused)


@pytest.mark.slow
def test_many_requests_at_once_get_images_or_queue_full(gated_server):
    from gradio_client import Client

    server, url = gated_server
    client = Client(url, verbose=False, analytics_enabled=False)
    assert_images(submit(client).result(timeout=STEP_MS / 1000))  # warm: first-call imports and caches
    before = rss_mb(server.process.pid)
    for _ in range(ROUNDS):
        assert burst(server, client) == (1 + QUEUE_SIZE, BURST - QUEUE_SIZE)
    assert_images(submit(client).result(timeout=STEP_MS / 1000))  # still serving
    after = rss_mb(server.process.pid)
    assert after - before < RSS_GROWTH_MB, f"server RSS grew from {before:.0f} MB to {after:.0f} MB"
    assert server.process.poll() is None
