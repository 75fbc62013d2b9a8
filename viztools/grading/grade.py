"""``viztools grade``: mark one student notebook with hidden checks, comparing results outside the student's kernel.

The student's file is only read. The grader:

1. reads the notebook and its exercise id (which must be an exercise name; the key and hidden checks come only
   from the package's own folders), and checks the student's code cells statically for the task's off-limits
   library calls (:mod:`viztools.grading.static`);
2. starts a kernel in a sandbox (:mod:`viztools.grading.sandbox`: a fresh scratch folder holding a read-only
   copy of the notebook, a minimal environment, memory and process limits, a wall-clock budget) and runs the
   student's code cells there, skipping the unchanged visible check cells (they are for self-testing only);
3. runs each hidden check (``viztools/grading/hidden/<exercise>.py``, :mod:`viztools.grading.proxy`) in this
   process: it calls the student's functions in the kernel on inputs drawn from a per-run seed, loads what they
   returned with ``torch.load(weights_only=True)`` and compares it with values it computes itself. Nothing the
   kernel prints or writes is parsed as a verdict;
4. kills the box and everything it started. A kernel that dies, cannot be interrupted or runs out of the
   notebook's time is a grading error with the exit status, never a score.
"""

from __future__ import annotations

import hashlib
import random
import resource
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from nbformat import NotebookNode

from viztools.grading import feedback, static
from viztools.grading.answer_key import EXERCISE_NAME, AnswerKey, UnknownExerciseError, known_exercises, load_key
from viztools.grading.kernel import CallTimeoutError, KernelDiedError, OutOfTimeError, StudentKernel
from viztools.grading.notebooks import NotebookError, read_notebook, viztools_metadata
from viztools.grading.proxy import (
    HIDDEN_DIR,
    HiddenCheck,
    Student,
    StudentError,
    StudentTimeoutError,
    function_name,
    hidden_checks,
)
from viztools.grading.report import CheckResult, GradeReport
from viztools.grading.sandbox import DEFAULT_CELL_TIMEOUT, Limits, make_scratch

KERNEL_START_TIMEOUT = 60.0
LOG_TAIL_LINES = 8
MAX_PROBLEMS = 4


def source_digest(source: str) -> str:
    """SHA-256 of a cell's source without surrounding blank space (how visible check cells are recognised)."""
    return hashlib.sha256(source.strip().encode("utf-8")).hexdigest()


def identify_exercise(notebook: NotebookNode, path: Path) -> str:
    """The exercise id from ``metadata.viztools.exercise``, else from the file name (``03_occlusion-ana.ipynb``)."""
    declared = viztools_metadata(notebook).get("exercise")
    if declared is not None:
        if not isinstance(declared, str) or not EXERCISE_NAME.match(declared):
            raise UnknownExerciseError(
                f"{path}: metadata.viztools.exercise is {declared!r}, which is not an exercise name (such as "
                "'03_occlusion'). Start from the exercise notebook you were given.")
        return declared
    known = known_exercises()
    stem = path.stem.lower()
    for exercise in sorted(known, key=len, reverse=True):
        if exercise in stem:
            return exercise
    listing = ", ".join(known) if known else "none"
    raise UnknownExerciseError(
        f"{path}: cannot tell which exercise this is: the notebook has no metadata.viztools.exercise and the file "
        f"name contains none of the known exercises ({listing}). Start from the exercise notebook you were given, "
        "or keep its file name."
    )


def student_cells(notebook: NotebookNode, key: AnswerKey) -> dict[int, str]:
    """1-based code cell number -> source of the cells that run: all non-empty code cells but visible checks.

    A visible check is recognized by its source (also where it was copied) and by its cell id (also where a
    student edited it, e.g. added a print): visible checks never count, so they are neither run nor scanned for
    off-limits calls (the library calls a check itself makes would otherwise fail every task).
    """
    visible = {check.source_sha256 for check in key.checks}
    check_ids = {check.id for check in key.checks}
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return {number: cell.source for number, cell in enumerate(code, start=1)
            if cell.source.strip() and source_digest(cell.source) not in visible and cell.get("id") not in check_ids}


def code_cell_ids(notebook: NotebookNode) -> dict[int, str | None]:
    """1-based code cell number -> the cell's id (kept by Jupyter when students edit a cell)."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return {number: cell.get("id") for number, cell in enumerate(code, start=1)}


def forbidden_by_task(key: AnswerKey, sources: dict[int, str], ids: dict[int, str | None]) -> dict[str, str]:
    """Task id -> feedback, for the tasks whose off-limits calls appear in their own cell or in a cell of no task
    (cells the student added), so a call allowed in one task does not fail another."""
    tasks = {task.id for task in key.tasks}
    found: dict[str, str] = {}
    for task in key.tasks:
        own = {n: s for n, s in sources.items() if ids.get(n) == task.id or ids.get(n) not in tasks}
        uses = static.forbidden_uses(own, task.forbidden)
        if uses:
            lines = [f"your code uses {use.forbidden} (code cell {use.cell}, line {use.line}: `{use.spelled}`), "
                     "which is off limits for this task" for use in uses[:3]]
            found[task.id] = "\n".join([*lines, "Hint: write the computation yourself; the exercise says which "
                                                 "library calls you may not use."])
    return found


def _run_check(check_id: str, title: str, points: int, function: HiddenCheck | None, student: Student,
               rng: random.Random, sources: dict[int, str]) -> CheckResult:
    result = CheckResult(check_id, title, points, 0, "not-run", "")
    if function is None:
        result.feedback = "the grader has no hidden check for this (a setup problem: tell your instructor)"
        return result
    student.check = check_id
    try:
        problems = function(student, rng)
    except StudentError as raised:
        result.status = "error"
        result.feedback = f"{raised.function} raised " + feedback.exception_feedback(raised.error, sources)
    except StudentTimeoutError as stopped:
        result.status, result.feedback = "timeout", str(stopped)
    else:
        if problems:
            result.status, result.feedback = "failed", "\n".join(_shorten(problems))
        else:
            result.status, result.score, result.feedback = "passed", points, "passed"
    return result


def _shorten(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS problem lines (the rest counted), keeping a final hint."""
    hint = problems[-1:] if problems[-1].startswith("Hint:") else []
    lines = problems[: len(problems) - len(hint)]
    if len(lines) > MAX_PROBLEMS:
        lines = [*lines[:MAX_PROBLEMS], f"... and {len(lines) - MAX_PROBLEMS} more like these"]
    return [*lines, *hint]


