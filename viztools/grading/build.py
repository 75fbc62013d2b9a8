"""``viztools build-exercises``: generate the student notebooks and the grading keys from the solutions.

``solutions/NN_name.ipynb`` is the single source. In the exercise each region between ``### BEGIN SOLUTION``
and ``### END SOLUTION`` becomes ``# YOUR CODE HERE`` plus ``raise NotImplementedError(...)`` at the marker's
indentation (nbgrader's convention), all outputs are cleared and check cells keep their source (for the
students' self-testing). The key gets each check's points, title and task, each task's off-limits calls and a
digest of each visible check's source, never the solution code. Building executes the solution with nbclient and
refuses visible checks that fail or print anything but verdicts, and checks that every check has a hidden check
in ``viztools/grading/hidden/<exercise>.py``. ``check_sync`` reports what is out of date without executing
anything: the key records a digest of the solution's content, so any edit to the solution shows up as drift.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from viztools.grading import static
from viztools.grading.answer_key import DEFAULT_KEY_DIR, EXERCISE_NAME, AnswerKey, CheckKey, TaskKey, key_path
from viztools.grading.grade import source_digest
from viztools.grading.notebooks import (
    CHECK_TAG,
    METADATA_KEY,
    PASS_WORD,
    cell_tags,
    check_id,
    read_notebook,
    verdict_lines,
    viztools_metadata,
)
from viztools.grading.proxy import HIDDEN_DIR, function_name, hidden_checks
from viztools.grading.sandbox import BASE_ENVIRONMENT

BEGIN_SOLUTION = re.compile(r"^(\s*)#+\s*BEGIN SOLUTION\s*$")
END_SOLUTION = re.compile(r"^\s*#+\s*END SOLUTION\s*$")
CODE_STUB = "# YOUR CODE HERE"
TEXT_STUB = "YOUR ANSWER HERE"
CHECK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEF_LINE = re.compile(r"^(\s*)(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(")
EXERCISE_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class BuildError(ValueError):
    """A solution notebook that cannot be turned into an exercise; the message names the cell and the fix."""


# --------------------------------------------------------------------------------------------------------------
# Solution regions
# --------------------------------------------------------------------------------------------------------------


def _enclosing_function(lines: list[str], index: int, indent: str) -> str | None:
    """The name of the innermost ``def`` above line ``index`` that is less indented than ``indent``."""
    for line in reversed(lines[:index]):
        match = DEF_LINE.match(line)
        if match and len(match.group(1)) < len(indent):
            return match.group(2)
    return None


def strip_solutions(source: str, *, code: bool = True, where: str = "cell") -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region of ``source`` with a stub.

    Code regions become ``# YOUR CODE HERE`` and ``raise NotImplementedError("<function>: ...")`` at the
    marker's indentation; Markdown regions become ``YOUR ANSWER HERE``.
    """
    lines = source.split("\n")
    result: list[str] = []
    begin_line: int | None = None
    for number, line in enumerate(lines, start=1):
        begin = BEGIN_SOLUTION.match(line)
        if begin:
            if begin_line is not None:
                raise BuildError(f"{where}, line {number}: BEGIN SOLUTION inside the region opened at line "
                                 f"{begin_line}; close it with ### END SOLUTION first.")
            begin_line = number
            indent = begin.group(1)
            if code:
                function = _enclosing_function(lines, number - 1, indent)
                task = f"{function} is not written yet" if function else "this part is not written yet"
                result += [f"{indent}{CODE_STUB}",
                           f'{indent}raise NotImplementedError("{task}: replace this line with your code")']
            else:
                result.append(f"{indent}{TEXT_STUB}")
        elif END_SOLUTION.match(line):
            if begin_line is None:
                raise BuildError(f"{where}, line {number}: END SOLUTION without a BEGIN SOLUTION above it.")
            begin_line = None
        elif begin_line is None:
            result.append(line)
    if begin_line is not None:
        raise BuildError(f"{where}, line {begin_line}: BEGIN SOLUTION is never closed; add ### END SOLUTION.")
    return "\n".join(result)


def has_solution_region(source: str) -> bool:
    return any(BEGIN_SOLUTION.match(line) or END_SOLUTION.match(line) for line in source.split("\n"))


# --------------------------------------------------------------------------------------------------------------
# Reading and checking a solution notebook
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExerciseInfo:
    exercise: str
    version: int
    title: str


