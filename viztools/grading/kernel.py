"""The grader's side of the student's kernel: start it boxed, run cells, call functions, read results safely.

The kernel (:mod:`viztools.grading._kernel`) runs in the sandbox; the grader talks to it over two pipes and
reads call results from files the kernel wrote into its scratch folder with ``torch.load(weights_only=True)``,
which builds tensors and plain containers only (a forged pickle cannot run code in the grader). Every request
has a deadline: on time-out the grader interrupts the kernel and, if it does not answer within a grace period,
kills the box. A kernel that exits (or is killed) is :class:`KernelDiedError`, which the grader reports as a grading
error with the exit status, never as a score.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from viztools.grading import sandbox

KERNEL_SCRIPT = Path(__file__).with_name("_kernel.py")
#: Becomes the kernel's own user (argv[1], -1: stay), then runs the kernel script by path (only the standard library
#: and IPython load before the student's imports).
LAUNCHER = ("import os, runpy, sys; uid = int(sys.argv[1])\n"
            "if uid >= 0: os.setgroups([]); os.setgid(uid); os.setuid(uid)\n"
            "runpy.run_path(sys.argv[2], run_name='__main__')")
INTERRUPT_GRACE = 5.0
#: Seconds a kernel gets to exit by itself when grading is done, before its box is killed.
EXIT_GRACE = 3.0
#: Seconds the kernel may take to load a call's inputs and build its models (not the student's time).
PREPARE_TIMEOUT = 120.0
MAX_REPLY_BYTES = 1 << 20
MAX_RESULT_BYTES = 256 << 20


class KernelDiedError(RuntimeError):
    """The kernel process ended (crashed, was killed, or had to be stopped) before grading finished."""

    def __init__(self, message: str, exit_status: int | None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class CallTimeoutError(RuntimeError):
    """A request did not finish in time; the kernel was interrupted and is still usable."""


class OutOfTimeError(RuntimeError):
    """The notebook's wall-clock budget is used up."""


@dataclass
class Reply:
    """What the kernel said about a request: ``error`` is None or ``{"type", "message", "frames"}``."""

    error: dict | None
    passes: list[int] | None = None


