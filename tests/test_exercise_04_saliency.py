"""Exercise 04 (saliency): the hidden checks pass the solution, name the mistakes of wrong variants, and grade.

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
from viztools.grading.proxy import StudentError, hidden_checks
from viztools.grading.static import forbidden_uses

REPO = Path(__file__).resolve().parents[1]
EXERCISE_ID = "04_saliency"
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
    assert sorted(CHECKS) == ["check_deconvnet_relu", "check_guided_relu", "check_rule_gradient",
                              "check_saliency_corner", "check_saliency_glyphnet"]
    for name in CHECKS:
        assert run_check(name, namespace, seed) == [], name


RULE_CELL = "task-rule"
VARIANTS = {
    "abs missing": ("task-saliency", "gradient[0].abs().amax(dim=0)", "gradient[0].amax(dim=0)",
                    "check_saliency_glyphnet", "take the absolute value of the gradient"),
    "sum over channels": ("task-saliency", "abs().amax(dim=0)", "abs().sum(dim=0)",
                          "check_saliency_corner", "not their sum"),
    "probability instead of score": ("task-saliency", "score = model(pixels)[0, target]",
                                     "score = torch.softmax(model(pixels), dim=1)[0, target]",
                                     "check_saliency_corner", "not the softmax probability"),
    "guided without the [R > 0] mask": ("task-guided", "grad_output * (x > 0) * (grad_output > 0)",
                                        "grad_output * (x > 0)", "check_guided_relu", "the [R > 0] mask"),
    "guided without the [x > 0] mask": ("task-guided", "grad_output * (x > 0) * (grad_output > 0)",
                                        "grad_output * (grad_output > 0)", "check_guided_relu",
                                        "also mask by the forward input"),
    "deconvnet passes R unchanged": ("task-deconv", "return grad_output.clamp(min=0)", "return grad_output",
                                     "check_deconvnet_relu", "only its positive part"),
    "classifier ReLU forgotten": (RULE_CELL, "for module in model.network.modules():",
                                  "for module in model.network.features.modules():", "check_rule_gradient",
                                  "the classifier's ReLU"),
    "hooks left behind": (RULE_CELL, "hooks.enter_context(attach(module, forward=swap))",
                          "module.register_forward_hook(swap)", "check_rule_gradient", "still on the model"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_wrong_variant_fails_the_check_that_names_the_mistake(variant: str) -> None:
    cell, old, new, check, message = VARIANTS[variant]
    problems = run_check(check, solution_namespace({cell: [(old, new)]}))
    assert problems, f"{variant}: {check} passed"
    assert message in "\n".join(problems), problems


def test_a_missing_function_is_an_error_naming_it() -> None:
    namespace = solution_namespace()
    del namespace["saliency_map"]
    with pytest.raises(StudentError, match="saliency_map"):
        run_check("check_saliency_corner", namespace)


def test_the_library_calls_that_do_the_task_are_off_limits() -> None:
    source = ("from viztools import saliency as sal\n\n"
              "def saliency_map(model, image, target):\n    return sal.saliency(model, image, target)")
    uses = forbidden_uses({1: source}, load_key(EXERCISE_ID).task("task-saliency").forbidden)
    assert {use.forbidden for use in uses} == {"viztools.saliency.saliency"}, uses


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
