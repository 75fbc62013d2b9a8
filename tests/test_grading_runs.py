"""Real grading runs of exercise 03: full marks, zero, partial credit, and every hostile case from issue 10.

Each run starts a sandboxed kernel, so the tests are slow; notebooks that share a run are graded once per module
(fixtures) and each test asserts one property of it. The hostile notebooks are built on a minimal blank base (the
three functions as stubs) so their runs stay short.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import pickle
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from viztools.grading import build, classroom, grade, sandbox
from viztools.grading.cli import main as grading_main
from viztools.grading.notebooks import read_notebook
from viztools.grading.report import GradeReport, report_as_text
from viztools.grading.sandbox import Limits

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OCCLUSION_SOLUTION = REPO / "solutions" / "03_occlusion.ipynb"
OCCLUSION_EXERCISE = REPO / "exercises" / "03_occlusion.ipynb"
CHECKS = ["check-positions", "check-naive-corner", "check-naive-glyphnet", "check-naive-one-at-a-time",
          "check-batched-values", "check-batched-passes"]
STUBS = '''def patch_positions(size, patch_size, stride):
    raise NotImplementedError("patch_positions is not written yet")

def occlusion_naive(model, image, target, patch_size, stride, fill=0.5):
    raise NotImplementedError("occlusion_naive is not written yet")

def occlusion_batched(model, image, target, patch_size, stride, fill=0.5, batch_size=32):
    raise NotImplementedError("occlusion_batched is not written yet")'''
#: A marker no real process has in its command line; the detached children sleep with it.
SLEEP_MARK = "987654.25"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _notebook(path: Path, cells: list[str], *, base: Path | None = None) -> Path:
    """A notebook of exercise 03: the cells of ``base`` (or just the stubs) followed by ``cells``."""
    if base is not None:
        notebook = read_notebook(base)
    else:
        notebook = nbformat.v4.new_notebook()
        notebook.metadata = {"viztools": {"exercise": "03_occlusion", "version": 1, "title": "x"}}
        notebook.cells = [nbformat.v4.new_code_cell(STUBS)]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, str(path))
    return path


def _by_id(report: GradeReport) -> dict:
    return {check.id: check for check in report.checks}


# --------------------------------------------------------------------------------------------------------------
# The solution (with noisy output), graded once from a read-only copy
# --------------------------------------------------------------------------------------------------------------

NOISE = '''# Ordinary output: a tqdm.auto bar, prints without a newline, debug prints that end like verdicts
from tqdm.auto import tqdm
for _ in tqdm(range(50), desc="check-positions: OK"):
    pass
print("Score: 9/9 points", end="")
print("check-batched-passes: WRONG - debug", end="")
import sys
sys.stderr.write("check-naive-corner: WRONG\\n")
_original_positions = patch_positions
def patch_positions(size, patch_size, stride):
    print("debug: patch_positions:", size, "WRONG", end="")
    return _original_positions(size, patch_size, stride)'''


@pytest.fixture(scope="module")
def solution_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[GradeReport, Path, str]:
    """The solution plus noisy output, read-only, graded once: (report, path, sha256 before)."""
    folder = tmp_path_factory.mktemp("solution")
    path = _notebook(folder / "03_occlusion.ipynb", [NOISE], base=OCCLUSION_SOLUTION)
    path.chmod(0o444)
    before = _sha256(path)
    return grade.grade_notebook(path, seed=11), path, before


def test_solution_scores_full_marks(solution_run: tuple[GradeReport, Path, str]) -> None:
    report = solution_run[0]
    assert report.status == "graded", report.message
    assert [c.id for c in report.checks] == CHECKS
    assert [c.status for c in report.checks] == ["passed"] * 6, report_as_text(report)
    assert report.score == report.max_score == 9 and report.cell_problems == [] and report.seed == 11


def test_output_never_changes_a_score(solution_run: tuple[GradeReport, Path, str]) -> None:
    """tqdm.auto bars, prints without newline and verdict-like debug prints in the graded functions are ignored."""
    report = solution_run[0]
    assert report.score == 9
    assert "hidden checks" in report_as_text(report) and "do not count" in report_as_text(report)


def test_the_submission_is_never_written(solution_run: tuple[GradeReport, Path, str]) -> None:
    _, path, before = solution_run
    assert _sha256(path) == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


# --------------------------------------------------------------------------------------------------------------
# Partial credit and an off-limits call
# --------------------------------------------------------------------------------------------------------------


def test_partial_solution_and_an_off_limits_call(tmp_path: Path) -> None:
    """Positions and naive written; batched delegates to the library, which is off limits: 6 of 9 points."""
    notebook = read_notebook(OCCLUSION_SOLUTION)
    notebook.metadata["viztools"] = {}  # identified by its file name
    for cell in notebook.cells:
        if cell.id == "task-batched":
            cell.source = ("from viztools.occlusion import occlusion as occ\n"
                           "def occlusion_batched(model, image, target, patch_size, stride, fill=0.5, batch_size=32):"
                           "\n    return occ(model, image, target, patch_size=patch_size, stride=stride, "
                           "fill='grey' if fill == 0.5 else 'black', method='batched').probability")
        elif cell.id in ("look", "speed"):
            cell.source = "pass"
    path = tmp_path / "03_occlusion_submission.ipynb"
    nbformat.write(notebook, str(path))
    report = grade.grade_notebook(path, seed=3)
    assert report.exercise == "03_occlusion"
    assert [c.status for c in report.checks] == ["passed"] * 4 + ["forbidden"] * 2, report_as_text(report)
    assert (report.score, report.max_score) == (6, 9)
    assert "your code uses viztools.occlusion.occlusion (code cell 10, line 1: `from viztools.occlusion import " \
        "occlusion as occ`), which is off limits for this task" in _by_id(report)["check-batched-values"].feedback


def test_wrong_variants_fail_the_check_that_names_the_mistake(tmp_path: Path) -> None:
    """Positions without the flush last patch; naive without softmax (logits); batched stubbed."""
    wrong = '''import torch
def patch_positions(size, patch_size, stride):
    return list(range(0, size - patch_size + 1, stride))

def occlusion_naive(model, image, target, patch_size, stride, fill=0.5):
    rows = patch_positions(image.shape[-2], patch_size, stride)
    cols = patch_positions(image.shape[-1], patch_size, stride)
    result = torch.zeros(len(rows), len(cols))
    with torch.no_grad():
        for i, top in enumerate(rows):
            for j, left in enumerate(cols):
                occluded = image.clone()
                occluded[:, :, top : top + patch_size, left : left + patch_size] = fill
                result[i, j] = model(occluded)[0, target]
    return result'''
    report = grade.grade_notebook(_notebook(tmp_path / "wrong.ipynb", [wrong]), seed=5)
    checks = _by_id(report)
    assert checks["check-positions"].status == "failed"
    assert "patch_positions(14, 5, 4): expected [0, 4, 8, 9], got [0, 4, 8]" in checks["check-positions"].feedback
    assert "Hint: start at 0" in checks["check-positions"].feedback
    assert checks["check-naive-corner"].status == "failed"
    assert "values differ; the largest difference is at position" in checks["check-naive-corner"].feedback
    assert checks["check-batched-values"].status == "error"
    assert "NotImplementedError: occlusion_batched is not written yet" in checks["check-batched-values"].feedback
    assert report.score == 0


# --------------------------------------------------------------------------------------------------------------
# Cheats that wrote verdicts or references in the old grader: all graded by hidden checks now, so zero
# --------------------------------------------------------------------------------------------------------------

CHEATS = {
    "print": "import builtins\n_print = builtins.print\n"
             "builtins.print = lambda *a, **k: _print('check-positions: OK\\ncheck-naive-corner: OK')",
    "verdict-printer": "import viztools.grading.checks as c\n"
                       "c.report = lambda what, ok, problem='': print(f'{what}: OK')\n"
                       "c.report_close = c.report_equal = lambda what, *a, **k: print(f'{what}: OK')",
    # spelled so that the static check does not see it: the references are computed in the grader anyway
    "library": "import importlib, torch\nlibrary = importlib.import_module('viztools.' + 'occlusion')\n"
               "setattr(library, 'patch_' + 'starts', lambda *a, **k: (0,))\n"
               "setattr(library, 'occ' + 'lusion', lambda *a, **k: type('R', (), {'probability': torch.zeros(1)})())",
    "hard-coded": "ANSWERS = {(10, 4, 3): [0, 3, 6], (10, 4, 4): [0, 4, 6], (5, 5, 2): [0], (64, 16, 8): "
                  "[0, 8, 16, 24, 32, 40, 48], (64, 12, 5): [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 52]}\n"
                  "def patch_positions(size, patch_size, stride):\n"
                  "    return ANSWERS.get((size, patch_size, stride), [0])",
    "copied-check": next(c.source for c in read_notebook(OCCLUSION_EXERCISE).cells if c.get("id") == "check-positions"),
    "input-transformer": "get_ipython().input_transformers_post.append(\n"
                         "    lambda lines: ['print(\"check-positions: OK\")\\n'])",
}


@pytest.fixture(scope="module")
def cheat_run(tmp_path_factory: pytest.TempPathFactory) -> GradeReport:
    folder = tmp_path_factory.mktemp("cheats")
    path = _notebook(folder / "cheat.ipynb", [*CHEATS.values(), "print('after the transformer')"])
    return grade.grade_notebook(path, seed=7)


@pytest.mark.parametrize("cheat", list(CHEATS))
def test_a_cheat_earns_nothing(cheat_run: GradeReport, cheat: str) -> None:
    """Patching print or the verdict printer, patching the library, hard-coding the visible answers, copying a
    check cell, or rewriting cells with an input transformer: the grade is still zero."""
    assert cheat_run.status == "graded" and cheat_run.score == 0, report_as_text(cheat_run)
    positions = _by_id(cheat_run)["check-positions"]
    assert positions.status == "failed" and "expected [0, 4, 8, 9]" in positions.feedback  # the hard-coded one
    assert all(c.status != "passed" for c in cheat_run.checks)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the forged file's protocol
def test_a_forged_result_pickle_cannot_run_code_in_the_grader(tmp_path: Path) -> None:
    """The kernel's torch.save is replaced by a pickle that would create a file when unpickled unsafely."""
    proof = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {proof}",))

    payload = pickle.dumps(Exploit())
    forge = (f"import torch\ndef _forged_save(obj, f, *a, **k):\n    open(f, 'wb').write({payload!r})\n"
             "torch.save = _forged_save\n"
             "def patch_positions(size, patch_size, stride):\n    return [0]")
    report = grade.grade_notebook(_notebook(tmp_path / "forge.ipynb", [forge]), seed=1)
    assert not proof.exists()
    positions = _by_id(report)["check-positions"]
    assert positions.status == "error" and "UnreadableResult" in positions.feedback
    assert report.score == 0