def exercise_info(solution: NotebookNode, path: Path) -> ExerciseInfo:
    """Validate the notebook-level metadata of a solution and return it."""
    meta = viztools_metadata(solution)
    exercise, version, title = meta.get("exercise"), meta.get("version"), meta.get("title")
    if exercise != path.stem:
        raise BuildError(f"{path}: metadata.viztools.exercise must equal the file name {path.stem!r}; "
                         f"got {exercise!r}.")
    if not EXERCISE_NAME.match(path.stem):
        raise BuildError(f"{path}: solution files are named NN_name.ipynb (two digits, lower case); "
                         f"got {path.name!r}.")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BuildError(f"{path}: metadata.viztools.version must be a positive integer; got {version!r}.")
    if not isinstance(title, str) or not title.strip():
        raise BuildError(f"{path}: metadata.viztools.title must be a non-empty string.")
    return ExerciseInfo(exercise, version, title.strip())


def _check_title(source: str, where: str) -> str:
    for line in source.splitlines():
        if line.strip():
            if line.lstrip().startswith("#"):
                return line.lstrip().lstrip("#").strip()
            break
    raise BuildError(f"{where}: a check cell starts with a comment line that says what it checks.")


def _validate_cells(solution: NotebookNode, path: Path) -> None:
    seen_ids: set[str] = set()
    seen_checks: set[str] = set()
    for index, cell in enumerate(solution.cells):
        cell_id = cell.get("id")
        where = f"{path}, cell {index} (id {cell_id!r})"
        if not cell_id:
            raise BuildError(f"{path}, cell {index}: has no cell id; save the notebook with JupyterLab 4 "
                             "(nbformat 4.5) so every cell has one.")
        if cell_id in seen_ids:
            raise BuildError(f"{where}: duplicate cell id.")
        seen_ids.add(cell_id)
        _validate_task(cell, where)
        declared, tagged = check_id(cell), CHECK_TAG in cell_tags(cell)
        if declared is None and not tagged:
            continue
        if declared is None or not tagged:
            raise BuildError(f"{where}: a check cell needs both the tag {CHECK_TAG!r} and metadata.viztools.check.")
        if cell.cell_type != "code":
            raise BuildError(f"{where}: check cells must be code cells.")
        if not CHECK_ID.match(declared) or declared in seen_checks:
            raise BuildError(f"{where}: check id {declared!r} must be unique and use letters, digits, - or _.")
        seen_checks.add(declared)
        points = viztools_metadata(cell).get("points")
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise BuildError(f"{where}: metadata.viztools.points must be a positive integer; got {points!r}.")
        if has_solution_region(cell.source):
            raise BuildError(f"{where}: a check cell cannot contain a solution region.")
        _check_title(cell.source, where)
    if not seen_checks:
        raise BuildError(f"{path}: has no check cells (tag {CHECK_TAG!r} plus metadata.viztools.check).")


def _validate_task(cell: NotebookNode, where: str) -> None:
    """A task cell declares ``metadata.viztools.forbidden``: dotted ``viztools...`` names that exist."""
    if "forbidden" not in viztools_metadata(cell):
        return
    forbidden = viztools_metadata(cell)["forbidden"]
    if cell.cell_type != "code" or not isinstance(forbidden, list):
        raise BuildError(f"{where}: metadata.viztools.forbidden belongs on a task's code cell and is a list of "
                         "dotted names such as 'viztools.occlusion.occlusion'.")
    for name in forbidden:
        if not isinstance(name, str) or static.resolve(name) is None:
            raise BuildError(f"{where}: forbidden call {name!r} is not a viztools function (write its full dotted "
                             "name, e.g. 'viztools.occlusion.occlusion').")


def _content(notebook: NotebookNode) -> dict:
    """What of a notebook matters to the exercise and key: cell types, ids, sources, tags and viztools metadata."""
    cells = [
        {"cell_type": c.cell_type, "id": c.get("id"), "source": c.source, "tags": cell_tags(c),
         METADATA_KEY: viztools_metadata(c)}
        for c in notebook.cells
    ]
    return {METADATA_KEY: viztools_metadata(notebook), "cells": cells}


