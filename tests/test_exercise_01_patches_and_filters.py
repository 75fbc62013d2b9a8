"""Exercise 01 (patches and filters): the hidden checks pass the solution, fail wrong variants with the right hint.

The hidden checks run in-process against the solution's own task cells through a stand-in for the grader's
``Student`` proxy (arguments and results take the same ``torch.save`` round trip as with the kernel); one real
grading run each of the solution and the blank exercise is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from exercise_support import run_hidden_check
from exercise_support import solution_namespace as support_namespace

from viztools.grading import grade
from viztools.grading.answer_key import load_key
from viztools.grading.proxy import StudentError, hidden_checks

REPO = Path(__file__).resolve().parents[1]
EXERCISE = "01_patches_and_filters"
SOLUTION, BLANK = REPO / "solutions" / f"{EXERCISE}.ipynb", REPO / "exercises" / f"{EXERCISE}.ipynb"
CHECKS = ["check-field-size", "check-unit-box", "check-strongest-units", "check-top-patches"]


CHECK_FUNCTIONS = hidden_checks(EXERCISE)


def solution_namespace(**replace: object) -> dict:
    """The solution's task cells in a fresh namespace; ``replace`` overrides some of its functions."""
    return support_namespace(EXERCISE, replace=replace)


def run(check: str, namespace: dict, seed: int = 0) -> list[str]:
    return run_hidden_check(EXERCISE, check, namespace, seed)


def size_with_kernel(layers):
    size, jump = 1, 1
    for kernel, stride, _ in layers:
        size += kernel * jump
        jump *= stride
    return size, jump


def size_jump_first(layers):
    size, jump = 1, 1
    for kernel, stride, _ in layers:
        jump *= stride
        size += (kernel - 1) * jump
    return size, jump


def box_without_padding(layers, row, col, image_size):
    size, jump = 1, 1
    for kernel, stride, _ in layers:
        size += (kernel - 1) * jump
        jump *= stride
    top, left = row * jump, col * jump
    return max(top, 0), min(top + size, image_size), max(left, 0), min(left + size, image_size)


def box_inclusive(layers, row, col, image_size):
    size, jump, start = 1, 1, 0
    for kernel, stride, padding in layers:
        size += (kernel - 1) * jump
        start -= padding * jump
        jump *= stride
    top, left = start + row * jump, start + col * jump
    return max(top, 0), min(top + size - 1, image_size), max(left, 0), min(left + size - 1, image_size)


def box_unclipped(layers, row, col, image_size):
    size, jump, start = 1, 1, 0
    for kernel, stride, padding in layers:
        size += (kernel - 1) * jump
        start -= padding * jump
        jump *= stride
    top, left = start + row * jump, start + col * jump
    return top, top + size, left, left + size


def units_global_topk(activations, channel, k):
    maps = activations[:, channel]
    height, width = maps.shape[1:]
    values, flat = maps.flatten().topk(k)
    images, within = flat // (height * width), flat % (height * width)
    return values, images, within // width, within % width


def units_swapped(activations, channel, k):
    maps = activations[:, channel]
    best, flat = maps.flatten(1).max(dim=1)
    values, images = best.topk(k)
    return values, images, flat[images] // maps.shape[1], flat[images] % maps.shape[1]


def units_ascending(activations, channel, k):
    maps = activations[:, channel]
    best, flat = maps.flatten(1).max(dim=1)
    values, images = best.topk(k, largest=False)
    return values, images, flat[images] // maps.shape[2], flat[images] % maps.shape[2]


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_solution_passes_every_hidden_check(check: str, seed: int) -> None:
    assert run(check, solution_namespace(), seed) == []


def test_checks_and_hidden_checks_match() -> None:
    assert sorted(CHECK_FUNCTIONS) == sorted(c.replace("-", "_") for c in CHECKS)


@pytest.mark.parametrize(("check", "wrong", "message"), [
    ("check-field-size", {"field_size_and_jump": size_with_kernel}, "(kernel - 1) x jump pixels"),
    ("check-field-size", {"field_size_and_jump": size_jump_first}, "before adding"),
    ("check-unit-box", {"unit_box": box_without_padding}, "ignoring the padding"),
    ("check-unit-box", {"unit_box": box_inclusive}, "exclusive"),
    ("check-unit-box", {"unit_box": box_unclipped}, "not clipped"),
    ("check-strongest-units", {"strongest_units": units_global_topk}, "more than once"),
    ("check-strongest-units", {"strongest_units": units_swapped}, "rows and columns are mixed up"),
    ("check-strongest-units", {"strongest_units": units_ascending}, "weakest images"),
    ("check-top-patches", {"unit_box": box_without_padding}, "Hint: take (values, image_indices"),
    ("check-top-patches", {"strongest_units": units_global_topk}, "patch"),
])
def test_wrong_variants_fail_with_a_hint_that_names_the_mistake(check: str, wrong: dict, message: str) -> None:
    problems = run(check, solution_namespace(**wrong))
    assert problems, f"{check} passed a wrong variant"
    assert message in "\n".join(problems), problems


def test_the_unit_box_check_also_catches_swapped_rows_and_columns() -> None:
    def swapped(layers, row, col, image_size):
        return solution_namespace()["unit_box"](layers, col, row, image_size)

    problems = run("check-unit-box", solution_namespace(unit_box=swapped))
    assert "rows and columns swapped" in "\n".join(problems)


def test_a_function_that_raises_is_a_student_error() -> None:
    def broken(layers):
        raise NotImplementedError("field_size_and_jump is not written yet")

    with pytest.raises(StudentError, match="not written yet"):
        run("check-field-size", solution_namespace(field_size_and_jump=broken))


def test_off_limits_library_calls_are_found_in_the_students_code() -> None:
    source = """from viztools.hooks import receptive_field

def unit_box(layers, row, col, image_size):
    rows, cols = receptive_field(MODEL, "conv2", (row, col))
    return rows.start, rows.stop, cols.start, cols.stop"""
    ids = {1: "setup", 2: "task-box"}  # the task's own cell
    found = grade.forbidden_by_task(load_key(EXERCISE), {1: "import torch", 2: source}, ids)
    assert set(found) == {"task-box"}
    assert all("viztools.hooks.receptive_field" in text and "code cell 2" in text for text in found.values())


@pytest.mark.slow
def test_grading_the_solution_gives_full_marks_and_the_blank_exercise_zero() -> None:
    report = grade.grade_notebook(SOLUTION)
    assert [c.id for c in report.checks] == CHECKS
    assert [c.status for c in report.checks] == ["passed"] * len(CHECKS), [c.feedback for c in report.checks]
    assert report.score == report.max_score == 10 and report.cell_problems == []
    blank = grade.grade_notebook(BLANK)
    assert blank.status == "graded" and blank.score == 0 and blank.max_score == 10
    assert all(c.status == "error" and "NotImplementedError" in c.feedback for c in blank.checks)