# --------------------------------------------------------------------------------------------------------------
# Escapes: the box's limits and clean-up
# --------------------------------------------------------------------------------------------------------------

ESCAPES = [
    # write to the original submission and to another student's file (both hidden or read-only)
    "import pathlib\nfailed = []\nfor target in TARGETS:\n    try:\n        pathlib.Path(target).write_text('{}')\n"
    "    except OSError as error:\n        failed.append(type(error).__name__)\n"
    "raise RuntimeError(f'writes failed: {len(failed)} of {len(TARGETS)}')",
    # detached children: a new session, and one without the marker variable in its environment
    "import subprocess\n"
    f"subprocess.Popen(['sleep', '{SLEEP_MARK}'], start_new_session=True)\n"
    f"subprocess.Popen(['sleep', '{SLEEP_MARK}'], start_new_session=True, env={{}})",
    # a memory hog
    "hog = bytearray(16 * 2**30)",
    # a fork bomb whose children sleep: bounded by the process limit
    "import os, time\ncount = 0\ntry:\n    for _ in range(5000):\n        if os.fork() == 0:\n"
    "            time.sleep(1000)\n            os._exit(0)\n        count += 1\nexcept OSError:\n    pass\n"
    "raise RuntimeError(f'forked {count}')",
]


def _sleepers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if SLEEP_MARK.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@contextlib.contextmanager
def _sandbox(path: str) -> Iterator[None]:
    """Grade on the given path: "bubblewrap", or "fallback" (setrlimit, a new session, its own uid if it can)."""
    with pytest.MonkeyPatch.context() as patch:
        if path == "fallback":
            patch.setattr(sandbox, "bubblewrap_works", lambda: False)
        yield


