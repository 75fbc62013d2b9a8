"""Helpers for tests that start a server (`viztools lab`, `viztools present`, JupyterLab) in its own session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_session(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it started (its kernels): SIGTERM to its
    process group, then wait for the group to be gone. Fails if a process of the group outlives ``grace`` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the group id is its process id
    process.wait(timeout=30)
    deadline = time.monotonic() + grace
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(process.pid), f"a process started by {process.args[:4]} outlived it"
