"""Exercise builder and grader: solution regions, keys, drift detection, feedback, and real grading runs.

Grading runs start a Jupyter kernel, so those tests are marked slow. Most use a tiny exercise ("90_squares",
built here from a solution notebook) whose kernel imports nothing heavy; the occlusion exercise itself is graded
in its solution, blank and partly solved forms.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import torch

import viztools
from viztools.grading import build, checks, feedback, grade
from viztools.grading.answer_key import DEFAULT_KEY_DIR, AnswerKey, UnknownExerciseError, load_key
from viztools.grading.cli import main as grading_main
from viztools.grading.notebooks import NotebookError, read_notebook
from viztools.hooks import has_hooks
from viztools.occlusion import occlusion

REPO = Path(__file__).resolve().parents[1]
OCCLUSION_SOLUTION = REPO / "solutions" / "03_occlusion.ipynb"
OCCLUSION_EXERCISE = REPO / "exercises" / "03_occlusion.ipynb"


# --------------------------------------------------------------------------------------------------------------
# A tiny exercise
# --------------------------------------------------------------------------------------------------------------


def _cell(kind: str, cell_id: str, source: str, **metadata: object) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    cell.id = cell_id
    cell.metadata = metadata
    return cell


def _check(cell_id: str, points: int, source: str) -> nbformat.NotebookNode:
    return _cell("code", cell_id, source, tags=["check"], viztools={"check": cell_id, "points": points})


SQUARE_CHECK = """# square of small integers
for x in (0, 3, -2):
    print(f"square({x}):", "OK" if square(x) == x * x else f"WRONG - got {square(x)!r}, expected {x * x}")"""
CUBE_CHECK = """# cube of two
print("cube(2):", "OK" if cube(2) == 8 else f"WRONG - got {cube(2)!r}, expected 8")"""


def tiny_solution() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "viztools": {"exercise": "90_squares", "version": 2, "title": "Squares and cubes"},
    }
    notebook.cells = [
        _cell("markdown", "intro", "# Squares\nWrite `square`, then `cube`."),
        _cell("code", "task-square", 'def square(x):\n    """x squared."""\n    ### BEGIN SOLUTION\n'
                                     "    return x * x\n    ### END SOLUTION"),
        _check("check-square", 1, SQUARE_CHECK),
        _cell("markdown", "cube-md", "Now `cube`."),
        _cell("code", "task-cube", "def cube(x):\n    ### BEGIN SOLUTION\n    return x ** 3\n    ### END SOLUTION"),
        _check("check-cube", 2, CUBE_CHECK),
    ]
    return notebook


@pytest.fixture(scope="module")
def tiny_course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A course folder with solutions/, exercises/ and keys/ for the tiny exercise, built by build_exercises."""
    root = tmp_path_factory.mktemp("course")
    (root / "solutions").mkdir()
    nbformat.write(tiny_solution(), str(root / "solutions" / "90_squares.ipynb"))
    build.build_exercises(root / "solutions", root / "exercises", root / "keys")
    return root


