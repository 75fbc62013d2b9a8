"""``viztools grade``: mark a student's notebook with nbval against the exercise's grading key.

The student's file is never touched. The grader reads it, builds a graded copy in a temporary folder, and runs
``pytest --nbval`` on the copy in a subprocess (with an overall time limit on top of nbval's per-cell one):

- a first injected cell runs ``%colors nocolor`` so tracebacks carry no ANSI codes;
- every check cell gets its source and expected output from the key, so an edited check is restored, a deleted
  one is put back after the cell that preceded it, and a check cell of an unknown id is dropped;
- the student's own cells run as written, with their outputs cleared so nbval does not compare them.

A small pytest plugin (``_pytest_plugin``) records what happened in each cell; :mod:`viztools.grading.feedback`
turns that into per-check results and a score. As in nbgrader, a check passes when it runs without error and
prints what the solution printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from viztools.grading import _pytest_plugin, feedback
from viztools.grading.answer_key import AnswerKey, CheckKey, UnknownExerciseError, known_exercises, load_key
from viztools.grading.notebooks import CHECK_TAG, NotebookError, cell_tags, check_id, read_notebook, viztools_metadata
from viztools.grading.report import GradeReport

DEFAULT_CELL_TIMEOUT = 60.0
#: Overall limit of one grading run: kernel start-up, plus each cell's timeout and nbval's grace period after an
#: interrupt (5 s) with some slack.
KERNEL_STARTUP_ALLOWANCE = 90.0
PER_CELL_SLACK = 10.0
#: The injected first cell: tracebacks without ANSI colours, and stderr (warnings, progress bars) routed to stdout
#: where the grader's sanitize rules drop everything but verdict lines.
SETUP_SOURCE = """%colors nocolor
import sys as _viztools_sys
_viztools_sys.stderr = _viztools_sys.stdout
del _viztools_sys"""
PLUGIN_MODULE = "viztools_grading_plugin"
#: One thread per kernel: small images gain nothing from more, and on a busy machine (many notebooks graded at
#: once) competing thread pools make a forward pass 30x slower. Figures render off-screen.
KERNEL_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                      "PYTHONDONTWRITEBYTECODE": "1"}


# --------------------------------------------------------------------------------------------------------------
# Which exercise
# --------------------------------------------------------------------------------------------------------------


def identify_exercise(notebook: NotebookNode, path: Path, key_dir: str | Path | None = None) -> str:
    """The exercise id from ``metadata.viztools.exercise``, else from the file name (``03_occlusion-ana.ipynb``)."""
    declared = viztools_metadata(notebook).get("exercise")
    if isinstance(declared, str) and declared:
        return declared
    known = known_exercises(key_dir)
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


# --------------------------------------------------------------------------------------------------------------
# The graded copy
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Assembly:
    """The cells of the graded copy, in order, and what the grader changed."""

    cells: list[NotebookNode]
    restored: dict[str, str]  # check id -> "edited" | "deleted"
    notes: list[str]
    student_sources: dict[int, str]  # 1-based code cell number in the student's notebook -> source

    def notebook(self) -> NotebookNode:
        """The notebook nbval runs: the code cells only (the others were kept as anchors for placing checks)."""
        notebook = nbformat.v4.new_notebook()
        notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
        for index, cell in enumerate(c for c in self.cells if c.cell_type == "code"):
            cell = nbformat.from_dict(dict(cell))
            cell.id = f"graded-{index}"
            notebook.cells.append(cell)
        return notebook


def _graded_cell(source: str, role: dict, cell_id: str | None, outputs: list[dict] | None = None) -> NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata = {_pytest_plugin.ROLE_KEY: role}
    cell.id = cell_id or cell.id
    if outputs:
        cell.outputs = [nbformat.from_dict(output) for output in outputs]
        cell.execution_count = 1  # nbval compares only cells that have been run
    return cell


def _anchor(cell: NotebookNode) -> NotebookNode:
    """A placeholder that keeps a cell's id in place (for putting deleted checks back); never executed."""
    anchor = nbformat.v4.new_markdown_cell("")
    anchor.id = cell.get("id") or anchor.id
    return anchor


def _matching_check(cell: NotebookNode, key: AnswerKey) -> CheckKey | None:
    declared = check_id(cell)
    if declared is not None and key.check(declared) is not None:
        return key.check(declared)
    return next((check for check in key.checks if check.cell_id == cell.get("id")), None)


