"""Exercise builder and grader without a kernel: solution regions, keys, drift, exercise ids, off-limits calls,
feedback, check helpers, hidden-check references and the gradebook. Grading runs are in test_grading_runs.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nbformat
import pytest
import torch

import viztools
from viztools.grading import build, checks, classroom, feedback, grade, static
from viztools.grading.answer_key import DEFAULT_KEY_DIR, AnswerKey, UnknownExerciseError, load_key
from viztools.grading.cli import main as grading_main
from viztools.grading.notebooks import NotebookError, read_notebook
from viztools.grading.proxy import HIDDEN_DIR, hidden_checks
from viztools.grading.report import CheckResult, GradeReport
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


TINY_HIDDEN = """
def check_square(student, rng):
    x = rng.randrange(-50, 50)
    got = student.call("square", x).value
    return [] if got == x * x else [f"square({x}): expected {x * x}, got {got!r}"]


def check_cube(student, rng):
    return []
"""


@pytest.fixture
def tiny_hidden(tmp_path: Path) -> Path:
    """A hidden-checks folder for the tiny exercise."""
    folder = tmp_path / "hidden"
    folder.mkdir()
    (folder / "90_squares.py").write_text(TINY_HIDDEN)
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def test_key_holds_points_tasks_and_digests_but_no_solution_code(tmp_path: Path, tiny_hidden: Path) -> None:
    solution = tiny_solution()
    solution.cells[4].metadata["viztools"] = {"forbidden": ["viztools.occlusion.occlusion"]}
    key = build.make_key(solution, tmp_path / "90_squares.ipynb", tiny_hidden)
    text = key.to_json()
    assert "x * x\\n" not in text and "x ** 3" not in text and "BEGIN SOLUTION" not in text
    assert [c.id for c in key.checks] == ["check-square", "check-cube"]
    assert [c.points for c in key.checks] == [1, 2] and key.total_points == 3
    assert [c.task for c in key.checks] == [None, "task-cube"]
    assert [(t.id, t.forbidden) for t in key.tasks] == [("task-cube", ["viztools.occlusion.occlusion"])]
    assert key.checks[0].source_sha256 == grade.source_digest(SQUARE_CHECK + "\n")
    assert key.checks[0].title == "square of small integers"
    assert AnswerKey.from_json(text) == key


def test_key_needs_a_hidden_check_per_check_and_a_check_cell_per_hidden_check(tmp_path: Path,
                                                                             tiny_hidden: Path) -> None:
    path = tmp_path / "90_squares.ipynb"
    with pytest.raises(build.BuildError, match="hidden checks for exercise '90_squares'"):
        build.make_key(tiny_solution(), path, tmp_path)
    (tiny_hidden / "90_squares.py").write_text(TINY_HIDDEN.replace("def check_cube", "def check_kube"))
    with pytest.raises(build.BuildError, match="has no function check_cube"):
        build.make_key(tiny_solution(), path, tiny_hidden)
    (tiny_hidden / "90_squares.py").write_text(TINY_HIDDEN + "\ndef check_extra(student, rng):\n    return []\n")
    with pytest.raises(build.BuildError, match="check_extra have no check cell"):
        build.make_key(tiny_solution(), path, tiny_hidden)


@pytest.mark.parametrize("forbidden", [["viztools.no_such_function"], "viztools.occlusion.occlusion", [3]])
def test_forbidden_calls_must_name_viztools_functions(tmp_path: Path, forbidden: object) -> None:
    solution = tiny_solution()
    solution.cells[1].metadata["viztools"] = {"forbidden": forbidden}
    with pytest.raises(build.BuildError, match="forbidden"):
        build.make_exercise(solution, tmp_path / "90_squares.ipynb")


def _stdout(text: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("# c")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    return cell


@pytest.mark.parametrize(
    ("printed", "message"),
    [
        ("cube(2): WRONG - got 9\n", "fails on the solution"),
        ("cube(2) = 8\n", "may only print verdict lines"),
        ("", "printed nothing"),
    ],
)
def test_build_refuses_visible_checks_that_do_not_pass_on_the_solution(printed: str, message: str) -> None:
    with pytest.raises(build.BuildError, match=message):
        build.check_visible_outputs(_stdout(printed), "check")


def test_build_refuses_a_visible_check_that_warns() -> None:
    cell = _stdout("cube(2): OK\n")
    cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text="UserWarning: x\n"))
    with pytest.raises(build.BuildError, match="may only print"):
        build.check_visible_outputs(cell, "check")


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
    """A temporary copy of exercise 03's solution, exercise and key."""
    for folder, name in (("solutions", "03_occlusion.ipynb"), ("exercises", "03_occlusion.ipynb"),
                         ("keys", "03_occlusion.json")):
        (tmp_path / folder).mkdir()
        source = DEFAULT_KEY_DIR / name if folder == "keys" else REPO / folder / name
        shutil.copy(source, tmp_path / folder / name)
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
    assert grading_main(["grade", str(broken)]) == 2
    out = capsys.readouterr().out
    assert "broken.ipynb is not a Jupyter notebook: it is not valid JSON" in out
    assert "Could not grade (a grading error, not a score)" in out
    assert grading_main(["grade", str(broken), str(tmp_path / "missing.ipynb")]) == 2
    out = capsys.readouterr().out
    assert "2 notebooks: 0 graded, 2 grading errors" in out
    assert "broken: " in out and "missing.ipynb: no such file" in out
    assert "Traceback" not in out


