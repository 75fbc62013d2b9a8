"""Exercise 08 (neural style): the hidden checks pass the solution, fail wrong variants with the right hint.

The hidden checks run in-process against the solution's own task cells through a stand-in for the grader's
``Student`` proxy (arguments and results take the same ``torch.save`` round trip as with the kernel); one real
grading run each of the solution and the blank exercise is marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
import torch
from exercise_support import run_hidden_check
from exercise_support import solution_namespace as support_namespace

import viztools
from viztools.grading import grade, static
from viztools.grading.answer_key import load_key
from viztools.grading.proxy import HIDDEN_DIR, StudentError, hidden_checks
from viztools.style import gram_matrix as library_gram
from viztools.style import style_layer_loss

REPO = Path(__file__).resolve().parents[1]
EXERCISE = "08_neural_style"
SOLUTION, BLANK = REPO / "solutions" / f"{EXERCISE}.ipynb", REPO / "exercises" / f"{EXERCISE}.ipynb"
CHECKS = ["check-gram", "check-content", "check-style", "check-tv", "check-transfer"]


CHECK_FUNCTIONS = hidden_checks(EXERCISE)


def solution_namespace(**replace: object) -> dict:
    """The solution's task cells in a fresh namespace; ``replace`` overrides some of its functions."""
    return support_namespace(EXERCISE, replace=replace, namespace={"viztools": viztools})


def run(check: str, namespace: dict, seed: int = 0) -> list[str]:
    return run_hidden_check(EXERCISE, check, namespace, seed)


def _reference_module():
    spec = importlib.util.spec_from_file_location("hidden_08", HIDDEN_DIR / f"{EXERCISE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Wrong variants (each written as a student might)
# ----------------------------------------------------------------------------------------------------------------


def gram_transposed(features):
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat.transpose(1, 2) @ flat / (h * w)


def gram_unnormalized(features):
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2)


def gram_cs231n(features):
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def gram_without_batch(features):
    _, c, h, w = features.shape
    flat = features.reshape(c, -1)
    return flat @ flat.T / (h * w)


def content_plain(features, target):
    return (features - target).pow(2).sum()


def content_by_features(features, target):
    return (features - target).pow(2).sum() / features.pow(2).sum()


def style_unweighted(namespace):
    def style_loss(features, target_grams, weights):
        return sum((namespace["gram_matrix"](f) - a).pow(2).sum() / a.pow(2).sum()
                   for f, a in zip(features, target_grams, strict=True))
    return style_loss


def style_not_relative(namespace):
    def style_loss(features, target_grams, weights):
        return sum(w * (namespace["gram_matrix"](f) - a).pow(2).sum()
                   for f, a, w in zip(features, target_grams, weights, strict=True))
    return style_loss


def style_return_in_loop(namespace):
    def style_loss(features, target_grams, weights):
        loss = 0
        for f, a, w in zip(features, target_grams, weights, strict=True):
            loss = loss + w * (namespace["gram_matrix"](f) - a).pow(2).sum() / a.pow(2).sum()
            return loss
        return loss
    return style_loss


def tv_summed(image):
    return (image[..., :, 1:] - image[..., :, :-1]).pow(2).sum() + (image[..., 1:, :] - image[..., :-1, :]).pow(2).sum()


def tv_absolute(image):
    return (image[..., :, 1:] - image[..., :, :-1]).abs().mean() + (image[..., 1:, :] - image[..., :-1, :]).abs().mean()


