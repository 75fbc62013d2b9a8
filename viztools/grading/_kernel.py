"""The student's kernel: runs a notebook's code cells, then calls the student's functions for the grader.

Started by the grader inside the sandbox as ``python _kernel.py COMMAND_FD REPLY_FD`` (by path, so that it loads
only the standard library and IPython until the student's code imports more). Commands arrive as JSON lines:

- ``{"op": "run", "cell": N, "source": "..."}``: run a code cell in IPython (magics work, output goes to the log);
- ``{"op": "prepare", "id": K, "inputs": PATH}``: load ``{"args": [...], "kwargs": {...}}`` from ``PATH``
  (``torch.load(weights_only=True)``; ``{"model": name}`` dicts become models, built once per kernel);
- ``{"op": "call", "id": K, "function": NAME, "output": PATH, "count_passes": bool}``: call the student's
  ``NAME`` with the prepared arguments and ``torch.save`` its plain result to ``output``;
- ``{"op": "usage"}``: the CPU seconds used so far (for benchmarks);
- ``{"op": "interrupt"}``: raise KeyboardInterrupt in whatever runs (the grader's timeout).

Replies are JSON lines naming what happened. Nothing here decides a grade: whatever the student's code does to
this process (patching, printing, writing files, forging replies) only changes the values the grader receives,
and the grader compares them with expected values it computed itself on inputs this process never saw before.
"""

from __future__ import annotations

import _thread
import json
import os
import queue
import signal
import sys
import threading
import traceback


def _error(exception: BaseException) -> dict:
    frames = [[frame.filename, frame.lineno or 0, (frame.line or "").strip()]
              for frame in traceback.extract_tb(exception.__traceback__)]
    try:
        message = str(exception)
    except Exception:  # a student's exception whose __str__ fails
        message = ""
    return {"type": type(exception).__name__, "message": message[:2000], "frames": frames[-20:]}


def _plain(value: object, depth: int = 0) -> object:
    """The value as tensors, numbers, strings, lists and dicts only (what ``weights_only`` loading accepts)."""
    import numpy as np
    import torch

    if depth > 5:
        return {"__unsupported__": "nested too deeply"}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        try:
            return torch.from_numpy(np.array(value, dtype=np.float64 if value.dtype.kind == "f" else None))
        except TypeError:
            return {"__unsupported__": f"numpy array of {value.dtype}"}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, range)):
        return [_plain(item, depth + 1) for item in list(value)[:100_000]]
    if isinstance(value, dict):
        return {str(key): _plain(item, depth + 1) for key, item in list(value.items())[:1000]}
    return {"__unsupported__": type(value).__name__}


class Kernel:
    """The command loop around one IPython shell."""

    def __init__(self, commands: queue.Queue, reply_fd: int) -> None:
        import torch  # noqa: F401 - loaded before the first timed request, so no time limit includes it
        from IPython.core.interactiveshell import InteractiveShell

        self.shell = InteractiveShell.instance()
        self.commands = commands
        self.replies = os.fdopen(reply_fd, "w", encoding="utf-8")
        self.models: dict[str, object] = {}
        self.prepared: dict[str, tuple[list, dict]] = {}

    def reply(self, message: dict) -> None:
        self.replies.write(json.dumps(message) + "\n")
        self.replies.flush()

    def run(self, command: dict) -> None:
        result = self.shell.run_cell(command["source"], store_history=True)
        failure = result.error_before_exec or result.error_in_exec
        sys.stdout.flush()
        self.reply({"op": "ran", "cell": command["cell"], "error": _error(failure) if failure else None})

    def model(self, spec: dict) -> object:
        key = json.dumps(spec, sort_keys=True)
        if key not in self.models:
            if spec["model"] == "corner":
                from viztools.grading.checks import corner_model

                self.models[key] = corner_model(**{k: v for k, v in spec.items() if k != "model"})
            else:
                from viztools.models import load_model

                # On the CPU whatever the grading machine has, so that a score does not depend on where it ran.
                options = {"device": "cpu", **{k: v for k, v in spec.items() if k != "model"}}
                self.models[key] = load_model(spec["model"], **options)
        return self.models[key]

    def prepare(self, command: dict) -> None:
        """Load a call's arguments and build its models (not timed as the student's call)."""
        import torch

        error = None
        try:
            inputs = torch.load(command["inputs"], weights_only=True)
            args = [self.model(a) if isinstance(a, dict) and "model" in a else a for a in inputs["args"]]
            self.prepared[command["id"]] = (args, inputs["kwargs"])
        except BaseException as exception:
            error = _error(exception)
        self.reply({"op": "prepared", "id": command["id"], "error": error})

    def call(self, command: dict) -> None:
        import torch

        reply: dict = {"op": "called", "id": command["id"], "error": None, "passes": None}
        try:
            args, kwargs = self.prepared.pop(command["id"])
            function = self.shell.user_ns.get(command["function"])
            if function is None:
                raise NameError(f"name {command['function']!r} is not defined")
            passes: list[int] = []
            handles = []
            if command.get("count_passes"):
                for value in args:
                    if hasattr(value, "network"):
                        handles.append(value.network.register_forward_pre_hook(
                            lambda _module, inputs: passes.append(int(inputs[0].shape[0]))))
            try:
                result = function(*args, **kwargs)
            finally:
                for handle in handles:
                    handle.remove()
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            torch.save({"result": _plain(result), "tensor_args": _plain(tensors)}, command["output"])
            reply["passes"] = passes if command.get("count_passes") else None
        except BaseException as exception:
            reply["error"] = _error(exception)
        self.reply(reply)

    def usage(self, command: dict) -> None:
        """CPU seconds this kernel and its finished children used (a statistic for benchmarks, not a grade)."""
        import resource

        seconds = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                          resource.getrusage(resource.RUSAGE_CHILDREN)))
        self.reply({"op": "usage", "cpu_seconds": seconds})

    def loop(self) -> None:
        while True:
            command = self.commands.get()
            if command is None:
                return
            try:
                getattr(self, command["op"])(command)
            except KeyboardInterrupt as interrupt:  # an interrupt that arrived between two commands
                self.reply({"op": "interrupted", "error": _error(interrupt)})


def _read_commands(command_fd: int, commands: queue.Queue) -> None:
    with os.fdopen(command_fd, "r", encoding="utf-8") as stream:
        for line in stream:
            try:
                command = json.loads(line)
            except json.JSONDecodeError:
                continue
            if command.get("op") == "interrupt":
                _thread.interrupt_main()
            else:
                commands.put(command)
    commands.put(None)


def main() -> None:
    # The grader's interrupt is a simulated SIGINT, which Python ignores when the kernel inherited an ignored SIGINT
    # (a grader started in the background by a shell, or by CI): handle it as Python does by default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command_fd, reply_fd = int(sys.argv[-2]), int(sys.argv[-1])
    commands: queue.Queue = queue.Queue()
    threading.Thread(target=_read_commands, args=(command_fd, commands), daemon=True).start()
    kernel = Kernel(commands, reply_fd)
    kernel.reply({"op": "ready"})
    kernel.loop()


if __name__ == "__main__":
    main()