def assemble(student: NotebookNode, key: AnswerKey) -> Assembly:
    """Build the graded copy's cells: the student's code, with every check taken from the key."""
    cells = [_graded_cell(SETUP_SOURCE, {"role": "setup"}, "viztools-grading-setup")]
    restored: dict[str, str] = {}
    notes: list[str] = []
    sources: dict[int, str] = {}
    code_number = 0
    for cell in student.cells:
        if cell.cell_type != "code":
            cells.append(_anchor(cell))
            continue
        code_number += 1
        check = _matching_check(cell, key)
        placed = {c.metadata.get(_pytest_plugin.ROLE_KEY, {}).get("check") for c in cells}
        if check is not None and check.id not in placed:
            if cell.source.strip() != check.source.strip():
                restored[check.id] = "edited"
            cells.append(_graded_cell(check.source, {"role": "check", "check": check.id}, cell.get("id"),
                                      check.outputs))
            continue
        if check is not None:
            notes.append(f"Your code cell {code_number} is a second copy of check {check.id!r}; it was not run.")
        elif check_id(cell) or CHECK_TAG in cell_tags(cell):
            notes.append(f"Your code cell {code_number} is marked as check {check_id(cell)!r}, which this version of "
                         "the exercise does not have; it was not run.")
        elif cell.source.strip():
            cells.append(_graded_cell(cell.source, {"role": "student", "cell": code_number}, cell.get("id")))
            sources[code_number] = cell.source
            continue
        cells.append(_anchor(cell))
    for check in key.checks:
        if any(c.metadata.get(_pytest_plugin.ROLE_KEY, {}).get("check") == check.id for c in cells):
            continue
        ids = [c.get("id") for c in cells]
        position = next((ids.index(anchor) + 1 for anchor in check.preceding_cells if anchor in ids), len(cells))
        cells.insert(position, _graded_cell(check.source, {"role": "check", "check": check.id}, check.cell_id,
                                            check.outputs))
        restored[check.id] = "deleted"
    for check in key.checks:
        if check.id in restored:
            what = ("was edited; the grader ran the original" if restored[check.id] == "edited"
                    else "was missing; the grader put it back")
            notes.append(f"Check {check.id!r} {what}.")
    return Assembly(cells, restored, notes, sources)


# --------------------------------------------------------------------------------------------------------------
# Running nbval
# --------------------------------------------------------------------------------------------------------------


@dataclass
class NbvalRun:
    records: list[dict]
    returncode: int | None
    timed_out: bool
    output: str


def _subprocess_env(folder: Path) -> dict[str, str]:
    """The environment of pytest and its kernel: no PYTEST_* settings, the plugin's folder and viztools importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    paths = [str(folder)]
    package_root = Path(__file__).resolve().parents[2]
    if package_root.name not in ("site-packages", "dist-packages"):  # a source checkout, maybe not installed
        paths.append(str(package_root))
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    env.update(KERNEL_ENVIRONMENT)
    return env


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def total_time_limit(notebook: NotebookNode, cell_timeout: float) -> float:
    """The default overall limit of a grading run: kernel start-up plus every cell's timeout and grace period."""
    return KERNEL_STARTUP_ALLOWANCE + len(notebook.cells) * (cell_timeout + PER_CELL_SLACK)


