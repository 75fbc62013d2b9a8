"""Exercise 05 (class visualization): hidden checks pass the solution, name the mistakes of wrong variants, grade.

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
EXERCISE_ID = "05_class_visualization"
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
    assert sorted(CHECKS) == ["check_jitter", "check_loop_class", "check_loop_steps", "check_score",
                              "check_step_corner", "check_step_glyphnet"]
    for name in CHECKS:
        assert run_check(name, namespace, seed) == [], name


VARIANTS = {
    "descending": ("task-step", "pixels + lr * gradient", "pixels - lr * gradient", "check_step_corner",
                   "gradient ASCENT"),
    "descending, whole loop": ("task-step", "pixels + lr * gradient", "pixels - lr * gradient", "check_loop_class",
                               "probability > 0.9"),
    "L2 penalty added": ("task-score", "- l2 * model.normalize", "+ l2 * model.normalize", "check_score",
                         "the L2 penalty is subtracted"),
    "L2 penalty added, in the step": ("task-score", "- l2 * model.normalize", "+ l2 * model.normalize",
                                      "check_step_corner", "the L2 penalty has the wrong sign"),
    "L2 on raw pixels": ("task-score", "model.normalize(image).pow(2)", "image.pow(2)", "check_score",
                         "penalize the normalized image"),
    "gradient not scaled": ("task-step", "lr * gradient / gradient.pow(2).mean().sqrt()", "lr * gradient",
                            "check_step_glyphnet", "divide it by its root mean square"),
    "jitter not undone": ("task-jitter", "return torch.roll(stepped, shifts=(-dy, -dx), dims=(2, 3))",
                          "return stepped", "check_jitter", "the jitter is not undone"),
    "jitter undone the wrong way": ("task-jitter", "shifts=(-dy, -dx)", "shifts=(dy, dx)", "check_jitter",
                                    "the opposite of the first roll"),
    "black start": ("task-loop", "torch.tensor(model.mean, dtype=torch.float32)", "torch.zeros(3)",
                    "check_loop_steps", "start from the mean image"),
    "blur one step early": ("task-loop", "step % blur_every == 0", "(step - 1) % blur_every == 0",
                            "check_loop_steps", "blur after steps 2, 4"),
    "no clamp": ("task-loop", ").clamp(0, 1)", ")", "check_loop_steps", "clamp the pixels to [0, 1]"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_wrong_variant_fails_the_check_that_names_the_mistake(variant: str) -> None:
    cell, old, new, check, message = VARIANTS[variant]
    problems = run_check(check, solution_namespace({cell: [(old, new)]}))
    assert problems, f"{variant}: {check} passed"
    assert message in "\n".join(problems), problems


def test_the_library_calls_that_do_the_task_are_off_limits() -> None:
    source = "from viztools.class_visualization import mean_image\n\nstart = mean_image"
    uses = forbidden_uses({1: source}, load_key(EXERCISE_ID).task("task-loop").forbidden)
    assert {use.forbidden for use in uses} == {"viztools.class_visualization.mean_image"}, uses


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


EQUIVALENT = {
    "task-score": [("model.normalize(image).pow(2).sum()",
                    "((image - torch.tensor(model.mean).view(1, 3, 1, 1)) / torch.tensor(model.std).view(1, 3, 1, 1))"
                    ".square().sum()")],
    "task-step": [("(gradient,) = torch.autograd.grad(regularized_score(model, pixels, target, l2), pixels)",
                   "regularized_score(model, pixels, target, l2).backward()\n    gradient = pixels.grad"),
                  ("gradient.pow(2).mean().sqrt()", "(gradient.norm() / gradient.numel() ** 0.5)")],
    "task-loop": [("image = jittered_step(model, image, target, l2, lr, dy, dx).clamp(0, 1)",
                   "image = torch.clamp(jittered_step(model, image, target, l2, lr, int(dy), int(dx)), 0.0, 1.0)")],
}


@pytest.mark.parametrize("seed", [2, 3])
def test_an_equivalent_implementation_written_differently_passes(seed: int) -> None:
    namespace = solution_namespace(EQUIVALENT)
    for name in ("check_score", "check_step_corner", "check_step_glyphnet", "check_jitter", "check_loop_steps"):
        assert run_check(name, namespace, seed) == [], name