def test_exercise_comes_from_metadata_then_file_name() -> None:
    notebook = read_notebook(OCCLUSION_EXERCISE)
    assert grade.identify_exercise(notebook, Path("anything.ipynb")) == "03_occlusion"
    del notebook.metadata["viztools"]
    assert grade.identify_exercise(notebook, Path("03_occlusion-ana (1).ipynb")) == "03_occlusion"
    with pytest.raises(UnknownExerciseError, match=r"none of the known exercises \(.*03_occlusion"):
        grade.identify_exercise(notebook, Path("homework.ipynb"))


def test_unknown_exercise_is_reported_with_the_known_ones(tmp_path: Path) -> None:
    notebook = read_notebook(OCCLUSION_EXERCISE)
    notebook.metadata["viztools"]["exercise"] = "03_occlusio"
    path = tmp_path / "unknown.ipynb"
    nbformat.write(notebook, str(path))
    report = grade.grade_notebook(path)
    assert report.status == "error" and report.checks == []
    assert "No grading key for exercise '03_occlusio'. Did you mean '03_occlusion'?" in report.message


@pytest.mark.parametrize("declared", ["/tmp/evil/03_occlusion", "../../../tmp/evil", "03_occlusion/../x", 3, ""])
def test_an_exercise_id_that_is_a_path_is_refused_before_anything_is_read(tmp_path: Path, declared: object) -> None:
    """Hostile: the notebook names a key (and hidden checks) the student wrote; only exercise names are accepted."""
    evil = tmp_path / "evil"
    evil.mkdir()
    key = json.loads((DEFAULT_KEY_DIR / "03_occlusion.json").read_text())
    (evil / "03_occlusion.json").write_text(json.dumps({**key, "checks": []}))
    (evil / "03_occlusion.py").write_text("raise SystemExit('the grader ran student code')\n")
    notebook = read_notebook(OCCLUSION_EXERCISE)
    notebook.metadata["viztools"]["exercise"] = declared if declared != "/tmp/evil/03_occlusion" else str(evil / "x")
    path = tmp_path / "student.ipynb"
    nbformat.write(notebook, str(path))
    report = grade.grade_notebook(path)
    assert report.status == "error" and report.checks == [] and report.score == 0
    assert "not an exercise name" in report.message
    with pytest.raises(UnknownExerciseError, match="not an exercise name"):
        load_key(str(evil / "03_occlusion"))
    with pytest.raises(ValueError, match="not an exercise name"):
        hidden_checks("../evil/03_occlusion")


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cell_timeout must be a positive number"):
        grade.grade_notebook(OCCLUSION_EXERCISE, cell_timeout=0)


# --------------------------------------------------------------------------------------------------------------
# Off-limits calls (static, no kernel)
# --------------------------------------------------------------------------------------------------------------

FORBIDDEN = ["viztools.occlusion.occlusion", "viztools.occlusion.occlusion_coarse_to_fine"]


@pytest.mark.parametrize(
    "source",
    [
        "import viztools\ndef f(m, x):\n    return viztools.occlusion.occlusion(m, x).probability",
        "from viztools.occlusion import occlusion as occ\n",
        "from viztools import occlusion\ny = occlusion.occlusion",
        "import viztools.occlusion as o\nz = o.occlusion_coarse_to_fine",
        "import viztools as v\nv.occlusion_coarse_to_fine(None, None)",  # a re-export of a forbidden function
        "%matplotlib inline\nimport viztools\nviztools.occlusion.occlusion = lambda *a, **k: None",
    ],
)
def test_off_limits_calls_are_found_through_imports_and_aliases(source: str) -> None:
    uses = static.forbidden_uses({3: "x = 1", 4: source}, FORBIDDEN)
    assert uses and all(use.cell == 4 for use in uses)