def _student(root: Path, name: str, edit: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the tiny exercise with cells replaced (by cell id) or deleted, saved as ``name``."""
    notebook = nbformat.read(str(root / "exercises" / "90_squares.ipynb"), as_version=4)
    notebook.cells = [cell for cell in notebook.cells if cell.id not in drop]
    for cell in notebook.cells:
        if edit and cell.id in edit:
            cell.source = edit[cell.id]
    path = root / name
    nbformat.write(notebook, str(path))
    return path


SQUARE = "def square(x):\n    return x * x"
CUBE = "def cube(x):\n    return x ** 3"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _by_id(report: grade.GradeReport) -> dict[str, grade.CheckResult]:
    return {check.id: check for check in report.checks}


# --------------------------------------------------------------------------------------------------------------
# Solution regions and the exercise
# --------------------------------------------------------------------------------------------------------------


def test_strip_solutions_keeps_indentation_and_names_the_function() -> None:
    source = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\nprint(2)"
    stripped = build.strip_solutions(source)
    assert stripped.splitlines() == [
        "def f(x):",
        "    y = 1",
        "    # YOUR CODE HERE",
        '    raise NotImplementedError("f is not written yet: replace this line with your code")',
        "print(2)",
    ]
    assert build.strip_solutions("a\n## BEGIN SOLUTION\nsecret\n## END SOLUTION", code=False) == "a\nYOUR ANSWER HERE"
    top_level = build.strip_solutions("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")
    assert "this part is not written yet" in top_level and "x = 1" not in top_level


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("### BEGIN SOLUTION\nx = 1", "line 1: BEGIN SOLUTION is never closed"),
        ("x = 1\n### END SOLUTION", "line 2: END SOLUTION without a BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "line 2: BEGIN SOLUTION inside the region"),
    ],
)
def test_strip_solutions_rejects_unbalanced_markers(source: str, message: str) -> None:
    with pytest.raises(build.BuildError, match=message):
        build.strip_solutions(source, where="cell x")


def test_make_exercise_hides_solutions_and_locks_check_cells(tmp_path: Path) -> None:
    solution = tiny_solution()
    solution.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="left over\n")]
    solution.cells[1].execution_count = 4
    solution.cells[1].metadata["scrolled"] = True  # editor metadata does not reach the exercise
    exercise = build.make_exercise(solution, tmp_path / "90_squares.ipynb")
    text = nbformat.writes(exercise)
    assert "x * x\\n" not in text and "x ** 3" not in text and "left over" not in text and "scrolled" not in text
    cells = {cell.id: cell for cell in exercise.cells}
    assert [c.id for c in exercise.cells] == [c.id for c in solution.cells]
    assert "raise NotImplementedError(\"square is not written yet" in cells["task-square"].source
    assert cells["check-square"].source == SQUARE_CHECK
    assert cells["check-square"].metadata["editable"] is False and cells["check-square"].metadata["deletable"] is False
    assert all(c.outputs == [] and c.execution_count is None for c in exercise.cells if c.cell_type == "code")
    assert exercise.metadata["viztools"] == {"exercise": "90_squares", "version": 2, "title": "Squares and cubes"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda nb: nb.metadata["viztools"].update(exercise="91_other"), "must equal the file name"),
        (lambda nb: nb.metadata["viztools"].update(version=0), "version must be a positive integer"),
        (lambda nb: nb.cells[2].metadata["viztools"].update(points=0), "points must be a positive integer"),
        (lambda nb: nb.cells[2].metadata.update(tags=[]), "needs both the tag 'check'"),
        (lambda nb: nb.cells[5].metadata["viztools"].update(check="check-square"), "must be unique"),
        (lambda nb: setattr(nb.cells[2], "source", "print('x: OK')"), "starts with a comment line"),
        (lambda nb: setattr(nb.cells[2], "source", "# c\n### BEGIN SOLUTION\n### END SOLUTION"), "solution region"),
    ],
)
def test_make_exercise_rejects_bad_solutions(tmp_path: Path, change: object, message: str) -> None:
    solution = tiny_solution()
    change(solution)
    with pytest.raises(build.BuildError, match=message):
        build.make_exercise(solution, tmp_path / "90_squares.ipynb")


def _executed(solution: nbformat.NotebookNode, check_texts: dict[str, str]) -> nbformat.NotebookNode:
    """The solution as if run: the given stdout on the named cells."""
    executed = nbformat.from_dict(json.loads(json.dumps(solution)))
    for cell in executed.cells:
        if cell.id in check_texts:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=check_texts[cell.id])]
    return executed


def test_key_holds_checks_and_expected_output_but_no_solution_code(tmp_path: Path) -> None:
    solution = tiny_solution()
    executed = _executed(solution, {"check-square": "square(0): OK\nsquare(3): OK\nsquare(-2): OK\n",
                                    "check-cube": "cube(2): OK\n"})
    key = build.make_key(solution, tmp_path / "90_squares.ipynb", executed)
    text = key.to_json()
    assert "x * x\\n" not in text and "x ** 3" not in text and "BEGIN SOLUTION" not in text
    assert [c.id for c in key.checks] == ["check-square", "check-cube"]
    assert [c.points for c in key.checks] == [1, 2] and key.total_points == 3
    assert key.checks[1].preceding_cells == ["task-cube", "cube-md", "check-square", "task-square", "intro"]
    assert key.checks[0].expected_text == "square(0): OK\nsquare(3): OK\nsquare(-2): OK\n"
    assert key.checks[0].title == "square of small integers"
    assert AnswerKey.from_json(text) == key


@pytest.mark.parametrize(
    ("printed", "message"),
    [
        ("cube(2): WRONG - got 9\n", "fails on the solution"),
        ("cube(2) = 8\n", "may only print verdict lines"),
        ("", "printed nothing"),
    ],
)
def test_key_refuses_checks_that_do_not_pass_on_the_solution(tmp_path: Path, printed: str, message: str) -> None:
    solution = tiny_solution()
    executed = _executed(solution, {"check-square": "square(0): OK\n", "check-cube": printed})
    with pytest.raises(build.BuildError, match=message):
        build.make_key(solution, tmp_path / "90_squares.ipynb", executed)


def test_key_refuses_a_check_that_warns(tmp_path: Path) -> None:
    solution = tiny_solution()
    executed = _executed(solution, {"check-square": "square(0): OK\n", "check-cube": "cube(2): OK\n"})
    executed.cells[5].outputs.append(nbformat.v4.new_output("stream", name="stderr", text="UserWarning: x\n"))
    with pytest.raises(build.BuildError, match="may only print"):
        build.make_key(solution, tmp_path / "90_squares.ipynb", executed)


def test_digest_ignores_outputs_and_editor_metadata_but_not_content() -> None:
    solution = tiny_solution()
    digest = build.solution_digest(solution)
    solution.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="4\n")]
    solution.cells[1].metadata["collapsed"] = True
    solution.metadata["language_info"] = {"name": "python", "version": "3.11.2"}
    assert build.solution_digest(solution) == digest
    solution.cells[1].source = solution.cells[1].source.replace("x * x", "x ** 2")
    assert build.solution_digest(solution) != digest


# --------------------------------------------------------------------------------------------------------------
# Drift detection (build-exercises --check)
# --------------------------------------------------------------------------------------------------------------


def test_committed_exercises_and_keys_are_in_sync_with_the_solutions() -> None:
    problems = build.check_sync(REPO / "solutions", REPO / "exercises", DEFAULT_KEY_DIR)
    assert problems == [], "Run `viztools build-exercises` and commit the result:\n" + "\n".join(problems)


@pytest.fixture
def course_copy(tmp_path: Path) -> Path:
    """A temporary copy of the course's solutions, exercises and keys."""
    shutil.copytree(REPO / "solutions", tmp_path / "solutions")
    shutil.copytree(REPO / "exercises", tmp_path / "exercises")
    shutil.copytree(DEFAULT_KEY_DIR, tmp_path / "keys")
    return tmp_path


def _check_cli(root: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = grading_main(["build-exercises", "--check", "--solutions", str(root / "solutions"),
                         "--exercises", str(root / "exercises"), "--keys", str(root / "keys")])
    return code, capsys.readouterr().out


def test_check_detects_an_edited_solution(course_copy: Path, capsys: pytest.CaptureFixture) -> None:
    assert _check_cli(course_copy, capsys)[0] == 0
    path = course_copy / "solutions" / "03_occlusion.ipynb"
    solution = nbformat.read(str(path), as_version=4)
    task = next(cell for cell in solution.cells if cell.id == "task-naive")
    task.source = task.source.replace("### END SOLUTION", "    # a new line in the solution\n    ### END SOLUTION")
    nbformat.write(solution, str(path))
    code, out = _check_cli(course_copy, capsys)
    assert code == 1
    assert "03_occlusion.json was built from a different version" in out
    assert "03_occlusion.ipynb differs from what" not in out  # the stub hides the edit from the exercise


def test_check_detects_edited_missing_and_stray_files(course_copy: Path, capsys: pytest.CaptureFixture) -> None:
    exercise = course_copy / "exercises" / "03_occlusion.ipynb"
    exercise.write_text(exercise.read_text().replace("Task 1", "Task one"))
    key = course_copy / "keys" / "03_occlusion.json"
    data = json.loads(key.read_text())
    data["checks"][0]["points"] = 5
    key.write_text(json.dumps(data))
    shutil.copy(exercise, course_copy / "exercises" / "04_old.ipynb")
    code, out = _check_cli(course_copy, capsys)
    assert code == 1
    assert "exercises/03_occlusion.ipynb differs" in out
    assert "03_occlusion.json was edited after it was generated" in out
    assert "04_old.ipynb has no solution" in out
    key.unlink()
    assert "03_occlusion.json is missing" in _check_cli(course_copy, capsys)[1]


# --------------------------------------------------------------------------------------------------------------
# Reading notebooks and choosing the exercise (no kernel)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"cells": [', "not valid JSON"),
        ("\x89PNG\r\n\x1a\n\x00\xff", "not a text file"),
        ('{"worksheets": [], "nbformat": 3, "nbformat_minor": 0, "metadata": {}}', "format version 3"),
        ('{"hello": "world"}', "not a Jupyter notebook"),
        ('{"cells": [{"cell_type": "code"}], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}', "not a valid"),
    ],
)
def test_malformed_notebooks_get_a_clear_message(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "03_occlusion.ipynb"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(NotebookError, match=message):
        read_notebook(path)
    report = grade.grade_notebook(path)
    assert report.status == "error" and message in report.message and report.checks == []


def test_grade_cli_exit_code_for_ungradable_notebooks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{")
    assert grading_main(["grade", str(broken), str(tmp_path / "missing.ipynb")]) == 2
    out = capsys.readouterr().out
    assert "broken.ipynb is not a Jupyter notebook: it is not valid JSON" in out
    assert "missing.ipynb: no such file" in out
    assert "Traceback" not in out


def test_exercise_comes_from_metadata_then_file_name(tiny_course: Path) -> None:
    notebook = nbformat.read(str(tiny_course / "exercises" / "90_squares.ipynb"), as_version=4)
    keys = tiny_course / "keys"
    assert grade.identify_exercise(notebook, Path("anything.ipynb"), keys) == "90_squares"
    del notebook.metadata["viztools"]
    assert grade.identify_exercise(notebook, Path("90_squares-ana (1).ipynb"), keys) == "90_squares"
    with pytest.raises(UnknownExerciseError, match=r"none of the known exercises \(90_squares\)"):
        grade.identify_exercise(notebook, Path("homework.ipynb"), keys)


def test_unknown_exercise_is_reported_with_the_known_ones(tiny_course: Path) -> None:
    notebook = nbformat.read(str(tiny_course / "exercises" / "90_squares.ipynb"), as_version=4)
    notebook.metadata["viztools"]["exercise"] = "90_square"
    path = tiny_course / "unknown.ipynb"
    nbformat.write(notebook, str(path))
    report = grade.grade_notebook(path, key_dir=tiny_course / "keys")
    assert report.status == "error"
    assert "No grading key for exercise '90_square'. Did you mean '90_squares'?" in report.message


def test_timeout_must_be_positive(tiny_course: Path) -> None:
    with pytest.raises(ValueError, match="cell_timeout must be a positive number"):
        grade.grade_notebook(tiny_course / "exercises" / "90_squares.ipynb", cell_timeout=0)


# --------------------------------------------------------------------------------------------------------------
# The graded copy (no kernel)
# --------------------------------------------------------------------------------------------------------------


def _roles(assembly: grade.Assembly) -> list[tuple[str, str | int | None]]:
    roles = []
    for cell in assembly.cells:
        role = cell.metadata.get("viztools_grading")
        if role:
            roles.append((role["role"], role.get("check", role.get("cell"))))
    return roles


def test_assemble_restores_edited_and_deleted_checks_in_place(tiny_course: Path) -> None:
    key = load_key("90_squares", tiny_course / "keys")
    path = _student(tiny_course, "tampered.ipynb", edit={"task-square": SQUARE, "check-square": "print('square: OK')"},
                    drop=("check-cube",))
    assembly = grade.assemble(read_notebook(path), key)
    assert _roles(assembly) == [("setup", None), ("student", 1), ("check", "check-square"), ("student", 3),
                                ("check", "check-cube")]
    checks_run = [c for c in assembly.cells if c.metadata.get("viztools_grading", {}).get("role") == "check"]
    assert [c.source for c in checks_run] == [SQUARE_CHECK, CUBE_CHECK]
    assert all(c.execution_count == 1 and c.outputs for c in checks_run)
    assert assembly.restored == {"check-square": "edited", "check-cube": "deleted"}
    stub = ('def cube(x):\n    # YOUR CODE HERE\n'
            '    raise NotImplementedError("cube is not written yet: replace this line with your code")')
    assert assembly.student_sources == {1: SQUARE, 3: stub}


def test_assemble_drops_copies_and_unknown_checks(tiny_course: Path) -> None:
    key = load_key("90_squares", tiny_course / "keys")
    notebook = read_notebook(tiny_course / "exercises" / "90_squares.ipynb")
    duplicate = nbformat.from_dict(json.loads(json.dumps(notebook.cells[2])))
    duplicate.id = "copy"
    unknown = _check("check-old", 1, "# old\nprint('old: OK')")
    notebook.cells += [duplicate, unknown]
    assembly = grade.assemble(notebook, key)
    assert [r for r in _roles(assembly) if r[0] == "check"] == [("check", "check-square"), ("check", "check-cube")]
    assert any("second copy of check 'check-square'" in note for note in assembly.notes)
    assert any("check 'check-old', which this version" in note for note in assembly.notes)


def test_deleted_check_goes_to_the_end_when_no_anchor_survives(tiny_course: Path) -> None:
    key = load_key("90_squares", tiny_course / "keys")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(SQUARE), nbformat.v4.new_code_cell(CUBE)]
    assembly = grade.assemble(notebook, key)
    assert _roles(assembly) == [("setup", None), ("student", 1), ("student", 2), ("check", "check-square"),
                                ("check", "check-cube")]


# --------------------------------------------------------------------------------------------------------------
# Feedback (no kernel)
# --------------------------------------------------------------------------------------------------------------

TRACEBACK = [
    "---------------------------------------------------------------------------",
    "ValueError                                Traceback (most recent call last)",
    "Cell In[1], line 2\n      1 x = 3\n----> 2 print(helper(x))\n",
    "File /usr/lib/python3.11/somewhere.py:10, in wrapper(x)\n      9 def wrapper(x):\n---> 10     return f(x)\n",
    "Cell In[1], line 3, in helper(x)\n      1 def helper(x):\n      2     y = x + 1\n"
    "----> 3     raise ValueError(y)\n",
    "ValueError: 4",
]


def test_errors_are_located_in_the_students_cell() -> None:
    sources = {1: "import math", 4: "def helper(x):\n    y = x + 1\n    raise ValueError(y)"}
    where = feedback.locate(TRACEBACK, sources)
    assert where == "in your code cell 4 (`def helper(x):`), line 3: `raise ValueError(y)`"
    record = {"outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "4", "traceback": TRACEBACK}]}
    assert feedback.exception_feedback(record, sources).startswith("ValueError: 4\n  raised in your code cell 4")
    assert feedback.locate(TRACEBACK, {1: "import math"}) == ""


def test_mismatch_feedback_quotes_wrong_lines_and_ignores_prints() -> None:
    outputs = [{"output_type": "stream", "name": "stdout",
                "text": "debug 1\nsquare(0): OK\nsquare(3): WRONG - got 6, expected 9\n"}]
    text, got = feedback.mismatch_feedback("square(0): OK\nsquare(3): OK\n", outputs)
    assert text == "square(3): WRONG - got 6, expected 9"
    assert got.startswith("debug 1\n")
    missing, _ = feedback.mismatch_feedback("a: OK\nb: OK\n", [{"output_type": "stream", "name": "stdout",
                                                                  "text": "a: OK\n"}])
    assert missing == "Expected these lines, which did not appear:\n  b: OK"


def test_nbval_sanitize_rules_keep_only_verdict_lines() -> None:
    text = "debug at 0x7f00ab\nshape: OK\nvalues: WRONG - off by 1\nUserWarning: careful\n"
    for regex, replacement in feedback.NBVAL_SANITIZE_RULES:
        text = re.sub(regex, replacement, text)
    assert text == "shape: OK\nvalues: WRONG - off by 1\n"


# --------------------------------------------------------------------------------------------------------------
# Check helpers
# --------------------------------------------------------------------------------------------------------------


def test_report_close_says_what_is_wrong(capsys: pytest.CaptureFixture) -> None:
    expected = torch.tensor([[0.5, 0.25], [1.0, 0.0]])
    checks.report_close("map", expected + 5e-5, expected)
    checks.report_close("map", [[0.5, 0.25], [1.0, 0.0]], expected)
    checks.report_close("map", expected[0], expected)
    checks.report_close("map", None, expected)
    checks.report_close("map", torch.full((2, 2), float("nan")), expected)
    wrong = expected.clone()
    wrong[1, 0] = 0.75
    checks.report_close("map", wrong, expected)
    assert capsys.readouterr().out.splitlines() == [
        "map: OK",
        "map: OK",
        "map: WRONG - expected shape (2, 2), got shape (2,)",
        "map: WRONG - expected a tensor of shape (2, 2), got None (does your function end with `return ...`?)",
        "map: WRONG - 4 of 4 values are NaN",
        "map: WRONG - 1 of 4 values differ; the largest difference is at position (1, 0): expected 1, got 0.75 "
        "(allowed difference 0.0001)",
    ]


def test_report_equal_normalizes_sequences(capsys: pytest.CaptureFixture) -> None:
    checks.report_equal("positions", (0, 4, 6), [0, 4, 6])
    checks.report_equal("positions", range(0, 9, 4), [0, 4, 6])
    assert capsys.readouterr().out.splitlines() == [
        "positions: OK", "positions: WRONG - expected [0, 4, 6], got [0, 4, 8]"]


def test_count_forward_passes_records_batches_and_removes_its_hook() -> None:
    model = checks.corner_model()
    with checks.count_forward_passes(model) as sizes:
        model(torch.ones(3, 3, 4, 4))
        model(torch.ones(1, 3, 4, 4))
    assert sizes == [3, 1] and not has_hooks(model.network)
    with pytest.raises(RuntimeError, match="boom"), checks.count_forward_passes(model):
        raise RuntimeError("boom")
    assert not has_hooks(model.network)


def test_corner_model_matches_its_hand_computed_probabilities() -> None:
    model = checks.corner_model()
    image = torch.ones(1, 3, 4, 4)
    image[:, :, 0, 0] = 0.5  # the corner sum drops from 4 to 3.5
    image[:, :, 3, 3] = 0.0  # outside the corner: no effect
    assert torch.allclose(model.predict(image)[0], torch.tensor([torch.sigmoid(torch.tensor(3.5)),
                                                                 torch.sigmoid(torch.tensor(-3.5))]))


def test_the_occlusion_solution_agrees_with_the_library() -> None:
    """The reference solution's functions, run here directly, match viztools.occlusion and the corner model."""
    solution = read_notebook(OCCLUSION_SOLUTION)
    namespace: dict = {"torch": torch}
    for cell_id in ("task-positions", "task-naive", "task-batched"):
        exec(next(c.source for c in solution.cells if c.id == cell_id), namespace)
    model = viztools.load_model("glyphnet", weights="random")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = occlusion(model, image, 3, patch_size=24, stride=9, fill="black", method="naive")  # 6 x 6
    naive = namespace["occlusion_naive"](model, image, 3, 24, 9, fill=0.0)
    batched = namespace["occlusion_batched"](model, image, 3, 24, 9, fill=0.0, batch_size=10)
    assert naive.shape == (6, 6)
    assert torch.allclose(naive, reference.probability, atol=1e-5)
    assert torch.allclose(batched, naive, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Grading runs: the tiny exercise
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_built_tiny_key_has_the_outputs_of_the_executed_solution(tiny_course: Path) -> None:
    key = load_key("90_squares", tiny_course / "keys")
    assert [c.expected_text for c in key.checks] == ["square(0): OK\nsquare(3): OK\nsquare(-2): OK\n",
                                                     "cube(2): OK\n"]
    assert build.check_sync(tiny_course / "solutions", tiny_course / "exercises", tiny_course / "keys") == []


@pytest.mark.slow
def test_tiny_solution_full_marks_and_blank_exercise_zero(tiny_course: Path) -> None:
    keys = tiny_course / "keys"
    solution = grade.grade_notebook(tiny_course / "solutions" / "90_squares.ipynb", key_dir=keys)
    assert solution.status == "graded" and solution.passed and (solution.score, solution.max_score) == (3, 3)
    blank_path = tiny_course / "exercises" / "90_squares.ipynb"
    blank = grade.grade_notebook(blank_path, key_dir=keys)
    assert (blank.score, blank.max_score, blank.passed) == (0, 3, False)
    square, cube = _by_id(blank)["check-square"], _by_id(blank)["check-cube"]
    assert square.status == cube.status == "error"
    assert square.feedback.splitlines()[:2] == [
        "NotImplementedError: square is not written yet: replace this line with your code",
        "  raised in your code cell 1 (`def square(x):`), line 4: `raise NotImplementedError(\"square is not "
        "written yet: replace this ...`",
    ]
    assert "code cell 3 (`def cube(x):`)" in cube.feedback


@pytest.mark.slow
def test_tiny_wrong_answer_tampering_and_prints(tiny_course: Path, capsys: pytest.CaptureFixture) -> None:
    """A wrong square, a debug print and a warning in cube, a faked check and a deleted one; the file stays."""
    cube_with_noise = ("import warnings\ndef cube(x):\n    print('debug', x)\n    warnings.warn('noisy')\n"
                       "    return x**3")
    path = _student(tiny_course, "90_squares-student.ipynb",
                    edit={"task-square": "def square(x):\n    return 2 * x", "task-cube": cube_with_noise,
                          "check-square": "print('square(0): OK')"},
                    drop=("check-cube",))
    before = _sha256(path)
    code = grading_main(["grade", str(path), "--key", str(tiny_course / "keys"), "--json"])
    assert _sha256(path) == before
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == 1 and len(data["results"]) == 1
    result = data["results"][0]
    assert set(result) == {"path", "status", "exercise", "exercise_version", "score", "max_score", "checks",
                           "cell_problems", "notes", "message", "passed"}
    assert (result["status"], result["exercise"], result["exercise_version"]) == ("graded", "90_squares", 2)
    assert (result["score"], result["max_score"], result["passed"]) == (2, 3, False)
    square, cube = result["checks"]
    assert set(square) == {"id", "title", "points", "score", "status", "feedback", "expected", "got", "restored"}
    assert (square["id"], square["status"], square["restored"]) == ("check-square", "failed", "edited")
    assert square["feedback"] == "square(3): WRONG - got 6, expected 9\nsquare(-2): WRONG - got -4, expected 4"
    assert (cube["status"], cube["score"], cube["restored"]) == ("passed", 2, "deleted")
    assert "debug 2" in cube["got"]
    assert any("'check-cube' was missing; the grader put it back" in note for note in result["notes"])


@pytest.mark.slow
def test_tiny_infinite_loop_times_out_and_later_checks_still_run(tiny_course: Path, capsys) -> None:
    path = _student(tiny_course, "loop.ipynb",
                    edit={"task-square": "def square(x):\n    while True:\n        x = x + 1", "task-cube": CUBE})
    code = grading_main(["grade", str(path), "--key", str(tiny_course / "keys"), "--timeout", "3"])
    out = capsys.readouterr().out
    assert code == 1
    assert "TIMEOUT check-square  0/1" in out
    assert "did not finish within 3 s (is there an endless loop, or a very slow one?)" in out
    stopped_at = r"It was stopped in your code cell 1 \(`def square\(x\):`\), line (2: `while True:`|3: `x = x \+ 1`)"
    assert re.search(stopped_at, out)
    assert "PASS    check-cube    2/2" in out
    assert "Score: 2/3 points (1 of 2 checks passed)" in out


@pytest.mark.slow
def test_tiny_kernel_crash_is_reported_without_waiting_for_the_timeout(tiny_course: Path) -> None:
    crash = "import os\ndef square(x):\n    os._exit(1)"
    path = _student(tiny_course, "crash.ipynb", edit={"task-square": crash, "task-cube": CUBE})
    report = grade.grade_notebook(path, key_dir=tiny_course / "keys", cell_timeout=600)
    square, cube = _by_id(report)["check-square"], _by_id(report)["check-cube"]
    assert square.status == "crashed" and "kernel crashed" in square.feedback
    assert cube.status == "not-run"
    assert cube.feedback == "not run: the Python kernel crashed in check 'check-square'."
    assert report.score == 0 and report.status == "graded"


@pytest.mark.slow
def test_tiny_uninterruptible_loop_stops_the_kernel(tiny_course: Path) -> None:
    stubborn = ("def square(x):\n    while True:\n        try:\n            while True:\n                pass\n"
                "        except KeyboardInterrupt:\n            pass")
    path = _student(tiny_course, "stubborn.ipynb", edit={"task-square": stubborn, "task-cube": CUBE})
    report = grade.grade_notebook(path, key_dir=tiny_course / "keys", cell_timeout=2)
    square, cube = _by_id(report)["check-square"], _by_id(report)["check-cube"]
    assert square.status == "timeout" and "could not be interrupted and was shut down" in square.feedback
    assert cube.status == "not-run" and "shut down after a timeout in check 'check-square'" in cube.feedback


@pytest.mark.slow
def test_tiny_error_in_a_student_cell_is_reported(tiny_course: Path) -> None:
    path = _student(tiny_course, "typo.ipynb", edit={"task-square": "def square(x):\n    return x * x\nsquare(",
                                                     "task-cube": CUBE})
    report = grade.grade_notebook(path, key_dir=tiny_course / "keys")
    assert [(p.cell, p.status) for p in report.cell_problems] == [(1, "error")]
    assert report.cell_problems[0].feedback.startswith("SyntaxError")
    square = _by_id(report)["check-square"]
    assert square.status == "error" and square.feedback.startswith("NameError: name 'square' is not defined")
    assert "Hint: something this check uses is not defined" in square.feedback


def _process_gone(pid: int, wait: float = 5.0) -> bool:
    """True once ``pid`` has exited (gone, or a zombie waiting to be reaped), polling for up to ``wait`` s."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + wait
    while True:
        try:
            if "\nState:\tZ" in status.read_text():
                return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@pytest.mark.slow
def test_the_overall_time_limit_stops_pytest_and_the_kernel(tiny_course: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[grade.NbvalRun] = []
    run_nbval = grade.run_nbval
    monkeypatch.setattr(grade, "run_nbval", lambda *args: runs.append(run_nbval(*args)) or runs[-1])
    slow = "import time\ndef square(x):\n    time.sleep(600)\n    return x * x"
    path = _student(tiny_course, "slow.ipynb", edit={"task-square": slow, "task-cube": CUBE})
    report = grade.grade_notebook(path, key_dir=tiny_course / "keys", cell_timeout=300, total_timeout=30)
    assert runs[0].timed_out
    assert [(c.status, c.feedback) for c in report.checks] == [
        ("not-run", "not run: grading hit its overall time limit and was stopped")] * 2
    kernel_pid = next(r["pid"] for r in runs[0].records if r["event"] == "kernel")
    assert _process_gone(kernel_pid)


@pytest.mark.slow
def test_a_kernel_that_cannot_start_is_a_grading_error(tiny_course: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ipykernel_launcher.py").write_text("raise SystemExit(3)\n")  # shadows the real kernel launcher
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    report = grade.grade_notebook(tiny_course / "solutions" / "90_squares.ipynb", key_dir=tiny_course / "keys")
    assert report.status == "error" and report.checks == []
    assert report.message.startswith("The grader could not start a Python kernel (Kernel died before replying")


# --------------------------------------------------------------------------------------------------------------
# Grading runs: the occlusion exercise
# --------------------------------------------------------------------------------------------------------------

OCCLUSION_CHECKS = ["check-positions", "check-naive-corner", "check-naive-glyphnet", "check-naive-one-at-a-time",
                    "check-batched-values", "check-batched-passes"]


@pytest.mark.slow
def test_occlusion_solution_scores_full_marks() -> None:
    before = _sha256(OCCLUSION_SOLUTION)
    report = grade.grade_notebook(OCCLUSION_SOLUTION)
    assert _sha256(OCCLUSION_SOLUTION) == before
    assert [c.id for c in report.checks] == OCCLUSION_CHECKS
    assert [c.status for c in report.checks] == ["passed"] * 6, [c.feedback for c in report.checks]
    assert report.score == report.max_score == 9 and report.cell_problems == [] and report.notes == []


@pytest.mark.slow
def test_occlusion_blank_exercise_scores_zero_with_readable_messages() -> None:
    report = grade.grade_notebook(OCCLUSION_EXERCISE)
    assert report.score == 0 and report.max_score == 9
    assert all(c.status == "error" and c.feedback.startswith("NotImplementedError: ") for c in report.checks)
    by_id = _by_id(report)
    assert "raised in your code cell 2 (`def patch_positions(size, patch_size, stride):`)" in by_id[
        "check-positions"].feedback
    assert "occlusion_naive is not written yet" in by_id["check-naive-corner"].feedback
    assert "raised in your code cell 10 (`def occlusion_batched(" in by_id["check-batched-passes"].feedback
    assert [p.cell for p in report.cell_problems] == [5, 9, 13]  # the try-it, look and speed cells call the stubs


@pytest.mark.slow
def test_occlusion_partly_solved_and_tampered_scores_partially(tmp_path: Path) -> None:
    """Naive done, batched not; a faked batched check and a deleted one are restored, so they still fail."""
    notebook = read_notebook(OCCLUSION_SOLUTION)
    notebook.metadata["viztools"] = {}  # identified by its file name
    for cell in notebook.cells:
        if cell.id == "task-batched":
            cell.source = build.strip_solutions(cell.source)
        if cell.id == "check-batched-values":
            cell.source = "print('batch_size=1: OK')"
    notebook.cells = [cell for cell in notebook.cells if cell.id != "check-batched-passes"]
    path = tmp_path / "03_occlusion_submission.ipynb"
    nbformat.write(notebook, str(path))
    report = grade.grade_notebook(path)
    assert report.exercise == "03_occlusion"
    assert [c.status for c in report.checks] == ["passed"] * 4 + ["error", "error"]
    assert (report.score, report.max_score) == (6, 9)
    by_id = _by_id(report)
    assert by_id["check-batched-values"].restored == "edited" and by_id["check-batched-passes"].restored == "deleted"
    assert "occlusion_batched is not written yet" in by_id["check-batched-passes"].feedback