@pytest.fixture(scope="module", params=["bubblewrap", "fallback"])
def escape_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[GradeReport, dict[Path, str]]:
    """The escape notebook, graded with bubblewrap and on the fallback path (where that can run as its own uid:
    without bubblewrap, the write, process-limit and clean-up guarantees rest on it)."""
    if request.param == "bubblewrap" and not sandbox.bubblewrap_works():
        pytest.skip("bubblewrap does not work on this machine")
    if request.param == "fallback" and not (os.geteuid() == 0 and sandbox.own_uid_works()):
        pytest.skip("without bubblewrap the kernel cannot run as a uid of its own here (not root, or the Python "
                    "installation is not readable by other users), so the fallback does not promise these")
    folder = tmp_path_factory.mktemp("escape")
    other = folder / "other_student.ipynb"
    other.write_text("{}")
    path = folder / "escape.ipynb"
    targets = f"TARGETS = [{str(path)!r}, {str(other)!r}]"
    _notebook(path, [targets, *ESCAPES])
    before = {p: _sha256(p) for p in (path, other)}
    with _sandbox(request.param):
        report = grade.grade_notebook(path, seed=2, limits=Limits(memory_gb=6, max_processes=48, wall_seconds=300))
    return report, before


def test_the_fallback_path_grades_too(tmp_path: Path) -> None:
    """Without bubblewrap (setrlimit, a new session and a private folder) a notebook is graded the same way."""
    positions = ("def patch_positions(size, patch_size, stride):\n"
                 "    starts = list(range(0, size - patch_size + 1, stride))\n"
                 "    return starts if starts[-1] == size - patch_size else [*starts, size - patch_size]")
    with _sandbox("fallback"):
        report = grade.grade_notebook(_notebook(tmp_path / "fallback.ipynb", [positions]), seed=4)
        assert "no bubblewrap" in sandbox.isolation_summary()
    assert report.status == "graded" and report.score == 1, report_as_text(report)
    assert _by_id(report)["check-positions"].status == "passed"


