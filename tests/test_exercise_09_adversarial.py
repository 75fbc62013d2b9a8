"""Exercise 09 (adversarial examples): the hidden checks pass the solution, fail wrong variants with the right hint.

The hidden checks run in-process against the solution's own task cells through a stand-in for the grader's
``Student`` proxy (arguments and results take the same ``torch.save`` round trip as with the kernel); one real
grading run each of the solution and the blank exercise is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from exercise_support import run_hidden_check
from exercise_support import solution_namespace as support_namespace

from viztools.grading import grade
from viztools.grading.answer_key import load_key
from viztools.grading.proxy import StudentError, hidden_checks

REPO = Path(__file__).resolve().parents[1]
EXERCISE = "09_adversarial"
SOLUTION, BLANK = REPO / "solutions" / f"{EXERCISE}.ipynb", REPO / "exercises" / f"{EXERCISE}.ipynb"
CHECKS = ["check-gradient", "check-step", "check-fool", "check-fgsm"]


CHECK_FUNCTIONS = hidden_checks(EXERCISE)


F = torch.nn.functional


def solution_namespace(**replace: object) -> dict:
    """The solution's task cells in a fresh namespace; ``replace`` overrides some of its functions."""
    return support_namespace(EXERCISE, replace=replace, namespace={"F": torch.nn.functional})


def run(check: str, namespace: dict, seed: int = 0) -> list[str]:
    return run_hidden_check(EXERCISE, check, namespace, seed)


def gradient_of_probability(model, image, target):
    pixels = image.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.softmax(model(pixels), dim=1)[0, target], pixels)
    return gradient


def gradient_in_place(model, image, target):
    image.requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(image)[0, target], image)
    image.requires_grad_(False)
    image.add_(0.01)  # a sloppy "step" left in by mistake: the caller's image changes
    return gradient


def step_unnormalized(model, image, target, lr):
    gradient = solution_namespace()["class_score_gradient"](model, image, target)
    return (image + lr * gradient).clamp(0.0, 1.0)


def step_wrong_sign(model, image, target, lr):
    gradient = solution_namespace()["class_score_gradient"](model, image, target)
    return (image - lr * gradient / gradient.norm()).clamp(0.0, 1.0)


def step_unclamped(model, image, target, lr):
    gradient = solution_namespace()["class_score_gradient"](model, image, target)
    return image + lr * gradient / gradient.norm()


def fool_one_step_too_many(model, image, target, lr, max_steps=100):
    namespace = solution_namespace()
    pixels = image.clone()
    for step in range(max_steps):
        pixels = namespace["fooling_step"](model, pixels, target, lr)
        if int(model(pixels).argmax()) == target:
            return pixels, step + 1
    return pixels, max_steps


def fool_without_limit(model, image, target, lr, max_steps=100):
    namespace = solution_namespace()
    pixels, steps = image.clone(), 0
    while int(model(pixels).argmax()) != target and steps < 1000:
        pixels, steps = namespace["fooling_step"](model, pixels, target, lr), steps + 1
    return pixels, steps


def fgsm_wrong_sign(model, image, label, epsilon):
    pixels = image.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(pixels), torch.tensor([label])), pixels)
    return (image - epsilon * gradient.sign()).clamp(0.0, 1.0)


def fgsm_unclamped(model, image, label, epsilon):
    pixels = image.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(pixels), torch.tensor([label])), pixels)
    return image + epsilon * gradient.sign()


def fgsm_without_sign(model, image, label, epsilon):
    pixels = image.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(pixels), torch.tensor([label])), pixels)
    return (image + epsilon * gradient / gradient.abs().max()).clamp(0.0, 1.0)


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
    ("check-gradient", {"class_score_gradient": gradient_of_probability}, "gradient of the probability"),
    ("check-gradient", {"class_score_gradient": gradient_in_place}, "changed the caller's image"),
    ("check-step", {"fooling_step": step_unnormalized}, "not normalized"),
    ("check-step", {"fooling_step": step_wrong_sign}, "goes down the gradient"),
    ("check-step", {"fooling_step": step_unclamped}, "outside [0, 1]"),
    ("check-fool", {"fool": fool_one_step_too_many}, "off by one"),
    ("check-fool", {"fool": fool_without_limit}, "more than max_steps"),
    ("check-fgsm", {"fgsm_attack": fgsm_wrong_sign}, "wrong sign"),
    ("check-fgsm", {"fgsm_attack": fgsm_unclamped}, "outside [0, 1]"),
    ("check-fgsm", {"fgsm_attack": fgsm_without_sign}, "not its sign"),
])
def test_wrong_variants_fail_with_a_hint_that_names_the_mistake(check: str, wrong: dict, message: str) -> None:
    problems = run(check, solution_namespace(**wrong))
    assert problems, f"{check} passed a wrong variant"
    assert message in "\n".join(problems), problems


def test_a_function_that_raises_is_a_student_error() -> None:
    def broken(model, image, label, epsilon):
        raise NotImplementedError("fgsm_attack is not written yet")

    with pytest.raises(StudentError, match="not written yet"):
        run("check-fgsm", solution_namespace(fgsm_attack=broken))


def test_off_limits_library_calls_are_found_in_the_students_code() -> None:
    source = """from viztools import adversarial

def fgsm_attack(model, image, label, epsilon):
    return adversarial.fgsm(model, image, label, epsilon=epsilon).adversarial"""
    ids = {1: "setup", 2: "task-fgsm"}  # the task's own cell
    found = grade.forbidden_by_task(load_key(EXERCISE), {1: "import torch", 2: source}, ids)
    assert set(found) == {"task-fgsm"}
    assert all("viztools.adversarial.fgsm" in text and "code cell 2" in text for text in found.values())


@pytest.mark.slow
def test_grading_the_solution_gives_full_marks_and_the_blank_exercise_zero() -> None:
    report = grade.grade_notebook(SOLUTION)
    assert [c.id for c in report.checks] == CHECKS
    assert [c.status for c in report.checks] == ["passed"] * len(CHECKS), [c.feedback for c in report.checks]
    assert report.score == report.max_score == 11 and report.cell_problems == []
    blank = grade.grade_notebook(BLANK)
    assert blank.status == "graded" and blank.score == 0 and blank.max_score == 11
    assert all(c.status == "error" and "NotImplementedError" in c.feedback for c in blank.checks)