def test_allowed_library_names_and_own_functions_pass() -> None:
    sources = {1: "from viztools.occlusion import OcclusionResult, plot_occlusion\nimport viztools",
               2: "def occlusion(x):\n    return x\nocclusion(3)\nviztools.load_model('glyphnet')",
               3: "this is not python ("}
    assert static.forbidden_uses(sources, FORBIDDEN) == []


def test_forbidden_use_fails_the_tasks_checks_with_a_message() -> None:
    key = load_key("03_occlusion")
    sources = {1: "import viztools", 2: "def occlusion_batched(m, x, t, p, s, fill=0.5, batch_size=32):\n"
                                        "    return viztools.occlusion.occlusion(m, x, t).probability"}
    found = grade.forbidden_by_task(key, sources, {1: "setup", 2: "task-batched"})
    assert set(found) == {"task-batched"}  # the naive task's cell does not use it
    assert found["task-batched"].startswith("your code uses viztools.occlusion.occlusion (code cell 2, line 2: "
                                            "`viztools.occlusion.occlusion`), which is off limits for this task")
    assert set(grade.forbidden_by_task(key, sources, {1: "setup", 2: "a-cell-i-added"})) == {"task-naive",
                                                                                          "task-batched"}


def test_visible_check_cells_are_not_run_edited_or_not_but_copies_elsewhere_are_student_code() -> None:
    notebook = read_notebook(OCCLUSION_EXERCISE)
    key = load_key("03_occlusion")
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    code[2].source = code[2].source + "\nprint('edited')"  # the first visible check, edited in place (same id)
    sources = grade.student_cells(notebook, key)
    assert 3 not in sources and 7 not in sources  # code cell 7 is the unchanged check-naive-glyphnet
    assert len(sources) == len(code) - len(key.checks)
    # its library import (the reference it compares with) does not count as an off-limits call of any task
    assert grade.forbidden_by_task(key, sources, grade.code_cell_ids(notebook)) == {}
    copy = nbformat.v4.new_code_cell(code[2].source)  # the same check pasted as a new cell: a new id
    notebook.cells.append(copy)
    assert len(code) + 1 in grade.student_cells(notebook, key)


# --------------------------------------------------------------------------------------------------------------
# Feedback (no kernel)
# --------------------------------------------------------------------------------------------------------------


def test_errors_are_located_in_the_students_cell() -> None:
    sources = {1: "import math", 4: "def helper(x):\n    y = x + 1\n    raise ValueError(y)"}
    frames = [["/x/_kernel.py", 90, "result = function(*args, **kwargs)"], ["<ipython-input-3>", 3,
                                                                             "raise ValueError(y)"]]
    assert feedback.locate(frames, sources) == "in your code cell 4 (`def helper(x):`), line 3: `raise ValueError(y)`"
    error = {"type": "ValueError", "message": "4", "frames": frames}
    assert feedback.exception_feedback(error, sources).startswith("ValueError: 4\n  raised in your code cell 4")
    assert feedback.locate(frames, {1: "import math"}) == ""
    assert feedback.locate([["bad"], "junk", [1, "x", 3]], sources) == ""  # forged frames are ignored


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




def test_the_hidden_reference_matches_the_library() -> None:
    """The grader's own reference map (hidden checks of 03) equals viztools' naive occlusion, grey and black."""
    reference_map = _hidden_module_attr("reference_map")
    model = viztools.load_model("glyphnet", weights="random")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for fill, value in (("grey", 0.5), ("black", 0.0)):
        library = occlusion(model, image, 2, patch_size=20, stride=11, fill=fill, method="naive").probability
        assert torch.allclose(reference_map(model, image, 2, 20, 11, value), library, atol=1e-6)


