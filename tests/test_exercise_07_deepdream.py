"""Exercise 07 (DeepDream): the hidden checks pass the solution, fail wrong variants with the right hint.

The hidden checks run in-process against the solution's own task cells through a stand-in for the grader's
``Student`` proxy (arguments and results take the same ``torch.save`` round trip as with the kernel); one real
grading run each of the solution and the blank exercise is marked slow.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from exercise_support import run_hidden_check, solution_cells

import viztools
from viztools.deepdream import deepdream, octave_sizes
from viztools.grading import grade, static
from viztools.grading.answer_key import load_key
from viztools.grading.proxy import HIDDEN_DIR, StudentError, hidden_checks

REPO = Path(__file__).resolve().parents[1]
EXERCISE = "07_deepdream"
SOLUTION, BLANK = REPO / "solutions" / f"{EXERCISE}.ipynb", REPO / "exercises" / f"{EXERCISE}.ipynb"
CHECKS = ["check-gradient", "check-step", "check-octave-sizes", "check-octaves"]


def run(check: str, namespace: dict, seed: int = 0) -> list[str]:
    return run_hidden_check(EXERCISE, check, namespace, seed)


def solution_namespace(**replace: object) -> dict:
    """The solution's ``resize`` (setup cell) and task cells in a fresh namespace; ``replace`` overrides functions."""
    cells = solution_cells(EXERCISE)
    namespace: dict = {"torch": torch, "viztools": viztools, "F": F}
    setup = ast.parse(cells["setup"])
    helpers = [node for node in setup.body if isinstance(node, ast.FunctionDef) and node.name == "resize"]
    exec(compile(ast.Module(body=helpers, type_ignores=[]), "setup", "exec"), namespace)  # our own solution
    for cell_id, source in cells.items():
        if cell_id.startswith("task-"):
            exec(compile(source, cell_id, "exec"), namespace)
    namespace.update(replace)
    return namespace


CHECK_FUNCTIONS = hidden_checks(EXERCISE)