class StudentKernel:
    """A sandboxed kernel for one notebook, used as a context manager (the box is killed on exit)."""

    def __init__(self, scratch: Path, ids: tuple[int, int] | None, *, limits: sandbox.Limits, hide: list[Path],
                 log: Path, marker: str | None = None) -> None:
        self.scratch = scratch
        self.deadline = time.monotonic() + limits.wall_seconds
        command_read, self._command_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        try:
            self.box = sandbox.start([sys.executable, "-c", LAUNCHER, str(ids[0] if ids else -1), str(KERNEL_SCRIPT),
                                      str(command_read),
                                      str(reply_write)], scratch, ids, limits=limits, hide=hide,
                                     pass_fds=(command_read, reply_write), log=log, marker=marker)
        finally:
            os.close(command_read)
            os.close(reply_write)
        os.set_blocking(self._reply_read, False)
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._reply_read, selectors.EVENT_READ)
        self.doing = "starting"

    def __enter__(self) -> StudentKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cpu_seconds(self) -> float | None:
        """The CPU seconds the kernel says it used (a statistic: the student's code could change it), or None."""
        with contextlib.suppress(CallTimeoutError, OutOfTimeError, KernelDiedError):
            seconds = self.request({"op": "usage"}, {"op": "usage"}, EXIT_GRACE).get("cpu_seconds")
            return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else None
        return None

    def close(self) -> None:
        """End the kernel (end of commands, a short wait), then kill the box and everything it started."""
        with contextlib.suppress(OSError):
            os.close(self._command_write)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.box.process.wait(timeout=EXIT_GRACE)
        self.box.kill()
        self._selector.close()
        with contextlib.suppress(OSError):
            os.close(self._reply_read)

    def _died(self) -> KernelDiedError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.box.process.wait(timeout=2)  # its own exit status, before the box is killed
        status = self.box.process.returncode
        self.box.kill()
        return KernelDiedError(f"the kernel ended abnormally (exit status {status}) while {self.doing}", status)

    def _send(self, command: dict) -> None:
        try:
            os.write(self._command_write, (json.dumps(command) + "\n").encode())
        except OSError:
            raise self._died() from None

    def _next_line(self, until: float) -> bytes | None:
        """The next reply line, or None at ``until``; raises :class:`KernelDiedError` when the pipe closes."""
        while b"\n" not in self._buffer:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            if not self._selector.select(timeout=min(remaining, 1.0)):
                if self.box.process.poll() is not None:
                    raise self._died()
                continue
            try:
                chunk = os.read(self._reply_read, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise self._died()
            self._buffer = (self._buffer + chunk)[-MAX_REPLY_BYTES:]
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _await(self, match: dict, until: float) -> dict | None:
        while True:
            line = self._next_line(until)
            if line is None:
                return None
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and all(message.get(k) == v for k, v in match.items()):
                    return message

    def request(self, command: dict, match: dict, timeout: float) -> dict:
        """Send ``command`` and wait for the reply matching ``match``; interrupt after ``timeout`` seconds."""
        if time.monotonic() >= self.deadline:
            raise OutOfTimeError(f"the notebook's time limit was used up before {self.doing}")
        self._send(command)
        reply = self._await(match, min(time.monotonic() + timeout, self.deadline))
        if reply is not None:
            return reply
        self._send({"op": "interrupt"})
        reply = self._await(match, time.monotonic() + INTERRUPT_GRACE / 2)
        if reply is None:  # an interrupt that landed between two commands is spent: try once more
            self._send({"op": "interrupt"})
            reply = self._await(match, time.monotonic() + INTERRUPT_GRACE / 2)
        if reply is None:
            self.box.kill()
            raise KernelDiedError(f"the kernel did not stop when interrupted after {timeout:g} s and was shut down "
                             f"while {self.doing}", self.box.process.returncode)
        if time.monotonic() >= self.deadline:
            raise OutOfTimeError(f"the notebook's time limit was used up while {self.doing}")
        raise CallTimeoutError(f"did not finish within {timeout:g} s")

    def wait_ready(self, timeout: float) -> None:
        """Wait for the kernel's first message."""
        if self._await({"op": "ready"}, min(time.monotonic() + timeout, self.deadline)) is None:
            self.box.kill()
            raise KernelDiedError(f"the kernel did not start within {timeout:g} s", self.box.process.returncode)

    def run_cell(self, number: int, source: str, timeout: float) -> Reply:
        """Run one of the student's code cells."""
        self.doing = f"running your code cell {number}"
        reply = self.request({"op": "run", "cell": number, "source": source}, {"op": "ran", "cell": number}, timeout)
        return Reply(reply.get("error") if isinstance(reply.get("error"), dict) else None)

    def call(self, function: str, args: list, kwargs: dict, *, count_passes: bool, timeout: float,
             what: str) -> tuple[Reply, dict | None]:
        """Call the student's ``function``; return the reply and ``{"result", "tensor_args"}`` as loaded safely."""
        import torch

        self.doing = what
        token = secrets.token_hex(8)
        inputs, output = self.scratch / f"call-{token}-in.pt", self.scratch / f"call-{token}-out.pt"
        torch.save({"args": args, "kwargs": kwargs}, inputs)
        os.chmod(inputs, 0o644)
        prepared = self.request({"op": "prepare", "id": token, "inputs": str(inputs)},
                                {"op": "prepared", "id": token}, max(timeout, PREPARE_TIMEOUT))
        if isinstance(prepared.get("error"), dict):
            return Reply({"type": "GraderInputError", "message": "the kernel could not load the grader's inputs "
                          f"({prepared['error'].get('type')}: {prepared['error'].get('message')})", "frames": []},
                         None), None
        reply = self.request({"op": "call", "id": token, "function": function, "output": str(output),
                              "count_passes": count_passes}, {"op": "called", "id": token}, timeout)
        error = reply.get("error") if isinstance(reply.get("error"), dict) else None
        passes = reply.get("passes")
        passes = [int(p) for p in passes if isinstance(p, int)] if isinstance(passes, list) else None
        if error is not None:
            return Reply(error, passes), None
        try:
            if output.stat().st_size > MAX_RESULT_BYTES:
                return Reply({"type": "ResultTooLarge", "message": "the returned value is too large", "frames": []},
                             passes), None
            loaded = torch.load(output, weights_only=True)
        except Exception as error:  # a missing or forged file: whatever it is, it is not a valid result
            return Reply({"type": "UnreadableResult", "message": f"the result could not be read ({error})",
                          "frames": []}, passes), None
        finally:
            for path in (inputs, output):
                with contextlib.suppress(OSError):
                    path.unlink()
        if not isinstance(loaded, dict):
            return Reply({"type": "UnreadableResult", "message": "the result has the wrong form", "frames": []},
                         passes), None
        return Reply(None, passes), loaded