def solution_digest(solution: NotebookNode) -> str:
    """SHA-256 of the solution's content; unaffected by outputs, execution counts and editor metadata."""
    text = json.dumps(_content(solution), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Exercise and key
# --------------------------------------------------------------------------------------------------------------


def make_exercise(solution: NotebookNode, path: Path) -> NotebookNode:
    """The student notebook: solution regions stubbed, outputs cleared, editor metadata dropped."""
    info = exercise_info(solution, path)
    _validate_cells(solution, path)
    exercise = nbformat.v4.new_notebook()
    exercise.metadata = {
        "kernelspec": dict(EXERCISE_KERNELSPEC),
        "language_info": {"name": "python"},
        METADATA_KEY: {"exercise": info.exercise, "version": info.version, "title": info.title},
    }
    for index, cell in enumerate(solution.cells):
        where = f"{path}, cell {index} (id {cell.id!r})"
        metadata: dict = {}
        if cell_tags(cell):
            metadata["tags"] = cell_tags(cell)
        if viztools_metadata(cell):
            metadata[METADATA_KEY] = copy.deepcopy(viztools_metadata(cell))
        if check_id(cell):
            metadata.update(editable=False, deletable=False)
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(strip_solutions(cell.source, code=True, where=where))
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(strip_solutions(cell.source, code=False, where=where))
            if cell.get("attachments"):
                new.attachments = copy.deepcopy(cell.attachments)
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        new.id = cell.id
        new.metadata = metadata
        exercise.cells.append(new)
    nbformat.validate(exercise)
    return exercise


def check_visible_outputs(cell: NotebookNode, where: str) -> None:
    """A visible check, executed on the solution, printed only verdict lines, all passing."""
    text = ""
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stdout":
            text += output.text
        elif output.output_type == "error":
            raise BuildError(f"{where}: the check raised {output.ename}: {output.evalue} on the solution.")
        else:
            kind = output.get("name", output.output_type)
            raise BuildError(f"{where}: a check cell may only print (stdout); it produced {kind!r}. Use print() "
                             "and make sure the solution emits no warnings.")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BuildError(f"{where}: the check printed nothing; it must print its verdicts (see checks.report).")
    for line in lines:
        if line not in verdict_lines(line):
            raise BuildError(f"{where}: a check may only print verdict lines ('<what>: {PASS_WORD}'); it printed "
                             f"{line!r}.")
        if not line.endswith(f": {PASS_WORD}"):
            raise BuildError(f"{where}: the check fails on the solution: {line}")


def make_key(solution: NotebookNode, path: Path, hidden_dir: Path = HIDDEN_DIR) -> AnswerKey:
    """The grading key; every check must have a hidden check in ``hidden_dir/<exercise>.py``."""
    info = exercise_info(solution, path)
    _validate_cells(solution, path)
    try:
        functions = hidden_checks(info.exercise, hidden_dir)
    except (FileNotFoundError, ValueError) as error:
        raise BuildError(f"{path}: {error} Write one function per check there.") from None
    checks, tasks, task = [], [], None
    for cell in solution.cells:
        if "forbidden" in viztools_metadata(cell):
            task = cell.id
            tasks.append(TaskKey(cell.id, list(viztools_metadata(cell)["forbidden"])))
        declared = check_id(cell)
        if declared is None:
            continue
        where = f"{path}, check {declared!r}"
        if function_name(declared) not in functions:
            raise BuildError(f"{where}: {hidden_dir / (info.exercise + '.py')} has no function "
                             f"{function_name(declared)}(student, rng) for this check.")
        checks.append(CheckKey(id=declared, title=_check_title(cell.source, where),
                               points=int(viztools_metadata(cell)["points"]), task=task,
                               source_sha256=source_digest(cell.source)))
    extra = sorted(set(functions) - {function_name(c.id) for c in checks})
    if extra:
        raise BuildError(f"{path}: hidden checks {', '.join(extra)} have no check cell in the solution (a check "
                         "cell sets the points).")
    return AnswerKey(info.exercise, info.version, info.title, solution_digest(solution), checks, tasks)


def execute_notebook(notebook: NotebookNode, cwd: Path, cell_timeout: float = 300.0) -> NotebookNode:
    """Run a copy of ``notebook`` top to bottom with nbclient in a kernel of the current Python environment."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    class CurrentPython(KernelSpecManager):
        """Every kernel name means ipykernel in this interpreter (no installed kernelspec needed)."""

        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="Python (viztools build)", language="python")

    executed = copy.deepcopy(notebook)
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=CurrentPython())
    client = NotebookClient(executed, km=manager, timeout=cell_timeout, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env={**os.environ, **BASE_ENVIRONMENT, "PATH": os.environ.get("PATH", "")},
                       stderr=subprocess.DEVNULL)
    except CellExecutionError as error:
        raise BuildError(f"The solution must run without errors:\n{error}") from None
    return executed


def _solution_paths(solutions_dir: Path) -> list[Path]:
    if not solutions_dir.is_dir():
        raise BuildError(f"No solutions folder at {solutions_dir}; run from the course folder or pass --solutions.")
    paths = sorted(p for p in solutions_dir.glob("*.ipynb") if not p.name.startswith("."))
    if not paths:
        raise BuildError(f"{solutions_dir} holds no solution notebooks (NN_name.ipynb).")
    return paths


def build_exercises(
    solutions_dir: str | Path = "solutions",
    exercises_dir: str | Path = "exercises",
    key_dir: str | Path | None = None,
    *,
    cell_timeout: float = 300.0,
    hidden_dir: Path = HIDDEN_DIR,
) -> list[Path]:
    """Generate ``exercises/NN_*.ipynb`` and ``keys/NN_*.json`` from every solution; return the files written."""
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    key_dir = Path(key_dir or DEFAULT_KEY_DIR)
    written: list[Path] = []
    for path in _solution_paths(solutions_dir):
        solution = read_notebook(path)
        exercise = make_exercise(solution, path)
        key = make_key(solution, path, hidden_dir)
        executed = execute_notebook(solution, path.parent, cell_timeout)
        for cell in executed.cells:
            if check_id(cell) is not None:
                check_visible_outputs(cell, f"{path}, check {check_id(cell)!r}")
        exercises_dir.mkdir(parents=True, exist_ok=True)
        key_dir.mkdir(parents=True, exist_ok=True)
        exercise_path, key_file = exercises_dir / path.name, key_path(key.exercise, key_dir)
        exercise_path.write_text(nbformat.writes(exercise) + "\n", encoding="utf-8")
        key_file.write_text(key.to_json(), encoding="utf-8")
        written += [exercise_path, key_file]
    return written


def check_sync(
    solutions_dir: str | Path = "solutions",
    exercises_dir: str | Path = "exercises",
    key_dir: str | Path | None = None,
    hidden_dir: Path = HIDDEN_DIR,
) -> list[str]:
    """Problems that make the committed exercises and keys differ from what the solutions generate (empty: in sync).

    Needs no kernel: the exercise is regenerated and compared as text; the key's ``solution_sha256`` must match
    the solution and its other fields must match a freshly generated key (which needs every hidden check).
    """
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    key_dir = Path(key_dir or DEFAULT_KEY_DIR)
    problems: list[str] = []
    names: set[str] = set()
    for path in _solution_paths(solutions_dir):
        names.add(path.stem)
        solution = read_notebook(path)
        exercise_path, key_file = exercises_dir / path.name, key_path(path.stem, key_dir)
        expected = nbformat.writes(make_exercise(solution, path)) + "\n"
        if not exercise_path.is_file():
            problems.append(f"{exercise_path} is missing.")
        elif exercise_path.read_text(encoding="utf-8") != expected:
            problems.append(f"{exercise_path} differs from what {path} generates.")
        if not key_file.is_file():
            problems.append(f"{key_file} is missing.")
            continue
        try:
            committed = AnswerKey.from_json(key_file.read_text(encoding="utf-8"), source=str(key_file))
        except ValueError as error:
            problems.append(str(error))
            continue
        try:
            fresh = make_key(solution, path, hidden_dir)
        except BuildError as error:
            problems.append(str(error))
            continue
        if committed.solution_sha256 != fresh.solution_sha256:
            problems.append(f"{key_file} was built from a different version of {path}.")
        elif committed != fresh:
            problems.append(f"{key_file} was edited after it was generated from {path}.")
    for stray in sorted(exercises_dir.glob("*.ipynb")) if exercises_dir.is_dir() else []:
        if stray.stem not in names:
            problems.append(f"{stray} has no solution in {solutions_dir}.")
    for stray in sorted(key_dir.glob("*.json")) if key_dir.is_dir() else []:
        if stray.stem not in names:
            problems.append(f"{stray} has no solution in {solutions_dir}.")
    return problems
