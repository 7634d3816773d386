"""The play page in a real browser: Debian's Chromium driven by Playwright, against a live uvicorn server."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from astra.serve.app import ServerConfig, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "out" / "screenshots"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(factory):
    import uvicorn

    port = free_port()
    app = create_app(factory, ServerConfig(port=port, target_fps=0))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", uv
    uv.should_exit = True
    thread.join(timeout=10)


def canvas_png(page, canvas_id: str) -> str:
    return page.evaluate(f"document.getElementById('{canvas_id}').toDataURL()")


def frames_after(page, key: str, count: int = 8) -> str:
    """Start from the same seed, hold `key` until `count` model frames were shown, return the canvas."""
    page.click("#start")
    page.wait_for_function("document.body.dataset.state === 'started'")
    page.evaluate("document.body.dataset.state = ''")
    start_count = int(page.inner_text("#count"))
    page.keyboard.down(key)
    page.wait_for_function(f"parseInt(document.getElementById('count').textContent) >= {start_count + count}", timeout=60000)
    page.keyboard.up(key)
    return canvas_png(page, "model")


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_play_page_in_chromium(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server[0])
        assert page.title() == "astra play"
        page.uncheck("#sbs")
        page.select_option("#world", "doom")
        page.fill("#seed", "0")
        before = canvas_png(page, "model")
        left = frames_after(page, "ArrowLeft")
        assert left != before, "key presses must produce new frames"
        right = frames_after(page, "ArrowRight")
        assert left != right, "turning left and turning right must produce different frames"
        assert float(page.inner_text("#fps")) > 0
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT_DIR / "play.png"))
        browser.close()
    assert not errors, errors


def test_the_page_shows_a_lost_connection_and_a_reset_before_start(server):
    """A closed connection and Reset before Start left the page silent; a second Start must not read as one."""
    from playwright.sync_api import sync_playwright

    url, uv = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(url)
        page.uncheck("#sbs")
        page.click("#reset")
        assert "press Start first" in page.inner_text("#error")
        for _ in range(2):  # the second Start closes the first connection on purpose
            page.click("#start")
            page.wait_for_function("document.body.dataset.state === 'started'")
        page.wait_for_timeout(300)
        assert page.inner_text("#error") == "" and page.evaluate("document.body.dataset.state") == "started"
        uv.should_exit = True
        page.wait_for_function("document.getElementById('error').textContent.includes('connection to the server closed')")
        browser.close()
