"""`viztools present 3` in headless Chromium: lecture 03 as a Voila app on GlyphNet. Prose and figures show, no code
cell does, the occlusion widget is live (a moved slider redraws the heatmap), no JavaScript error, no request
leaves the machine (our template drops Voila's Font Awesome CDN links), and the server stops with its process group.

Run with ``pytest -m browser tests/browser/test_present.py``; skipped where /usr/bin/chromium is absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest
from lab_scripts import IMAGE_DIGEST, raise_slider
from servers import free_port, stop_session

from viztools.course import write_course

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(os.name != "posix", reason="stops the server through its process group (POSIX)")]

START_TIMEOUT = 60.0


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def presented(tmp_path):
    """`viztools present 3` on a course written into a fresh folder, GlyphNet (no ImageNet weights folder)."""
    write_course(tmp_path / "course")
    port, token = free_port(), "present-test-token"
    env = {k: v for k, v in os.environ.items() if k != "VIZTOOLS_WEIGHTS_DIR"}
    env.update(OMP_NUM_THREADS="1", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), VIZTOOLS_OFFLINE="1")
    log = tmp_path / "present.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "viztools", "present", "3", str(tmp_path / "course"), "--port", str(port),
             "--ip", "127.0.0.1", "--token", token, "--no-browser"],
            stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(port):
            assert process.poll() is None, f"viztools present exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no server after {START_TIMEOUT:g} s:\n{log.read_text()}"
            time.sleep(0.25)
        url = f"http://127.0.0.1:{port}/?token={token}"
        assert url in log.read_text()
        yield url, log
    finally:
        stop_session(process)


def test_present_shows_lecture_03_as_a_live_app(chromium_browser, presented, screenshot_dir):
    url, log = presented
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors, outside = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("request", lambda request: outside.append(request.url)
            if urlparse(request.url).hostname not in ("127.0.0.1", None) and not request.url.startswith(
                ("data:", "blob:")) else None)
    try:
        page.goto(url, timeout=180_000)
        summary = page.locator(".viztools-occlusion .viztools-summary").last
        page.wait_for_function(
            "() => [...document.querySelectorAll('.viztools-occlusion .viztools-summary')]"
            ".some(node => node.textContent.includes('full map'))", timeout=180_000)

        text = page.inner_text("body")
        assert "Occlusion: where does the network look?" in text  # the prose
        assert page.locator(".jp-OutputArea-output img").count() >= 2  # the lecture's figures
        assert "def occlusion_by_hand" not in text and "torch.manual_seed" not in text  # and no code
        assert page.locator(".jp-InputArea-editor, .cm-editor, .jp-InputPrompt").count() == 0

        explorer = page.locator(".viztools-occlusion").last
        explorer.scroll_into_view_if_needed()
        assert explorer.locator(".viztools-error").count() == 0
        image = explorer.locator("img.widget-image").first
        before = image.evaluate(IMAGE_DIGEST)
        _, new_patch = raise_slider(page, explorer, "patch size")
        page.wait_for_function("([node, patch]) => node.textContent.includes('full map')"
                               " && node.textContent.includes(`patch ${patch} px`)",
                               arg=[summary.element_handle(), new_patch], timeout=60_000)
        assert image.evaluate(IMAGE_DIGEST) != before  # the kernel behind the app recomputed the heatmap
        assert explorer.locator(".viztools-error").count() == 0

        page.screenshot(path=str(screenshot_dir / "present_03.png"))
        assert not errors, f"JavaScript errors: {errors}\nserver log:\n{log.read_text()[-3000:]}"
        assert not outside, f"requests that left the machine: {outside}"
    finally:
        context.close()