def run_nbval(notebook: NotebookNode, folder: Path, cell_timeout: float, total_timeout: float) -> NbvalRun:
    """Run ``pytest --nbval`` on ``notebook`` (written into ``folder``) and collect the plugin's records.

    The plugin is copied beside the notebook and loaded by module name, so the pytest process does not import
    viztools (and torch) just to record results; only the kernel does.
    """
    notebook_path, report = folder / "graded.ipynb", folder / "report.jsonl"
    nbformat.write(notebook, str(notebook_path))
    sanitize = folder / "sanitize.cfg"
    rules = "".join(f"regex: {regex}\nreplace: {replacement}\n" for regex, replacement in feedback.NBVAL_SANITIZE_RULES)
    sanitize.write_text(rules, encoding="utf-8")
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    shutil.copyfile(_pytest_plugin.__file__, folder / f"{PLUGIN_MODULE}.py")
    command = [
        sys.executable, "-m", "pytest", str(notebook_path),
        "--nbval", "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout:g}",
        f"--nbval-sanitize-with={sanitize}", f"--viztools-report={report}",
        "-p", PLUGIN_MODULE, "-p", "no:cacheprovider",
        "-c", str(folder / "pytest.ini"), "--rootdir", str(folder), "-q", "--color=no",
    ]
    process = subprocess.Popen(
        command, cwd=folder, env=_subprocess_env(folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=total_timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        output, _ = process.communicate()
        timed_out = True
    records = _read_records(report)
    if timed_out:  # the kernel runs in its own session (jupyter_client), so it survives its killed parent
        for record in records:
            if record.get("event") == "kernel" and isinstance(record.get("pid"), int):
                _kill_group(record["pid"])
    return NbvalRun(records, None if timed_out else process.returncode, timed_out, output)


def _read_records(report: Path) -> list[dict]:
    if not report.is_file():
        return []
    records = []
    for line in report.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def grade_notebook(
    path: str | Path,
    *,
    key_dir: str | Path | None = None,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    total_timeout: float | None = None,
) -> GradeReport:
    """Grade one student notebook. Problems with the notebook become ``report.message``, never exceptions.

    Args:
        path: the student's ``.ipynb`` (left unchanged).
        key_dir: folder of grading keys (default: the keys shipped with viztools).
        cell_timeout: seconds each cell may run before it is interrupted (nbval's ``--nbval-cell-timeout``).
        total_timeout: seconds the whole run may take before pytest and the kernel are killed (default:
            :func:`total_time_limit`, enough for every cell to use its timeout).
    """
    for name, value in (("cell_timeout", cell_timeout), ("total_timeout", total_timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"{name} must be a positive number of seconds; got {value!r}.")
    path = Path(path)
    report = GradeReport(path=str(path), status="error")
    try:
        student = read_notebook(path)
        key = load_key(identify_exercise(student, path, key_dir), key_dir)
    except (NotebookError, UnknownExerciseError, ValueError) as error:
        report.message = str(error)
        return report
    report.exercise, report.exercise_version, report.max_score = key.exercise, key.version, key.total_points
    version = viztools_metadata(student).get("version")
    if version is not None and version != key.version:
        report.notes.append(f"Your notebook is version {version} of {key.exercise}; it was graded with the checks "
                            f"of version {key.version}.")
    assembly = assemble(student, key)
    report.notes += assembly.notes
    with tempfile.TemporaryDirectory(prefix="viztools-grade-") as folder:
        notebook = assembly.notebook()
        run = run_nbval(notebook, Path(folder), cell_timeout, total_timeout or total_time_limit(notebook, cell_timeout))
    _fill_results(report, key, assembly, run, cell_timeout)
    return report


def _fill_results(report: GradeReport, key: AnswerKey, assembly: Assembly, run: NbvalRun, cell_timeout: float) -> None:
    cells = [r for r in run.records if r.get("event") == "cell"]
    setup_failure = next((r for r in cells if r.get("when") == "setup"), None)
    if setup_failure is not None:
        report.message = (f"The grader could not start a Python kernel ({setup_failure['message']}). Check that "
                          f"`{Path(sys.executable).name} -m ipykernel_launcher --version` works in this environment.")
        return
    if not cells:
        tail = "\n".join(run.output.strip().splitlines()[-15:])
        reason = "it hit the overall time limit" if run.timed_out else f"pytest ended with exit code {run.returncode}"
        report.message = f"The grader could not run the notebook ({reason}):\n{tail}"
        return
    by_check = {r["role"]["check"]: r for r in cells if r.get("role", {}).get("role") == "check"}
    not_run = "not run"
    if run.timed_out:
        not_run = "not run: grading hit its overall time limit and was stopped"
    stopped = feedback.kernel_stopped_reason(cells, assembly.student_sources)
    report.checks = [
        feedback.check_result(check, by_check.get(check.id), restored=assembly.restored.get(check.id),
                              sources=assembly.student_sources, cell_timeout=cell_timeout,
                              not_run_reason=not_run, stopped_reason=stopped)
        for check in key.checks
    ]
    report.score = sum(result.score for result in report.checks)
    for record in cells:
        role = record.get("role", {}).get("role")
        if role == "student":
            problem = feedback.cell_problem(record, assembly.student_sources, cell_timeout)
            if problem is not None:
                report.cell_problems.append(problem)
        elif role == "setup" and record.get("kind") != "ok":
            report.notes.append(f"The grader's setup cell failed: {record.get('message', '')}")
    report.status = "graded"
