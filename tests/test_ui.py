"""The Gradio app: handler behaviour on a fake pipeline, then the real app driven in headless Chromium.

The browser test starts `fusemix ui` (shipped demo model) on a free port, uploads a file that is not audio
(error in the page, no traceback), then an example clip (images + captions table), and generates again to show
the app still serves. Its screenshot goes to test-artifacts/ui.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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
# Generous: CI machines are shared; on an idle 2-core machine the whole test takes well under a minute.
STARTUP_S = 180
STEP_MS = 120_000


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
    assert handler.pipeline.calls[-1]["seed"] == 11 and handler.pipeline.calls[-1]["text"] is None


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


@pytest.fixture
def app_url(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (scripts/system-deps.sh installs chromium)")
    pytest.importorskip("generator.audio_to_image", reason="generator.audio_to_image (the real pipeline) missing")
    port = free_port()
    log_path = tmp_path / "ui.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fusemix", "ui", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"fusemix ui exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"fusemix ui did not answer in {STARTUP_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


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


def upload(page, path: Path) -> None:
    clear = page.locator("#audio button[aria-label='Clear']")
    if clear.count():
        clear.click()
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
    from playwright.sync_api import sync_playwright

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
            assert page.locator("text=an image of a large black square against white").count() == 1  # examples

            # a file that is not audio: one line in the page, no traceback
            upload(page, bad)
            page.click("#generate")
            toast = page.locator(".toast-body", has_text="notes.wav")
            toast.wait_for()
            assert "Traceback" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "ui-error.png"))
            page.locator(".toast-close").first.click()

            # an example clip: an image and the captions table
            upload(page, CLIP)
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