def _problems(report: GradeReport) -> dict[int, str]:
    return {problem.cell: problem.feedback for problem in report.cell_problems}


def test_a_notebook_cannot_write_its_submission_or_other_files(escape_run) -> None:
    report, before = escape_run
    assert all(_sha256(path) == digest for path, digest in before.items())
    assert "writes failed: 2 of 2" in _problems(report)[3]


def test_detached_children_are_dead_after_grading(escape_run) -> None:
    report = escape_run[0]
    assert 4 not in _problems(report)  # the children started
    assert _sleepers() == []


def test_a_memory_hog_hits_the_memory_limit(escape_run) -> None:
    assert _problems(escape_run[0])[5].startswith("MemoryError")


def test_a_fork_bomb_is_bounded_and_cleaned_up(escape_run) -> None:
    report = escape_run[0]
    message = _problems(report)[6]
    forked = int(message.split("forked ")[1].split()[0].rstrip("'\""))
    assert 0 < forked < 48
    assert report.status == "graded" and report.score == 0


# --------------------------------------------------------------------------------------------------------------
# Kernels that end abnormally or never stop: grading errors, never scores
# --------------------------------------------------------------------------------------------------------------

KILLER = '''import glob, json, os
record = json.dumps({"event": "cell", "kind": "ok", "check": "check-positions", "score": 9, "status": "passed"})
for path in glob.glob("/tmp/**/*", recursive=True) + glob.glob(os.path.expanduser("~/**"), recursive=True):
    try:
        with open(path, "a") as stream:
            stream.write(record + "\\n")
    except OSError:
        pass
for pid in [os.getppid(), *(int(e) for e in os.listdir("/proc") if e.isdigit())]:  # the grader too, if visible
    if pid != os.getpid():
        try:
            os.kill(pid, 9)
        except OSError:
            pass
os.kill(os.getpid(), 9)'''


