"""Hidden checks of exercise 09 (adversarial examples): other images, classes, step sizes, budgets and corner models.

Expected values are computed here with autograd and with ``viztools.adversarial.fooling_image`` and ``fgsm``. The
images have pixels at exactly 0 and 1, so a missing clamp shows. When a wrong answer matches a known mistake (a
wrong sign, a missing normalization or clamp, the probability instead of the logit, the raw gradient instead of
its sign, a step counted too many), the feedback names it.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

import viztools
from viztools.adversarial import fgsm, fooling_image
from viztools.grading.checks import close_problem
from viztools.grading.proxy import Student, close, equal, model, reference_model, require

GLYPHNET = model("glyphnet")
GRADIENT_HINT = ("Hint: pixels = image.clone().requires_grad_(True); score = model(pixels)[0, target] (the logit); "
                 "(gradient,) = torch.autograd.grad(score, pixels).")
STEP_HINT = "Hint: g = the class-score gradient; return (image + lr * g / g.norm()).clamp(0, 1)."
FOOL_HINT = ("Hint: before each step, return (image, step) if int(model(image).argmax()) == target; after "
             "max_steps steps return (image, max_steps).")
FGSM_HINT = ("Hint: g = the gradient of F.cross_entropy(model(pixels), torch.tensor([label])) with respect to the "
             "pixels; return (image + epsilon * g.sign()).clamp(0, 1).")


def _images(rng: random.Random, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unseen GlyphWorld images, about 5% of their values set to exactly 0 and 5% to exactly 1."""
    images, labels = viztools.make_glyphworld(count, seed=rng.randrange(10, 10_000), start=rng.randrange(1000))
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    draw = torch.rand(images.shape, generator=generator)
    images = torch.where(draw < 0.05, torch.zeros_like(images), images)
    return torch.where(draw > 0.95, torch.ones_like(images), images), labels


def _matches(got: object, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    return isinstance(got, torch.Tensor) and close_problem(got, expected, atol=atol) is None


def _gradient(network: viztools.VizModel, image: torch.Tensor, objective: object) -> torch.Tensor:
    pixels = image.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective(network(pixels)), pixels)
    return gradient


def _out_of_range(got: object) -> bool:
    return isinstance(got, torch.Tensor) and got.numel() > 0 and bool((got < 0).any() or (got > 1).any())


def check_gradient(student: Student, rng: random.Random) -> list[str]:
    """class_score_gradient on a corner model of another size and on unseen GlyphWorld images and classes."""
    problems, mistakes = [], []
    corner, size = rng.choice([(2, 5), (3, 5), (3, 6)])
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    image = torch.rand(1, 3, size, size, generator=generator)
    expected = torch.zeros(1, 3, size, size)
    expected[:, :, :corner, :corner] = 1 / 3
    got = student.call("class_score_gradient", model("corner", corner=corner, size=size), image, 0).value
    problems += close(f"corner model ({corner}x{corner} corner, {size}x{size} image), class 0", got, expected)
    network = reference_model()
    images, labels = _images(rng, 2)
    for index in range(2):
        glyph = images[index : index + 1]
        target = rng.choice([int(labels[index]), rng.randrange(10)])
        returned = student.call("class_score_gradient", GLYPHNET, glyph, target)
        expected = _gradient(network, glyph, lambda logits, t=target: logits[0, t])
        problem = close(f"GlyphNet, unseen image {index}, class {target}", returned.value, expected, atol=1e-5)
        problems += problem
        problems += require("the image is left unchanged", bool(returned.tensor_args)
                            and torch.equal(returned.tensor_args[0], glyph),
                            "your function changed the caller's image (work on image.clone())")
        if problem:
            if _matches(returned.value, -expected):
                mistakes.append("your gradient has the wrong sign: differentiate the score itself.")
            elif _matches(returned.value, _gradient(network, glyph, lambda lg, t=target: F.softmax(lg, 1)[0, t])):
                mistakes.append("yours is the gradient of the probability: use the logit model(pixels)[0, target].")
            elif _matches(returned.value, _gradient(network, glyph, lambda lg, t=target: F.log_softmax(lg, 1)[0, t])):
                mistakes.append("yours is the gradient of the log-probability: use the logit model(pixels)[0, target].")
    return [*problems, *dict.fromkeys(mistakes), GRADIENT_HINT] if problems else []


