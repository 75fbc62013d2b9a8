"""`viztools lab`: the real server starts (also as root), serves lecture 00 (of the clone's lectures/, or of a
course it writes into a new folder), and stops with its process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, stop_session

LECTURES = Path(__file__).resolve().parents[1] / "lectures"
START_TIMEOUT = 60.0


def _get_json(url: str) -> dict | None:
    """The JSON the server answers at ``url``, or None while it is not listening yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError):
        return None


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="stops the server through its process group (POSIX)")
@pytest.mark.parametrize("where", ["clone", "new course"])
def test_viztools_lab_serves_lecture_00_and_stops(tmp_path, where):
    folder, page = (LECTURES, "00_getting_started.ipynb") if where == "clone" else (
        tmp_path / "my course", "lectures/00_getting_started.ipynb")
    port, token = free_port(), "viztools-test-token"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = tmp_path / "lab.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "viztools", "lab", str(folder), "--port", str(port), "--token", token,
             "--no-browser"],
            stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while _get_json(f"{base}/api/status?token={token}") is None:
            assert process.poll() is None, f"viztools lab exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no answer after {START_TIMEOUT:g} s:\n{log.read_text()}"
            time.sleep(0.25)
        lecture = _get_json(f"{base}/api/contents/{page}?token={token}")
        assert lecture is not None and lecture["type"] == "notebook" and lecture["content"]["cells"]
        printed = log.read_text()
        assert f"http://localhost:{port}/lab/tree/{page}?token={token}" in printed
        if where == "new course":  # the course was written first, exercises beside the lectures
            assert "Course of viztools" in printed
            assert _get_json(f"{base}/api/contents/exercises?token={token}")["content"]
        assert ("--allow-root" in printed) == (os.geteuid() == 0)
    finally:
        stop_session(process)
    assert _get_json(f"{base}/api/status?token={token}") is None
