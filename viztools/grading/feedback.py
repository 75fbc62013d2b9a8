"""Turning what nbval saw in each cell into feedback a student can act on.

The plugin's records carry the raw outputs of every cell. Instead of nbval's diff (where ``+`` marks the stored,
expected output and ``-`` the new one, the opposite of what students guess), feedback quotes the check's own
``WRONG - ...`` lines, or lists the expected lines that did not appear. For exceptions it names the exception,
its message, and the student's cell and line it came from (found by matching the traceback's code lines
against their cells, since nbval runs every cell as ``Cell In[1]``).
"""

from __future__ import annotations

import re

from viztools.grading.answer_key import CheckKey
from viztools.grading.notebooks import FAIL_WORD, PASS_WORD, first_line, verdict_lines
from viztools.grading.report import CellProblem, CheckResult

#: Memory addresses differ between runs (``<object at 0x7f...>``).
SANITIZE_RULES = ((r"at 0x[0-9a-fA-F]+", "at 0xADDRESS"),)
#: What nbval compares: the address rule, then every line that is not a verdict removed (so prints, warnings and
#: progress bars from the student's code, which the setup cell routes to stdout, do not count).
NBVAL_SANITIZE_RULES = (*SANITIZE_RULES, (rf"(?m)^(?!.*: (?:{PASS_WORD}$|{FAIL_WORD}\b)).*\n?", ""))
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CRASH_TEXT = ("the Python kernel crashed (the process exited: os._exit, a segfault, or running out of memory), so "
              "the cells after it could not run")

_CELL_FRAME = re.compile(r"^Cell In\[[^\]]*\], line (\d+)")
_FILE_FRAME = re.compile(r"^File (.+?):(\d+)")
_ARROW_LINE = re.compile(r"^-*> ?(\d+)\s?(.*)$")


def sanitize(text: str) -> str:
    for regex, replacement in SANITIZE_RULES:
        text = re.sub(regex, replacement, text)
    return ANSI_ESCAPE.sub("", text)


def stream_text(outputs: list[dict], name: str) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == name)


def _displayed(outputs: list[dict]) -> list[str]:
    texts = []
    for output in outputs:
        if output.get("output_type") in ("execute_result", "display_data"):
            data = output.get("data", {})
            texts.append(str(data.get("text/plain", f"<{', '.join(data)}>")))
    return texts


def _error_output(record: dict) -> dict:
    error = next((o for o in record.get("outputs", []) if o.get("output_type") == "error"), None)
    return error or {"ename": "Error", "evalue": record.get("message", ""), "traceback": []}


def _frames(traceback: list[str]) -> list[tuple[str, int, str]]:
    """``(where, line, code)`` per frame of an IPython traceback; ``where`` is "cell" or a file path."""
    frames = []
    for entry in traceback:
        lines = ANSI_ESCAPE.sub("", entry).splitlines()
        if not lines:
            continue
        header = lines[0].strip()
        cell, file = _CELL_FRAME.match(header), _FILE_FRAME.match(header)
        if not (cell or file):
            continue
        code = ""
        for line in lines[1:]:
            arrow = _ARROW_LINE.match(line.strip())
            if arrow:
                code = arrow.group(2).strip()
        frames.append(("cell", int(cell.group(1)), code) if cell else (file.group(1), int(file.group(2)), code))
    return frames


def locate(traceback: list[str], sources: dict[int, str]) -> str:
    """Where in the student's cells an error happened (the innermost frame that is one of their lines), or ""."""
    for where, line, code in reversed(_frames(traceback)):
        if where != "cell" or not code:
            continue
        for number, source in sources.items():
            lines = source.splitlines()
            if 0 < line <= len(lines) and lines[line - 1].strip() == code:
                quoted = code if len(code) <= 70 else code[:67] + "..."
                return f"in your code cell {number} (`{first_line(source)}`), line {line}: `{quoted}`"
    return ""


def exception_feedback(record: dict, sources: dict[int, str]) -> str:
    """``Type: message``, where it was raised, and a hint for the two errors every unfinished exercise gives."""
    error = _error_output(record)
    name, value = error.get("ename", "Error"), ANSI_ESCAPE.sub("", str(error.get("evalue", "")))
    text = f"{name}: {value}" if value else name
    where = locate(error.get("traceback", []), sources)
    if where:
        text += f"\n  raised {where}"
    if name == "NotImplementedError":
        text += "\n  Hint: this part is not written yet; replace `raise NotImplementedError(...)` with your code."
    elif name == "NameError":
        text += ("\n  Hint: something this check uses is not defined. Define it in your cells (with exactly this "
                 "name) and make sure the cell that defines it runs without errors.")
    return text