def _log_tail(log: Path) -> str:
    try:
        with log.open("rb") as stream:
            stream.seek(max(0, log.stat().st_size - 4000))
            lines = stream.read().decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    return "\n".join(lines)


def grade_notebook(
    path: str | Path,
    *,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    limits: Limits | None = None,
    seed: int | None = None,
    hide: Sequence[str | Path] = (),
    marker: str | None = None,
) -> GradeReport:
    """Grade one student notebook. Problems with the notebook become ``report.message``, never exceptions.

    Args:
        path: the student's ``.ipynb`` (only read).
        cell_timeout: seconds each cell, and each call of a student's function, may run before it is interrupted.
        limits: memory, processes and the notebook's wall-clock budget (default :class:`Limits`).
        seed: seed of the hidden checks' inputs (default: a fresh one, recorded in the report).
        hide: more folders the kernel must not see (with bubblewrap), e.g. the other submissions and the outputs.
        marker: the value of the kernel's marker variable (default: a fresh one), for killing what it leaves.
    """
    if isinstance(cell_timeout, bool) or not isinstance(cell_timeout, (int, float)) or not cell_timeout > 0:
        raise ValueError(f"cell_timeout must be a positive number of seconds; got {cell_timeout!r}.")
    limits = limits or Limits()
    started, cpu_before = time.monotonic(), _own_cpu()
    path = Path(path)
    report = GradeReport(path=str(path), status="error", student=path.stem)
    try:
        notebook = read_notebook(path)
        key = load_key(identify_exercise(notebook, path))
        functions = hidden_checks(key.exercise)
    except (NotebookError, ValueError, FileNotFoundError) as error:
        report.message = str(error)
        return report
    report.exercise, report.exercise_version, report.max_score = key.exercise, key.version, key.total_points
    report.seed = secrets.randbelow(2**31) if seed is None else seed
    version = viztools_metadata(notebook).get("version")
    if version is not None and version != key.version:
        report.notes.append(f"Your notebook is version {version} of {key.exercise}; it was graded with the checks "
                            f"of version {key.version}.")
    sources = student_cells(notebook, key)
    forbidden = forbidden_by_task(key, sources, code_cell_ids(notebook))
    with tempfile.TemporaryDirectory(prefix="viztools-grade-") as folder:
        (scratch, ids), log = make_scratch(Path(folder)), Path(folder) / "kernel.log"
        copy = scratch / "submission.ipynb"
        copy.write_bytes(path.read_bytes())
        copy.chmod(0o444)
        try:
            with StudentKernel(scratch, ids, limits=limits, log=log, marker=marker,
                               hide=[path.resolve().parent, HIDDEN_DIR, *map(Path, hide)]) as kernel:
                kernel.wait_ready(KERNEL_START_TIMEOUT)
                for number, source in sources.items():
                    try:
                        error, stopped = kernel.run_cell(number, source, cell_timeout).error, None
                    except CallTimeoutError:
                        error, stopped = None, f"did not finish within {cell_timeout:g} s and was interrupted"
                    problem = feedback.cell_problem(number, source, error, stopped, sources)
                    if problem is not None:
                        report.cell_problems.append(problem)
                student = Student(kernel, cell_timeout)
                for check in key.checks:
                    if check.task in forbidden:
                        report.checks.append(CheckResult(check.id, check.title, check.points, 0, "forbidden",
                                                         forbidden[check.task]))
                        continue
                    rng = random.Random(f"{report.seed}:{check.id}")
                    report.checks.append(_run_check(check.id, check.title, check.points,
                                                    functions.get(function_name(check.id)), student, rng, sources))
                kernel_cpu = kernel.cpu_seconds()
        except (KernelDiedError, OutOfTimeError) as error:
            tail = _log_tail(log)
            report.checks, report.exit_status = [], getattr(error, "exit_status", None)
            report.message = f"{error}." + (f" The last output was:\n{tail}" if tail else "")
            report.seconds = round(time.monotonic() - started, 2)
            return report
        except Exception as error:  # a bug in a hidden check or the grader: an error, never a score
            report.checks, report.message = [], f"internal grading error: {type(error).__name__}: {error}"
            return report
    report.status = "graded"
    report.score = sum(result.score for result in report.checks)
    report.seconds = round(time.monotonic() - started, 2)
    if kernel_cpu is not None:
        report.cpu_seconds = round(kernel_cpu + _own_cpu() - cpu_before, 2)
    return report


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