def test_a_class_survives_a_notebook_that_kills_its_kernel_and_parent(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Forged records appended everywhere it can write, then the parent and the kernel killed: that student is a
    grading error with the exit status; the other student's result (the blank exercise: zero) is kept."""
    submissions = tmp_path / "class"
    submissions.mkdir()
    _notebook(submissions / "killer.ipynb", [KILLER])
    (submissions / "blank.ipynb").write_bytes(OCCLUSION_EXERCISE.read_bytes())
    code = grading_main(["grade", str(submissions), "--jobs", "2", "--csv", str(tmp_path / "book.csv"),
                         "--report", str(tmp_path / "report.json"), "--timeout", "30"])
    out = capsys.readouterr().out
    assert code == 2
    with (tmp_path / "book.csv").open(newline="") as stream:
        reader = csv.DictReader(stream)
        assert reader.fieldnames == ["student", "file", "exercise", "status", *CHECKS, "total", "max", "error"]
        blank, killer = list(reader)
    assert (blank["student"], blank["status"], blank["total"], blank["max"], blank["error"]) == (
        "blank", "graded", "0", "9", "")
    assert (killer["student"], killer["status"], killer["total"]) == ("killer", "error", "")
    assert all(killer[check] == "" for check in CHECKS)
    assert "the kernel ended abnormally (exit status" in killer["error"]
    results = {r["student"]: r for r in json.loads((tmp_path / "report.json").read_text())["results"]}
    assert results["killer"]["exit_status"] is not None and results["killer"]["checks"] == []
    blank_checks = {c["id"]: c for c in results["blank"]["checks"]}
    assert "NotImplementedError: patch_positions is not written yet" in blank_checks["check-positions"]["feedback"]
    assert "raised in your code cell 2 (`def patch_positions(size, patch_size, stride):`)" in blank_checks[
        "check-positions"]["feedback"]
    assert "2 notebooks: 1 graded, 1 grading errors" in out and "Checks most often failed:" in out


def test_endless_loops_cost_one_timeout_each_and_a_stuck_kernel_is_an_error(tmp_path: Path) -> None:
    looping = ("def patch_positions(size, patch_size, stride):\n    while True:\n        pass")
    # The grader ignoring SIGINT, as when a shell or CI starts it in the background: the kernel still stops.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        report = grade.grade_notebook(_notebook(tmp_path / "03_occlusion_loop.ipynb",
                                                [looping, "while True:\n    pass"]), cell_timeout=5, seed=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert report.status == "graded", report.message
    assert [p.status for p in report.cell_problems] == ["timeout"]
    positions = _by_id(report)["check-positions"]
    assert positions.status == "timeout" and "did not finish within 5 s" in positions.feedback
    stubborn = ("while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n"
                "        pass")
    report = grade.grade_notebook(_notebook(tmp_path / "03_occlusion_stuck.ipynb", [stubborn]), cell_timeout=2)
    assert report.status == "error" and report.checks == [] and report.score == 0
    assert "did not stop when interrupted" in report.message


def test_a_kernel_crash_in_a_check_is_a_grading_error(tmp_path: Path) -> None:
    crash = "import os\ndef patch_positions(size, patch_size, stride):\n    os._exit(3)"
    report = grade.grade_notebook(_notebook(tmp_path / "crash.ipynb", [crash]))
    assert report.status == "error" and report.checks == [] and report.exit_status == 3
    assert "the kernel ended abnormally (exit status 3) while check 'check-positions' called patch_positions" in (
        report.message)


def test_build_exercises_writes_exercise_and_key(tmp_path: Path) -> None:
    """build_exercises executes the solution once and checks its visible checks (a real nbclient run)."""
    (tmp_path / "solutions").mkdir()
    for name in ("03_occlusion.ipynb",):
        (tmp_path / "solutions" / name).write_bytes((REPO / "solutions" / name).read_bytes())
    written = build.build_exercises(tmp_path / "solutions", tmp_path / "exercises", tmp_path / "keys")
    assert [p.name for p in written] == ["03_occlusion.ipynb", "03_occlusion.json"]
    assert build.check_sync(tmp_path / "solutions", tmp_path / "exercises", tmp_path / "keys") == []
    assert classroom.collect([tmp_path / "exercises"]) == [tmp_path / "exercises" / "03_occlusion.ipynb"]