def _reference_module():
    spec = importlib.util.spec_from_file_location("hidden_07", HIDDEN_DIR / f"{EXERCISE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Wrong variants (each written as a student might)
# ----------------------------------------------------------------------------------------------------------------


def gradient_of_sum(model, image, layer):
    pixels = image.clone().requires_grad_(True)
    viztools.forward_activations(model, pixels, [layer])[layer].sum().backward()
    return pixels.grad


def gradient_of_sum_of_squares(model, image, layer):
    pixels = image.clone().requires_grad_(True)
    viztools.forward_activations(model, pixels, [layer])[layer].pow(2).sum().backward()
    return pixels.grad


def gradient_in_place(model, image, layer):
    image.requires_grad_(True)
    activation = viztools.forward_activations(model, image, [layer])[layer]
    activation.backward(gradient=activation.detach())
    gradient = image.grad
    image.requires_grad_(False)
    with torch.no_grad():
        image.mul_(0.5)  # "normalizes" the caller's image on the way
    return gradient


def step_unnormalized(namespace):
    def dream_step(model, image, layer, lr=0.01):
        return (image + lr * namespace["dream_gradient"](model, image, layer)).clamp(0.0, 1.0)
    return dream_step


def step_unclamped(namespace):
    def dream_step(model, image, layer, lr=0.01):
        gradient = namespace["dream_gradient"](model, image, layer)
        return image + lr * gradient / gradient.abs().mean()
    return dream_step


def step_descends(namespace):
    def dream_step(model, image, layer, lr=0.01):
        gradient = namespace["dream_gradient"](model, image, layer)
        return (image - lr * gradient / gradient.abs().mean()).clamp(0.0, 1.0)
    return dream_step


def sizes_largest_first(height, width, octaves, scale):
    sizes = [(height, width)]
    for _ in range(octaves - 1):
        smaller = (max(8, round(sizes[-1][0] / scale)), max(8, round(sizes[-1][1] / scale)))
        if smaller == sizes[-1]:
            break
        sizes.append(smaller)
    return sizes


def sizes_without_floor(height, width, octaves, scale):
    sizes = [(height, width)]
    for _ in range(octaves - 1):
        sizes.insert(0, (round(sizes[0][0] / scale), round(sizes[0][1] / scale)))
    return sizes


def octaves_without_detail(namespace, carry_image=False):
    def dream_octaves(model, image, layer, steps=10, lr=0.01, octaves=3, scale=1.4):
        resize = namespace["resize"]
        dreamed = None
        for size in namespace["octave_sizes"](image.shape[-2], image.shape[-1], octaves, scale):
            dreamed = resize(dreamed if carry_image and dreamed is not None else image, size).clamp(0.0, 1.0)
            for _ in range(steps):
                dreamed = namespace["dream_step"](model, dreamed, layer, lr)
        return dreamed
    return dream_octaves


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------


def test_references_agree_with_the_library(glyphnet) -> None:
    reference = _reference_module()
    image, _ = viztools.make_glyphworld(1, start=7)
    assert torch.allclose(reference.reference_step(glyphnet, image, "conv3", 0.02),
                          deepdream(glyphnet, image, layer="conv3", steps=1, lr=0.02, octaves=1, jitter=0).image,
                          atol=1e-6)
    expected = deepdream(glyphnet, image, layer="conv2", steps=2, lr=0.02, octaves=3, octave_scale=1.5, jitter=0).image
    assert torch.allclose(reference.reference_dream(glyphnet, image, "conv2", 2, 0.02, 3, 1.5), expected, atol=1e-5)


def test_the_solution_agrees_with_the_library(glyphnet) -> None:
    namespace = solution_namespace()
    image, _ = viztools.make_glyphworld(1, start=3)
    got = namespace["dream_octaves"](glyphnet, image, "conv3", steps=2, lr=0.02, octaves=2, scale=1.4)
    expected = deepdream(glyphnet, image, layer="conv3", steps=2, lr=0.02, octaves=2, octave_scale=1.4, jitter=0).image
    assert torch.allclose(got, expected, atol=1e-5)
    for case in [(64, 64, 3, 1.4), (9, 9, 4, 1.4), (100, 37, 5, 1.5)]:
        assert namespace["octave_sizes"](*case) == octave_sizes(*case)


@pytest.mark.parametrize("seed", [0, 1])
def test_hidden_checks_pass_the_solution(seed: int) -> None:
    namespace = solution_namespace()
    assert set(CHECK_FUNCTIONS) == {check.replace("-", "_") for check in CHECKS}
    for check in CHECKS:
        assert run(check, namespace, seed) == [], check


WRONG = [
    ("check-gradient", lambda ns: {"dream_gradient": gradient_of_sum}, "gradient of sum(a)"),
    ("check-gradient", lambda ns: {"dream_gradient": gradient_of_sum_of_squares}, "twice the expected one"),
    ("check-gradient", lambda ns: {"dream_gradient": gradient_in_place}, "changed the caller's image"),
    ("check-step", lambda ns: {"dream_step": step_unnormalized(ns)}, "divide the gradient by its mean absolute value"),
    ("check-step", lambda ns: {"dream_step": step_unclamped(ns)}, "clamp them after the step"),
    ("check-step", lambda ns: {"dream_step": step_descends(ns)}, "wrong sign"),
    ("check-step", lambda ns: {"dream_gradient": gradient_of_sum}, "fix dream_gradient (check 1)"),
    ("check-octave-sizes", lambda ns: {"octave_sizes": sizes_largest_first}, "from the coarsest"),
    ("check-octave-sizes", lambda ns: {"octave_sizes": sizes_without_floor}, "at least 8 px"),
    ("check-octaves", lambda ns: {"dream_octaves": octaves_without_detail(ns)}, "detail is not carried"),
    ("check-octaves", lambda ns: {"dream_octaves": octaves_without_detail(ns, carry_image=True)},
     "carried the whole dreamed image"),
]


@pytest.mark.parametrize(("check", "replace", "message"), WRONG, ids=[f"{c}-{m[:24]}" for c, _, m in WRONG])
def test_hidden_checks_fail_wrong_variants_with_the_right_hint(check: str, replace, message: str) -> None:
    namespace = solution_namespace()
    namespace.update(replace(namespace))
    problems = run(check, namespace)
    assert problems, f"{check} passed a wrong variant"
    assert message in "\n".join(problems), problems


def test_a_function_that_raises_is_a_student_error() -> None:
    namespace = solution_namespace()

    def broken(model, image, layer, lr=0.01):
        raise NotImplementedError("dream_step is not written yet")

    namespace["dream_step"] = broken
    with pytest.raises(StudentError):
        run("check-step", namespace)


@pytest.mark.parametrize("value", [None, "a string", [1.0, 2.0], {"__unsupported__": "generator"}])
def test_odd_return_values_are_problems_not_grader_errors(value: object) -> None:
    namespace = solution_namespace(dream_gradient=lambda *args: value, dream_step=lambda *args: value,
                                   octave_sizes=lambda *args: value, dream_octaves=lambda *args: value)
    for check in CHECKS:
        assert run(check, namespace), check


@pytest.mark.slow
def test_grading_the_solution_gives_full_marks_and_the_blank_exercise_zero() -> None:
    solution = grade.grade_notebook(SOLUTION, seed=3)
    assert solution.status == "graded", solution.message
    assert solution.score == solution.max_score == 8, [(c.id, c.feedback) for c in solution.checks]
    blank = grade.grade_notebook(BLANK, seed=3)
    assert blank.status == "graded", blank.message
    assert blank.score == 0
    assert {check.status for check in blank.checks} == {"error"}


def test_every_task_declares_the_off_limits_calls_and_the_solution_uses_none() -> None:
    key = load_key(EXERCISE)
    assert [task.id for task in key.tasks] == ["task-gradient", "task-step", "task-sizes", "task-octaves"]
    student = {1: "import viztools\nfrom viztools.deepdream import octave_sizes as sizes\n",
               2: "def dream_step(model, image, layer, lr=0.01):\n"
                  "    return viztools.deepdream.deepdream(model, image, layer=layer, steps=1, octaves=1).image\n"}
    solution = {number: cell.source for number, cell in enumerate(nbformat.read(SOLUTION, as_version=4).cells, 1)
                if cell.cell_type == "code" and "check" not in cell.metadata.get("tags", [])}
    for task in key.tasks:
        found = {use.forbidden for use in static.forbidden_uses(student, task.forbidden)}
        assert found == {"viztools.deepdream.octave_sizes", "viztools.deepdream.deepdream"}, task.id
        assert static.forbidden_uses(solution, task.forbidden) == [], task.id