def tv_horizontal_only(image):
    return (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean()


def transfer_variant(namespace, *, clamp=True, sign=1.0, start="content"):
    """The solution's transfer with one thing changed: no clamp, ascent instead of descent, or a random start."""
    def transfer_style(model, content, style, content_layer, style_layers, style_weights, content_weight=1.0,
                       tv_weight=1.0, steps=20, lr=0.02):
        gram, content_loss, style_loss, tv_loss = (namespace[name] for name in
                                                   ("gram_matrix", "content_loss", "style_loss", "tv_loss"))
        with torch.no_grad():
            target = viztools.forward_activations(model, content, [content_layer])[content_layer]
            style_features = viztools.forward_activations(model, style, style_layers)
            grams = [gram(style_features[layer]) for layer in style_layers]
        pixels = content.clone() if start == "content" else torch.rand(content.shape)
        pixels.requires_grad_(True)
        optimizer = torch.optim.Adam([pixels], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            now = viztools.forward_activations(model, pixels, [content_layer, *style_layers])
            loss = (content_weight * content_loss(now[content_layer], target)
                    + style_loss([now[layer] for layer in style_layers], grams, style_weights)
                    + tv_weight * tv_loss(pixels))
            (sign * loss).backward()
            optimizer.step()
            if clamp:
                with torch.no_grad():
                    pixels.clamp_(0.0, 1.0)
        return pixels.detach()
    return transfer_style


def transfer_style_from_content(namespace):
    """Takes the style targets from the content image: the style loss is 0 from the start and never moves."""
    solution = namespace["transfer_style"]

    def transfer_style(model, content, style, *args, **kwargs):
        return solution(model, content, content, *args, **kwargs)
    return transfer_style


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------


def test_references_agree_with_the_library(glyphnet) -> None:
    reference = _reference_module()
    features = torch.rand(2, 6, 5, 3)
    assert torch.allclose(reference.reference_gram(features), library_gram(features), atol=1e-6)
    image, _ = viztools.make_glyphworld(1, start=4)
    texture = viztools.load_image("brick", 80)
    layers = ["conv1", "conv3"]
    now, target = viztools.get_activations(glyphnet, image, layers), viztools.get_activations(glyphnet, texture, layers)
    grams = [library_gram(target[layer]) for layer in layers]
    expected = 2.0 * style_layer_loss(now["conv1"], grams[0]) + 0.5 * style_layer_loss(now["conv3"], grams[1])
    got = reference.reference_style([now[layer] for layer in layers], grams, [2.0, 0.5])
    assert torch.allclose(got.float(), expected, rtol=1e-5)


def test_the_solution_agrees_with_the_library(glyphnet) -> None:
    namespace = solution_namespace()
    features = torch.rand(3, 4, 7, 2)
    assert torch.allclose(namespace["gram_matrix"](features), library_gram(features), atol=1e-6)
    image, _ = viztools.make_glyphworld(1, start=5)
    texture = viztools.load_image("gravel", 48)
    now = viztools.get_activations(glyphnet, image, ["conv2"])["conv2"]
    gram = library_gram(viztools.get_activations(glyphnet, texture, ["conv2"])["conv2"])
    assert torch.allclose(namespace["style_loss"]([now], [gram], [3.0]), 3.0 * style_layer_loss(now, gram), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_hidden_checks_pass_the_solution(seed: int) -> None:
    namespace = solution_namespace()
    assert set(CHECK_FUNCTIONS) == {check.replace("-", "_") for check in CHECKS}
    for check in CHECKS:
        assert run(check, namespace, seed) == [], check


WRONG = [
    ("check-gram", lambda ns: {"gram_matrix": gram_transposed}, "HW x HW"),
    ("check-gram", lambda ns: {"gram_matrix": gram_unnormalized}, "divide by the number of positions H*W"),
    ("check-gram", lambda ns: {"gram_matrix": gram_cs231n}, "not by C*H*W"),
    ("check-gram", lambda ns: {"gram_matrix": gram_without_batch}, "keep the batch"),
    ("check-content", lambda ns: {"content_loss": content_plain}, "the loss is relative"),
    ("check-content", lambda ns: {"content_loss": content_by_features}, "not by that of the features"),
    ("check-style", lambda ns: {"style_loss": style_unweighted(ns)}, "multiply each layer's loss by its weight"),
    ("check-style", lambda ns: {"style_loss": style_not_relative(ns)}, "relative loss"),
    ("check-style", lambda ns: {"style_loss": style_return_in_loop(ns)}, "`return` inside the loop"),
    ("check-style", lambda ns: {"gram_matrix": gram_unnormalized}, "fix gram_matrix, check 1"),
    ("check-tv", lambda ns: {"tv_loss": tv_summed}, "not their sum"),
    ("check-tv", lambda ns: {"tv_loss": tv_absolute}, "square the differences"),
    ("check-tv", lambda ns: {"tv_loss": tv_horizontal_only}, "add the vertical differences"),
    ("check-transfer", lambda ns: {"transfer_style": transfer_variant(ns, clamp=False)}, "clamp the pixels"),
    ("check-transfer", lambda ns: {"transfer_style": transfer_variant(ns, sign=-1.0)}, "did not go down"),
    ("check-transfer", lambda ns: {"transfer_style": transfer_variant(ns, start="random")},
     "start from a copy of the content image"),
    ("check-transfer", lambda ns: {"transfer_style": transfer_style_from_content(ns)}, "the total loss goes down"),
]


@pytest.mark.parametrize(("check", "replace", "message"), WRONG, ids=[f"{c}-{m[:24]}" for c, _, m in WRONG])
def test_hidden_checks_fail_wrong_variants_with_the_right_hint(check: str, replace, message: str) -> None:
    namespace = solution_namespace()
    namespace.update(replace(namespace))
    problems = run(check, namespace)
    assert problems, f"{check} passed a wrong variant"
    assert message in "\n".join(problems), problems


def test_a_function_that_raises_is_a_student_error() -> None:
    def broken(*args):
        raise NotImplementedError("gram_matrix is not written yet")

    with pytest.raises(StudentError):
        run("check-gram", solution_namespace(gram_matrix=broken))


@pytest.mark.parametrize("value", [None, "a string", [1.0, 2.0], True, {"__unsupported__": "generator"}])
def test_odd_return_values_are_problems_not_grader_errors(value: object) -> None:
    functions = ("gram_matrix", "content_loss", "style_loss", "tv_loss", "transfer_style")
    namespace = solution_namespace(**{name: (lambda *args, **kwargs: value) for name in functions})
    for check in CHECKS:
        assert run(check, namespace), check


@pytest.mark.slow
def test_grading_the_solution_gives_full_marks_and_the_blank_exercise_zero() -> None:
    solution = grade.grade_notebook(SOLUTION, seed=3)
    assert solution.status == "graded", solution.message
    assert solution.score == solution.max_score == 9, [(c.id, c.feedback) for c in solution.checks]
    blank = grade.grade_notebook(BLANK, seed=3)
    assert blank.status == "graded", blank.message
    assert blank.score == 0
    assert {check.status for check in blank.checks} == {"error"}


def test_every_task_declares_the_off_limits_calls_and_the_solution_uses_none() -> None:
    key = load_key(EXERCISE)
    assert [task.id for task in key.tasks] == ["task-gram", "task-content", "task-style", "task-tv", "task-transfer"]
    student = {1: "import viztools\nfrom viztools.optimize import TotalVariation\n",
               2: "def gram_matrix(features):\n    return viztools.gram_matrix(features)\n"}
    solution = {number: cell.source for number, cell in enumerate(nbformat.read(SOLUTION, as_version=4).cells, 1)
                if cell.cell_type == "code" and "check" not in cell.metadata.get("tags", [])}
    for task in key.tasks:
        found = {use.forbidden for use in static.forbidden_uses(student, task.forbidden)}
        assert found == {"viztools.style.gram_matrix", "viztools.optimize.TotalVariation"}, task.id
        assert static.forbidden_uses(solution, task.forbidden) == [], task.id