def check_step(student: Student, rng: random.Random) -> list[str]:
    """fooling_step with other step sizes, classes and images (pixels at 0 and 1), and on a corner model."""
    problems, mistakes = [], []
    corner, size = rng.choice([(2, 5), (3, 6)])
    start = torch.full((1, 3, size, size), 0.3)
    start[0, rng.randrange(3), 0, 0] = 0.95
    lr = rng.choice([0.5, 0.8])
    expected = start.clone()
    expected[:, :, :corner, :corner] = (expected[:, :, :corner, :corner] + lr / (3 * corner**2) ** 0.5).clamp(0, 1)
    got = student.call("fooling_step", model("corner", corner=corner, size=size), start, 0, lr).value
    problems += close(f"corner model ({corner}x{corner} corner), lr={lr}", got, expected)
    network = reference_model()
    images, labels = _images(rng, 2)
    for index, lr in enumerate([rng.choice([0.25, 0.4]), rng.choice([2.0, 4.0])]):
        glyph = images[index : index + 1]
        target = rng.choice([c for c in range(10) if c != int(labels[index])])
        gradient = _gradient(network, glyph, lambda logits, t=target: logits[0, t])
        expected = (glyph + lr * gradient / gradient.norm()).clamp(0, 1)
        got = student.call("fooling_step", GLYPHNET, glyph, target, lr).value
        problem = close(f"GlyphNet, unseen image {index}, class {target}, lr={lr}", got, expected, atol=1e-5)
        if not problem:
            continue
        problems += problem
        if _out_of_range(got):
            mistakes.append("your image has values outside [0, 1]: clamp the result with .clamp(0, 1).")
        if _matches(got, (glyph - lr * gradient / gradient.norm()).clamp(0, 1)):
            mistakes.append("your step goes down the gradient: add lr * g / ||g|| to climb the target's score.")
        elif _matches(got, (glyph + lr * gradient).clamp(0, 1)):
            mistakes.append("your step is not normalized: divide the gradient by its L2 norm g.norm() (over all "
                            "pixels), so every step has length lr.")
        elif _matches(got, (glyph + lr * gradient / gradient.abs().max()).clamp(0, 1)) or _matches(
                got, (glyph + lr * gradient / gradient.norm(dim=1, keepdim=True)).clamp(0, 1)):
            mistakes.append("your gradient is normalized the wrong way: divide by the L2 norm of the whole gradient, "
                            "g.norm().")
    return [*problems, *dict.fromkeys(mistakes), STEP_HINT] if problems else []