def _hidden_module_attr(name: str) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("hidden_03_for_tests", HIDDEN_DIR / "03_occlusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_grading_loads_its_models_on_the_cpu_where_load_model_would_pick_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A score must not depend on the grading machine: where load_model's default device is not the CPU ("meta"
    stands in for a GPU here), the models the kernel hands to the student's functions and the hidden checks' own
    GlyphNet are still on the CPU, and the sandboxed kernel sees no CUDA device."""
    from viztools.grading._kernel import Kernel
    from viztools.grading.sandbox import BASE_ENVIRONMENT

    resolve = viztools.models.resolve_device
    monkeypatch.setattr(viztools.models, "resolve_device",
                        lambda device=None: torch.device("meta") if device is None else resolve(device))
    assert viztools.load_model("glyphnet", quiet=True).device.type == "meta"  # the stand-in GPU is the default
    kernel = Kernel.__new__(Kernel)  # only its model cache is needed, not a shell
    kernel.models = {}
    assert kernel.model({"model": "glyphnet"}).device.type == "cpu"
    assert kernel.model({"model": "glyphnet", "weights": "random"}).device.type == "cpu"
    from viztools.grading.proxy import reference_model

    assert reference_model().device.type == "cpu"  # the model hidden checks compute expected values with
    for path in sorted(HIDDEN_DIR.glob("*.py")):  # ... and the only way they load one
        assert "load_model(" not in path.read_text(), f"{path.name}: load models through proxy.reference_model"
    assert BASE_ENVIRONMENT["CUDA_VISIBLE_DEVICES"] == ""


def test_every_check_of_every_exercise_has_a_hidden_check() -> None:
    for exercise in ("03_occlusion",):
        functions = hidden_checks(exercise)
        assert sorted(functions) == sorted(c.id.replace("-", "_") for c in load_key(exercise).checks)


# --------------------------------------------------------------------------------------------------------------
# Grading a class: shards, ids, gradebook, merge, summary (no kernel)
# --------------------------------------------------------------------------------------------------------------


def test_shards_split_the_sorted_notebooks_deterministically(tmp_path: Path) -> None:
    for name in ("b.ipynb", "a.ipynb", "sub/c.ipynb", "sub/.ipynb_checkpoints/c-checkpoint.ipynb", "d.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    paths = classroom.collect([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a.ipynb", "b.ipynb", "sub/c.ipynb"]
    shards = [classroom.shard(paths, i, 2) for i in (1, 2)]
    assert sorted(shards[0] + shards[1]) == paths and not set(shards[0]) & set(shards[1])
    assert classroom.shard(list(reversed(paths)), 1, 2) == shards[0]
    assert classroom.parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/2/3"):
        with pytest.raises(classroom.GradebookError, match="--shard"):
            classroom.parse_shard(bad)


def test_student_ids_come_from_file_names() -> None:
    ids = classroom.student_ids([Path("a/ana.ipynb"), Path("b/ana.ipynb"), Path("a/bo.ipynb")])
    assert ids == {Path("a/ana.ipynb"): "a/ana", Path("b/ana.ipynb"): "b/ana", Path("a/bo.ipynb"): "bo"}


def _report(student: str, scores: list[int] | None, message: str = "") -> GradeReport:
    if scores is None:
        return GradeReport(path=f"{student}.ipynb", status="error", student=student, exercise="03_occlusion",
                           message=message, exit_status=-9)
    checks = [CheckResult(f"check-{i}", "t", 2, score, "passed" if score == 2 else "failed", "")
              for i, score in enumerate(scores)]
    return GradeReport(path=f"{student}.ipynb", status="graded", student=student, exercise="03_occlusion",
                       score=sum(scores), max_score=2 * len(scores), checks=checks)


def test_gradebook_has_a_row_per_student_and_errors_have_no_points(tmp_path: Path) -> None:
    reports = [_report("bo", [2, 0]), _report("ana", [2, 2]), _report("cy", None, "the kernel died\nmore")]
    classroom.write_gradebook(reports, tmp_path / "book.csv")
    lines = (tmp_path / "book.csv").read_text().splitlines()
    assert lines == ["student,file,exercise,status,check-0,check-1,total,max,error",
                     "ana,ana.ipynb,03_occlusion,graded,2,2,4,4,",
                     "bo,bo.ipynb,03_occlusion,graded,2,0,2,4,",
                     "cy,cy.ipynb,03_occlusion,error,,,,,the kernel died"]
    classroom.write_report(reports, tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["student"] for r in data["results"]] == ["ana", "bo", "cy"]
    assert GradeReport.from_dict(data["results"][1]) == reports[0]
    text = classroom.summary(reports, 12.0)
    assert text.splitlines()[0] == "3 notebooks: 2 graded, 1 grading errors in 12 s"
    assert "    4/4     1  ####" in text and "  check-1: 1 of 2" in text and "  cy: the kernel died" in text


def test_merge_joins_shard_gradebooks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    classroom.write_gradebook([_report("bo", [2, 0])], tmp_path / "1.csv")
    classroom.write_gradebook([_report("ana", [2, 2]), _report("cy", None, "x")], tmp_path / "2.csv")
    code = grading_main(["gradebook", "merge", str(tmp_path / "1.csv"), str(tmp_path / "2.csv"), "-o",
                         str(tmp_path / "all.csv")])
    assert code == 0 and "3 students" in capsys.readouterr().out
    merged = (tmp_path / "all.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in merged] == ["student", "ana", "bo", "cy"]
    assert grading_main(["gradebook", "merge", str(tmp_path / "1.csv"), str(tmp_path / "1.csv"), "-o",
                         str(tmp_path / "twice.csv")]) == 2
    assert "shards must not overlap" in capsys.readouterr().err