def _shorten(text: str, max_lines: int = 12) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= max_lines:
        return "\n".join(lines)
    return "\n".join([*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"])


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def mismatch_feedback(expected: str, outputs: list[dict]) -> tuple[str, str]:
    """Feedback for a check whose output differs from the key's, and the output it gave (sanitized)."""
    got_stdout = sanitize(stream_text(outputs, "stdout"))
    stderr = sanitize(stream_text(outputs, "stderr"))
    displayed = _displayed(outputs)
    got_lines = verdict_lines(got_stdout)
    wrong = [line for line in got_lines if FAIL_WORD in line]
    missing = [line for line in verdict_lines(expected) if line not in got_lines]
    parts = []
    if wrong:
        parts.append("\n".join(wrong))
    elif missing:
        parts.append("Expected these lines, which did not appear:\n" + _indent("\n".join(missing)))
    if stderr.strip():
        parts.append("The check also wrote to stderr (a warning?):\n" + _indent(_shorten(stderr)))
    if displayed:
        parts.append("The check also displayed:\n" + _indent(_shorten("\n".join(displayed))))
    if not parts:
        parts.append("The output differs from the expected output.")
    got = got_stdout + (f"\n[stderr]\n{stderr}" if stderr else "") + "".join(f"\n{d}" for d in displayed)
    return "\n".join(parts), got


def timeout_feedback(record: dict, cell_timeout: float, sources: dict[int, str]) -> str:
    text = f"did not finish within {cell_timeout:g} s (is there an endless loop, or a very slow one?)"
    where = locate(_error_output(record).get("traceback", []), sources)
    if where:
        text += f"\n  It was stopped {where}"
    if "Failed to interrupt" in record.get("message", ""):
        text += "\n  The kernel could not be interrupted and was shut down, so the cells after it could not run."
    return text


def kernel_stopped_reason(records: list[dict], sources: dict[int, str]) -> str:
    """Why later cells found the kernel dead: the first crash, or a timeout whose interrupt failed."""
    for record in records:
        role = record.get("role", {})
        stuck = record.get("kind") == "timeout" and "Failed to interrupt" in record.get("message", "")
        if record.get("kind") == "kernel-died" or stuck:
            place = (f"check {role.get('check')!r}" if role.get("role") == "check"
                     else f"your code cell {role.get('cell')} (`{first_line(sources.get(role.get('cell'), ''))}`)")
            what = "crashed" if record["kind"] == "kernel-died" else "was shut down after a timeout"
            return f"the Python kernel {what} in {place}."
    return "the Python kernel had stopped."


def check_result(check: CheckKey, record: dict | None, *, restored: str | None, sources: dict[int, str],
                 cell_timeout: float, not_run_reason: str, stopped_reason: str) -> CheckResult:
    """The result of one check from its plugin record (None when the cell never ran)."""
    result = CheckResult(check.id, check.title, check.points, 0, "not-run", not_run_reason,
                         expected=check.expected_text, restored=restored)
    if record is None:
        return result
    kind, outputs = record["kind"], record.get("outputs", [])
    if kind == "ok":
        result.status, result.score, result.feedback = "passed", check.points, "passed"
        result.got = sanitize(stream_text(outputs, "stdout"))
    elif kind == "mismatch":
        result.status = "failed"
        result.feedback, result.got = mismatch_feedback(check.expected_text, outputs)
    elif kind == "exception":
        result.status, result.feedback = "error", exception_feedback(record, sources)
        result.got = sanitize(stream_text(outputs, "stdout"))
    elif kind == "timeout":
        result.status, result.feedback = "timeout", timeout_feedback(record, cell_timeout, sources)
    elif kind == "kernel-died":
        result.status, result.feedback = "crashed", CRASH_TEXT
    elif kind == "kernel-dead":
        result.feedback = f"not run: {stopped_reason}"
    else:
        result.status = "error"
        result.feedback = f"the grader could not run this check: {record.get('message', '')}"
    return result


def cell_problem(record: dict, sources: dict[int, str], cell_timeout: float) -> CellProblem | None:
    """A student cell that raised, timed out or crashed the kernel (None when it ran fine)."""
    number = record["role"].get("cell")
    line = first_line(sources.get(number, ""))
    kind = record["kind"]
    if kind == "exception":
        return CellProblem(number, line, "error", exception_feedback(record, sources))
    if kind == "timeout":
        return CellProblem(number, line, "timeout", timeout_feedback(record, cell_timeout, sources))
    if kind == "kernel-died":
        return CellProblem(number, line, "crashed", CRASH_TEXT)
    return None