def check_fool(student: Student, rng: random.Random) -> list[str]:
    """fool gives viztools' fooling image and step count for unseen images, targets, step sizes and step limits."""
    problems, mistakes = [], []
    network = reference_model()
    images, labels = viztools.make_glyphworld(2, seed=rng.randrange(10, 10_000), start=rng.randrange(1000))
    first, label = images[0:1], int(labels[0])
    others = [c for c in range(10) if c != label]
    cases = [(first, rng.choice(others), rng.choice([0.25, 0.5]), 100),
             (images[1:2], rng.choice([c for c in range(10) if c != int(labels[1])]), 0.25, 100),
             (first, rng.choice(others), 0.25, rng.choice([1, 2])),
             (first, int(network.predict(first).argmax()), 0.25, 100)]
    for number, (image, target, lr, max_steps) in enumerate(cases):
        expected = fooling_image(network, image, target, lr=lr, max_steps=max_steps)
        got = student.call("fool", GLYPHNET, image, target, lr, max_steps).value
        what = f"target {target}, lr={lr}, max_steps={max_steps}" + (" (already predicted)" if number == 3 else "")
        if not isinstance(got, list) or len(got) != 2:
            problems.append(f"{what}: expected (image, steps), got "
                            + (f"a list of {len(got)}" if isinstance(got, list) else f"a {type(got).__name__}"))
            continue
        step_problem = equal(f"{what}: steps", got[1], expected.steps)
        problems += step_problem + close(f"{what}: image", got[0], expected.adversarial, atol=1e-4)
        if step_problem and isinstance(got[1], int) and abs(got[1] - expected.steps) == 1:
            mistakes.append("your step count is off by one: check the prediction before each step and return the "
                            "number of steps taken (0 when the image is already classified as the target).")
        if step_problem and isinstance(got[1], int) and got[1] > max_steps:
            mistakes.append(f"your loop took more than max_steps={max_steps} steps.")
    return [*problems, *dict.fromkeys(mistakes), FOOL_HINT] if problems else []


def check_fgsm(student: Student, rng: random.Random) -> list[str]:
    """fgsm_attack on unseen images (pixels at 0 and 1), true and other labels, small and large budgets."""
    problems, mistakes = [], []
    network = reference_model()
    images, labels = _images(rng, 3)
    cases = [(0, int(labels[0]), rng.choice([1, 2, 3]) / 255), (1, int(labels[1]), rng.choice([0.08, 0.12, 0.2])),
             (2, rng.choice([c for c in range(10) if c != int(labels[2])]), rng.choice([4, 6]) / 255)]
    corner, size = rng.choice([(2, 5), (3, 6)])
    start = torch.full((1, 3, size, size), 0.5)
    start[0, rng.randrange(3), 0, 1] = 0.0
    epsilon = rng.choice([0.05, 0.15])
    expected = start.clone()
    expected[:, :, :corner, :corner] = (expected[:, :, :corner, :corner] - epsilon).clamp(0, 1)
    got = student.call("fgsm_attack", model("corner", corner=corner, size=size), start, 0, epsilon).value
    problems += close(f"corner model ({corner}x{corner} corner), label 0, epsilon={epsilon}", got, expected)
    for index, label, epsilon in cases:
        glyph = images[index : index + 1]
        expected = fgsm(network, glyph, label, epsilon=epsilon).adversarial
        got = student.call("fgsm_attack", GLYPHNET, glyph, label, epsilon).value
        problem = close(f"GlyphNet, unseen image {index}, label {label}, epsilon={epsilon:.3g}", got, expected,
                        atol=1e-5)
        if not problem:
            continue
        problems += problem
        gradient = _gradient(network, glyph, lambda logits, y=label: F.cross_entropy(logits, torch.tensor([y])))
        if _out_of_range(got):
            mistakes.append("your image has values outside [0, 1]: clamp the result with .clamp(0, 1).")
        if _matches(got, (glyph - epsilon * gradient.sign()).clamp(0, 1)):
            mistakes.append("your step lowers the loss (wrong sign): FGSM adds epsilon * sign(gradient) to move away "
                            "from the label.")
        elif isinstance(got, torch.Tensor) and got.shape == glyph.shape and float(
                (got - glyph).abs().max()) > epsilon + 1e-6:
            mistakes.append(f"some pixels moved by more than epsilon={epsilon:.3g}: use the sign of the gradient, "
                            "so every pixel moves by exactly epsilon.")
        elif _matches(got, (glyph + epsilon * gradient).clamp(0, 1)) or _matches(
                got, (glyph + epsilon * gradient / gradient.abs().max()).clamp(0, 1)):
            mistakes.append("your step is the gradient, not its sign: use gradient.sign(), so every pixel moves by "
                            "epsilon.")
    return [*problems, *dict.fromkeys(mistakes), FGSM_HINT] if problems else []
