"""Fixtures for real browser tests: a JupyterLab server on loopback and headless Debian Chromium via Playwright.

The server runs with the Python that runs the tests (so the kernel sees this checkout's viztools), a random
token, throw-away workspace and settings folders (the "Jupyter news" toast is switched off), and the same
``VIZTOOLS_WEIGHTS_DIR`` as the notebook tests (``make test`` exports the shared ImageNet weights folder; when the
variable is unset, the shared folder if it exists, else empty so lectures fall back to GlyphNet). Screenshots go
to ``test-output/browser/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT_DIR = REPO / "test-output" / "browser"
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "squeezenet1_0_imagenet_fp16.pth"


def shared_weights_dir() -> str:
    """The folder of the shared ImageNet weights as tests/conftest.py finds them, or "" where they are absent."""
    candidate = Path(os.environ.get("VIZTOOLS_TEST_WEIGHTS", SHARED_WEIGHTS))
    return str(candidate.parent) if candidate.is_file() else ""


@dataclass
class LabServer:
    url: str
    token: str
    log: Path

    def api(self, method: str, path: str) -> object:
        """Call the server's REST API; returns the decoded JSON (None for an empty answer)."""
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def notebook_url(self, relative_path: str) -> str:
        """A fresh workspace each time: a reused one restores old tabs and starts extra kernels."""
        return f"{self.url}/lab/workspaces/{uuid.uuid4().hex}/tree/{relative_path}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's browser with `apt-get install -y chromium`")
    pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    return CHROMIUM


@pytest.fixture(scope="session")
def lab_server(chromium_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    folder = tmp_path_factory.mktemp("jupyterlab")
    settings = folder / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    # Render every cell (no virtual scrolling), so widgets far down the notebook are in the DOM.
    notebook_settings = folder / "settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True)
    (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces"),
        "VIZTOOLS_WEIGHTS_DIR": os.environ.get("VIZTOOLS_WEIGHTS_DIR", shared_weights_dir()),
        "VIZTOOLS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
    }
    port, token = free_port(), secrets.token_hex(16)
    log = folder / "server.log"
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--ServerApp.root_dir={REPO}",
        f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
        f"--LabApp.workspaces_dir={folder / 'workspaces'}",
    ]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    server = LabServer(url=f"http://127.0.0.1:{port}", token=token, log=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.api("GET", "/api/status")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start; its log:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(OSError):
            server.shutdown_kernels()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def chromium_browser(chromium_path: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def lab_page(chromium_browser: object, lab_server: LabServer) -> Iterator[object]:
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
        lab_server.shutdown_kernels()


@pytest.fixture
def screenshot_dir() -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR
