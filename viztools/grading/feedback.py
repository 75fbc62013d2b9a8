"""Turning what the student's kernel reported (an exception and its frames) into feedback a student can act on.

The kernel describes an exception as its type, message and frames ``[file, line, code]``. Feedback names the
exception, its message, and the student's cell and line it came from (found by matching the frames' code lines
against their cells, since IPython numbers cells by execution), with a hint for the two errors every unfinished
exercise gives.
"""

from __future__ import annotations

from viztools.grading.notebooks import first_line
from viztools.grading.report import CellProblem


def locate(frames: list, sources: dict[int, str]) -> str:
    """Where in the student's cells an error happened (the innermost frame that is one of their lines), or ""."""
    for frame in reversed(frames):
        if not (isinstance(frame, list) and len(frame) == 3):
            continue
        _, line, code = frame
        if not code or not isinstance(line, int):
            continue
        for number, source in sources.items():
            lines = source.splitlines()
            if 0 < line <= len(lines) and lines[line - 1].strip() == code:
                quoted = code if len(code) <= 70 else code[:67] + "..."
                return f"in your code cell {number} (`{first_line(source)}`), line {line}: `{quoted}`"
    return ""


def exception_feedback(error: dict, sources: dict[int, str]) -> str:
    """``Type: message``, where it was raised, and a hint for NotImplementedError and NameError."""
    name, value = str(error.get("type", "Error")), str(error.get("message", ""))
    text = f"{name}: {value}" if value else name
    where = locate(error.get("frames", []), sources)
    if where:
        text += f"\n  raised {where}"
    if name == "NotImplementedError":
        text += "\n  Hint: this part is not written yet; replace `raise NotImplementedError(...)` with your code."
    elif name == "NameError":
        text += ("\n  Hint: something the grader calls is not defined. Define it in your cells (with exactly this "
                 "name) and make sure the cell that defines it runs without errors.")
    return text


def cell_problem(number: int, source: str, error: dict | None, timed_out: str | None,
                 sources: dict[int, str]) -> CellProblem | None:
    """A student cell that raised or timed out (None when it ran fine)."""
    if timed_out:
        return CellProblem(number, first_line(source), "timeout", timed_out)
    if error is not None:
        return CellProblem(number, first_line(source), "error", exception_feedback(error, sources))
    return None
