"""A pytest plugin loaded next to nbval when ``viztools grade`` runs a notebook.

It writes one JSON line per notebook cell (and one per kernel start) to the file given by ``--viztools-report``,
recording what nbval saw: the cell's grading role (from the cell metadata the grader set), how the cell ended
and the outputs the kernel produced. Lines are flushed as they happen, so a run killed by the overall time limit
still leaves the results of the cells that finished.

It also makes a crashed kernel fail fast: nbval waits for a dead kernel's reply until the cell timeout, so the
plugin wraps ``RunningKernel.await_reply`` to poll in short slices and raise :class:`KernelDiedError` as soon as
the kernel process is gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

import pytest

ROLE_KEY = "viztools_grading"
POLL_SECONDS = 0.5


class KernelDiedError(RuntimeError):
    """The kernel process exited while a cell was running."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--viztools-report", default=None, help="JSON-lines file for viztools grade's results.")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("viztools_report"):
        _watch_for_dead_kernels()


def _watch_for_dead_kernels() -> None:
    from nbval.kernel import RunningKernel

    original = RunningKernel.await_reply
    if getattr(original, "_viztools_watch", False):
        return

    def await_reply(self: Any, msg_id: str, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            try:
                return original(self, msg_id, timeout=step)
            except Empty:
                if not self.is_alive():
                    raise KernelDiedError("The kernel process exited while the cell was running.") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    await_reply._viztools_watch = True
    RunningKernel.await_reply = await_reply


def _write(config: pytest.Config, record: dict) -> None:
    path = config.getoption("viztools_report")
    if path:
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record, default=str) + "\n")
            stream.flush()


def _classify(exception: BaseException) -> str:
    """How a cell failed: mismatch, exception, timeout, kernel-died, kernel-dead, or internal."""
    if isinstance(exception, KernelDiedError):
        return "kernel-died"
    message = str(exception)
    if type(exception).__name__ == "NbCellError":
        if message.startswith("Timeout"):
            return "timeout"
        if message == "Cell outputs differ":
            return "mismatch"
        if message == "Cell execution caused an exception":
            return "exception"
        return "internal"
    if isinstance(exception, RuntimeError) and message == "Kernel dead on test start":
        return "kernel-dead"
    return "internal"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield
    kernel = getattr(item.parent, "kernel", None)
    if kernel is not None and not getattr(kernel, "_viztools_reported", False):
        kernel._viztools_reported = True
        pid = getattr(getattr(getattr(kernel, "km", None), "provisioner", None), "pid", None)
        _write(item.config, {"event": "kernel", "pid": pid})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if call.when == "teardown" or (call.when == "setup" and not report.failed):
        return  # setup fails only when the kernel cannot start; teardown (stopping it) is not the student's
    cell = getattr(item, "cell", None)
    exception = call.excinfo.value if call.excinfo is not None else None
    _write(item.config, {
        "event": "cell",
        "when": call.when,
        "cell_number": getattr(item, "cell_num", None),
        "role": dict(cell.metadata.get(ROLE_KEY, {})) if cell is not None else {},
        "raised": exception is not None,
        "kind": _classify(exception) if exception is not None else "ok",
        "message": str(exception) if exception is not None else "",
        "outputs": [dict(output) for output in (getattr(item, "test_outputs", None) or [])],
        "duration": round(call.duration, 3),
    })
