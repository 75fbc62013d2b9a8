"""Exercise 06 (feature inversion): hidden checks pass the solution, name the mistakes of wrong variants, and grade.

The hidden checks run in this process against the solution's own task cells (executed here, optionally edited into
a wrong variant) through :class:`LocalStudent`, a stand-in for the grader's kernel proxy that converts arguments
as the kernel does. One real grading run of the solution (full marks) and of the blank exercise (zero) is slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from exercise_support import run_hidden_check
from exercise_support import solution_namespace as support_namespace

from viztools.grading import grade_notebook, load_key
from viztools.grading.proxy import hidden_checks
from viztools.grading.static import forbidden_uses

REPO = Path(__file__).resolve().parents[1]
EXERCISE_ID = "06_inversion"
SOLUTION = REPO / "solutions" / f"{EXERCISE_ID}.ipynb"
EXERCISE = REPO / "exercises" / f"{EXERCISE_ID}.ipynb"
CHECKS = hidden_checks(EXERCISE_ID)


def solution_namespace(edits: dict[str, list[tuple[str, str]]] | None = None) -> dict:
    """The solution's task and helper cells in a fresh namespace, each ``(old, new)`` edit applied first."""
    return support_namespace(EXERCISE_ID, edits=edits)


def run_check(check: str, namespace: dict, seed: int = 0) -> list[str]:
    return run_hidden_check(EXERCISE_ID, check, namespace, seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_solution_passes_every_hidden_check(seed: int) -> None:
    namespace = solution_namespace()
    assert sorted(CHECKS) == ["check_feature_loss", "check_invert_depths", "check_invert_steps",
                              "check_total_variation"]
    for name in CHECKS:
        assert run_check(name, namespace, seed) == [], name


VARIANTS = {
    "no normalization": ("task-loss", " / target_features.pow(2).sum()", "", "check_feature_loss",
                         "divide by ||target_features||^2"),
    "norms not squared": ("task-loss", "(features - target_features).pow(2).sum() / target_features.pow(2).sum()",
                          "(features - target_features).norm() / target_features.norm()", "check_feature_loss",
                          "square both norms"),
    "TV over one axis": ("task-tv", "return horizontal.pow(2).sum() + vertical.pow(2).sum()",
                         "return horizontal.pow(2).sum()", "check_total_variation", "only horizontal differences"),
    "TV with absolute values": ("task-tv", "return horizontal.pow(2).sum() + vertical.pow(2).sum()",
                                "return horizontal.abs().sum() + vertical.abs().sum()", "check_total_variation",
                                "square the differences"),
    "SGD instead of Adam": ("task-invert", "torch.optim.Adam([x], lr=lr)", "torch.optim.SGD([x], lr=lr)",
                            "check_invert_steps", "not SGD"),
    "ascent": ("task-invert", "loss = feature_loss(", "loss = -feature_loss(", "check_invert_steps",
               "minimize the feature loss"),
    "no clamp": ("task-invert", "x.clamp_(0, 1)", "pass", "check_invert_steps", "clamp the pixels"),
    "no TV": ("task-invert", " + tv_weight * total_variation(x)", "", "check_invert_steps",
              "add tv_weight * total_variation(x)"),
    "ascent, two depths": ("task-invert", "loss = feature_loss(", "loss = -feature_loss(", "check_invert_depths",
                           "the feature loss drops"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_wrong_variant_fails_the_check_that_names_the_mistake(variant: str) -> None:
    cell, old, new, check, message = VARIANTS[variant]
    problems = run_check(check, solution_namespace({cell: [(old, new)]}))
    assert problems, f"{variant}: {check} passed"
    assert message in "\n".join(problems), problems


EQUIVALENT = {
    "task-loss": [("(features - target_features).pow(2).sum() / target_features.pow(2).sum()",
                   "torch.sum((features - target_features) ** 2) / torch.sum(target_features * target_features)")],
    "task-tv": [("return horizontal.pow(2).sum() + vertical.pow(2).sum()",
                 "return (torch.diff(image, dim=-1) ** 2).sum() + (torch.diff(image, dim=-2) ** 2).sum()")],
    "task-invert": [("with torch.no_grad():\n            x.clamp_(0, 1)", "x.data.clamp_(0.0, 1.0)")],
}


def test_an_equivalent_implementation_written_differently_passes() -> None:
    namespace = solution_namespace(EQUIVALENT)
    for name in ("check_feature_loss", "check_total_variation", "check_invert_steps"):
        assert run_check(name, namespace, 5) == [], name


def test_the_library_calls_that_do_the_task_are_off_limits() -> None:
    source = "import viztools\n\ncheck = viztools.optimize.TotalVariation(1.0)"
    uses = forbidden_uses({1: source}, load_key(EXERCISE_ID).task("task-tv").forbidden)
    assert {use.forbidden for use in uses} == {"viztools.optimize.TotalVariation"}, uses


@pytest.mark.slow
def test_grading_gives_the_solution_full_marks_and_the_blank_exercise_zero() -> None:
    solved = grade_notebook(SOLUTION, seed=3)
    assert solved.status == "graded", solved.message
    assert solved.score == solved.max_score == 8, [(c.id, c.feedback) for c in solved.checks]
    blank = grade_notebook(EXERCISE, seed=3)
    assert blank.status == "graded", blank.message
    assert blank.score == 0
    assert {check.status for check in blank.checks} == {"error"}
    assert all("not written yet" in check.feedback for check in blank.checks), [c.feedback for c in blank.checks]
