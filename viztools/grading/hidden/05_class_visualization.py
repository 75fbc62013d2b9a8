"""Hidden checks of exercise 05 (class visualization): other images, classes, step sizes, penalties and shifts.

Every check draws its inputs from ``rng`` (seeded per grading run) and computes the expected values here with the
grader's own reference of the exercise's recipe (:func:`reference_step`, :func:`reference_loop`). When a wrong
answer matches a known mistake (descending, the L2 penalty added, jitter not rolled back, ...) the feedback names it.
"""

from __future__ import annotations

import functools
import random

import torch

import viztools
from viztools.data import gaussian_blur
from viztools.grading.checks import corner_model
from viztools.grading.proxy import Student, close_or_hint, model, reference_model, require

GLYPHNET = model("glyphnet")
ATOL, RTOL = 1e-4, 1e-3


def _glyph_image(rng: random.Random) -> torch.Tensor:
    images, _ = viztools.make_glyphworld(1, seed=rng.randrange(1, 10_000), start=rng.randrange(10_000))
    return images


def _generator(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


#: close_or_hint at this exercise's tolerances: the hint names the mistake an answer matches.
compare = functools.partial(close_or_hint, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------------------------
# The reference recipe, with switches for the usual mistakes
# --------------------------------------------------------------------------------------------------------------


def reference_score(network: viztools.VizModel, image: torch.Tensor, target: int, l2: float, *, sign: float = -1.0,
                    normalized: bool = True, probability: bool = False, squared: bool = True) -> torch.Tensor:
    output = network(image)
    score = torch.softmax(output, dim=1)[0, target] if probability else output[0, target]
    values = network.normalize(image) if normalized else image
    penalty = values.pow(2).sum() if squared else values.pow(2).sum().sqrt()
    return score + sign * l2 * penalty


def reference_step(network: viztools.VizModel, image: torch.Tensor, target: int, l2: float, lr: float, *,
                   direction: float = 1.0, scale: str = "rms", **score_options: object) -> torch.Tensor:
    pixels = image.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(reference_score(network, pixels, target, l2, **score_options), pixels)
    size = {"rms": gradient.pow(2).mean().sqrt(), "norm": gradient.norm(), "none": torch.tensor(1.0)}[scale]
    return (pixels + direction * lr * gradient / size).detach()


def reference_jittered(network: viztools.VizModel, image: torch.Tensor, target: int, l2: float, lr: float, dy: int,
                       dx: int, *, back: int = -1, dims: tuple[int, int] = (2, 3)) -> torch.Tensor:
    rolled = torch.roll(image, shifts=(dy, dx), dims=dims)
    stepped = reference_step(network, rolled, target, l2, lr)
    return torch.roll(stepped, shifts=(back * dy, back * dx), dims=dims) if back else stepped


def reference_loop(network: viztools.VizModel, target: int, shifts: list, l2: float, lr: float, blur_every: int,
                   blur_sigma: float, *, start: str = "mean", blur_offset: int = 0, clamp: bool = True,
                   back: int = -1) -> torch.Tensor:
    size = network.input_size
    mean = torch.tensor(network.mean, dtype=torch.float32).view(1, 3, 1, 1)
    image = (mean if start == "mean" else torch.zeros(1, 3, 1, 1)).expand(1, 3, size, size).clone()
    for step, (dy, dx) in enumerate(shifts, start=1):
        image = reference_jittered(network, image, target, l2, lr, dy, dx, back=back)
        if clamp:
            image = image.clamp(0, 1)
        if blur_every > 0 and (step + blur_offset) % blur_every == 0:
            image = gaussian_blur(image, blur_sigma)
    return image


SCORE_HINT = "return model(image)[0, target] - l2 * (model.normalize(image) ** 2).sum()."
STEP_HINT = ("return image + lr * g / sqrt(mean(g ** 2)), g the gradient of regularized_score with respect to a "
             "copy of the pixels that requires a gradient (no clamp).")


def score_mistakes(network: viztools.VizModel, image: torch.Tensor, target: int, l2: float) -> list:
    return [
        (reference_score(network, image, target, l2, sign=1.0), "the L2 penalty is subtracted: score - l2 * ||x||^2."),
        (reference_score(network, image, target, l2, normalized=False),
         "penalize the normalized image x = model.normalize(image), not the raw pixels."),
        (reference_score(network, image, target, l2, probability=True),
         "use the class score (the logit, model(image)[0, target]), not the softmax probability."),
        (reference_score(network, image, target, l2, squared=False), "the penalty is the squared norm, sum(x ** 2)."),
    ]


def step_mistakes(network: viztools.VizModel, image: torch.Tensor, target: int, l2: float, lr: float) -> list:
    return [
        (reference_step(network, image, target, l2, lr, direction=-1.0),
         "you stepped down the gradient: class visualization is gradient ASCENT, image + lr * g / rms(g)."),
        (reference_step(network, image, target, l2, lr, sign=1.0),
         "the L2 penalty has the wrong sign: the step climbs score - l2 * ||x||^2 (is regularized_score right?)."),
        (reference_step(network, image, target, l2, lr, scale="none"),
         "scale the gradient to a fixed size: divide it by its root mean square, sqrt(mean(g ** 2))."),
        (reference_step(network, image, target, l2, lr, scale="norm"),
         "divide the gradient by its root mean square, sqrt(mean(g ** 2)), not by its norm."),
        (reference_step(network, image, target, l2, lr, normalized=False),
         "penalize the normalized image x = model.normalize(image), not the raw pixels (in regularized_score)."),
        (reference_step(network, image, target, l2, lr).clamp(0, 1), "ascent_step does not clamp (the loop does)."),
    ]


# --------------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------------


def check_score(student: Student, rng: random.Random) -> list[str]:
    """regularized_score on a corner model and on GlyphNet with unseen images, classes and penalties."""
    corner, size = rng.choice([(2, 5), (3, 5), (3, 6)])
    network, spec = corner_model(corner, size), model("corner", corner=corner, size=size)
    image = torch.rand(1, 3, size, size, generator=_generator(rng))
    problems = []
    for target in (0, 1):
        l2 = rng.uniform(0.05, 0.5)
        with torch.no_grad():
            expected = reference_score(network, image, target, l2)
            mistakes = score_mistakes(network, image, target, l2)
        got = student.call("regularized_score", spec, image, target, l2).value
        problems += compare(f"corner model, class {target}, l2={l2:.3f}", got, expected, mistakes, SCORE_HINT)
        if problems:
            return problems
    glyphnet, image = reference_model(), _glyph_image(rng)
    target, l2 = rng.randrange(10), rng.uniform(0.001, 0.05)
    with torch.no_grad():
        expected = reference_score(glyphnet, image, target, l2)
        mistakes = score_mistakes(glyphnet, image, target, l2)
    got = student.call("regularized_score", GLYPHNET, image, target, l2).value
    return compare(f"GlyphNet, class {glyphnet.categories[target]!r}, l2={l2:.4f}", got, expected, mistakes, SCORE_HINT)


def check_step_corner(student: Student, rng: random.Random) -> list[str]:
    """ascent_step on a corner model of another size, from a random image, with an L2 penalty."""
    corner, size = rng.choice([(2, 5), (3, 5), (3, 6)])
    network, spec = corner_model(corner, size), model("corner", corner=corner, size=size)
    image = 0.2 + 0.6 * torch.rand(1, 3, size, size, generator=_generator(rng))
    l2, lr = rng.uniform(0.05, 0.3), rng.uniform(0.02, 0.2)
    returned = student.call("ascent_step", spec, image, 0, l2, lr)
    problems = compare(f"{corner}x{corner} corner on a {size}x{size} image, l2={l2:.3f}, lr={lr:.3f}", returned.value,
                       reference_step(network, image, 0, l2, lr), step_mistakes(network, image, 0, l2, lr), STEP_HINT)
    problems += require("the input image is left unchanged", bool(returned.tensor_args)
                        and torch.equal(returned.tensor_args[0], image), "your function changed the caller's image")
    return problems


def check_step_glyphnet(student: Student, rng: random.Random) -> list[str]:
    """ascent_step on GlyphNet from an unseen image, for another class, penalty and step size."""
    network, image = reference_model(), _glyph_image(rng)
    target, l2, lr = rng.randrange(10), rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05)
    got = student.call("ascent_step", GLYPHNET, image, target, l2, lr).value
    return compare(f"class {network.categories[target]!r}, l2={l2:.4f}, lr={lr:.4f}", got,
                   reference_step(network, image, target, l2, lr), step_mistakes(network, image, target, l2, lr),
                   STEP_HINT)


JITTER_HINT = ("roll the image by (dy, dx) along dims (2, 3), take ascent_step, then roll the result back by "
               "(-dy, -dx).")


def _jitter_mistakes(network: viztools.VizModel, image: torch.Tensor, target: int, l2: float, lr: float, dy: int,
                     dx: int) -> list:
    return [
        (reference_jittered(network, image, target, l2, lr, dy, dx, back=0),
         "the jitter is not undone: roll the stepped image back by (-dy, -dx)."),
        (reference_jittered(network, image, target, l2, lr, dy, dx, back=1),
         "roll back by (-dy, -dx), the opposite of the first roll, not by (dy, dx) again."),
        (reference_step(network, image, target, l2, lr), "the image is not rolled: take the step on "
         "torch.roll(image, shifts=(dy, dx), dims=(2, 3))."),
        (reference_jittered(network, image, target, l2, lr, dy, dx, dims=(3, 2)),
         "dy rolls the rows (dim 2) and dx the columns (dim 3)."),
    ]


def check_jitter(student: Student, rng: random.Random) -> list[str]:
    """jittered_step with unseen shifts on a corner model and on GlyphNet."""
    corner, size = rng.choice([(2, 5), (2, 6), (3, 7)])
    network, spec = corner_model(corner, size), model("corner", corner=corner, size=size)
    image = torch.rand(1, 3, size, size, generator=_generator(rng))
    dy, dx = rng.choice([1, 2, -1]), rng.choice([-2, 3])
    l2, lr = rng.uniform(0.0, 0.2), rng.uniform(0.05, 0.2)
    got = student.call("jittered_step", spec, image, 0, l2, lr, dy, dx).value
    problems = compare(f"corner model, dy={dy}, dx={dx}", got, reference_jittered(network, image, 0, l2, lr, dy, dx),
                       _jitter_mistakes(network, image, 0, l2, lr, dy, dx), JITTER_HINT)
    if problems:
        return problems
    glyphnet, image = reference_model(), _glyph_image(rng)
    target, dy, dx = rng.randrange(10), rng.choice([-4, -3, 2, 5]), rng.choice([-5, 3, 4])
    got = student.call("jittered_step", GLYPHNET, image, target, 0.01, 0.02, dy, dx).value
    return compare(f"GlyphNet, dy={dy}, dx={dx}", got, reference_jittered(glyphnet, image, target, 0.01, 0.02, dy, dx),
                   _jitter_mistakes(glyphnet, image, target, 0.01, 0.02, dy, dx), JITTER_HINT)


LOOP_HINT = ("start from the mean image (model.mean in every pixel); for step t = 1, 2, ...: jittered_step with "
             "shifts[t - 1], clamp to [0, 1], and blur when t is a multiple of blur_every.")


def check_loop_steps(student: Student, rng: random.Random) -> list[str]:
    """The first steps of class_visualization_loop on GlyphNet, with unseen shifts, clamping and a blur."""
    network = reference_model()
    target = rng.randrange(10)
    shifts = [[rng.randint(-4, 4), rng.randint(-4, 4)] for _ in range(4)]
    lr, sigma = rng.uniform(0.2, 0.3), rng.uniform(0.6, 1.0)
    settings = {"l2": 1e-3, "lr": lr, "blur_every": 2, "blur_sigma": sigma}
    got = student.call("class_visualization_loop", GLYPHNET, target, shifts, **settings).value
    expected = reference_loop(network, target, shifts, **settings)
    mistakes = [
        (reference_loop(network, target, shifts, **settings, start="black"),
         "start from the mean image (every pixel model.mean, zero once normalized), not from black."),
        (reference_loop(network, target, shifts, **settings, blur_offset=1),
         "blur after steps 2, 4, ... (t a multiple of blur_every, counting steps from 1)."),
        (reference_loop(network, target, shifts, **{**settings, "blur_every": 0}), "blur every blur_every steps."),
        (reference_loop(network, target, shifts, **settings, clamp=False),
         "clamp the pixels to [0, 1] after each step."),
        (reference_loop(network, target, shifts, **settings, back=0),
         "the jitter is not undone: the image drifts with the shifts (is jittered_step right?)."),
    ]
    return compare(f"4 steps for class {network.categories[target]!r}, lr={lr:.3f}, blur_sigma={sigma:.2f}", got,
                   expected, mistakes, LOOP_HINT)


def check_loop_class(student: Student, rng: random.Random) -> list[str]:
    """class_visualization_loop paints two unseen classes that GlyphNet is sure of, with unseen shifts."""
    network = reference_model()
    problems: list[str] = []
    for target in rng.sample(range(10), 2):
        shifts = [[rng.randint(-4, 4), rng.randint(-4, 4)] for _ in range(30)]
        got = student.call("class_visualization_loop", GLYPHNET, target, shifts, lr=0.03).value
        name = network.categories[target]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (1, 3, 64, 64):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return [*problems, f"{name}: expected a (1, 3, 64, 64) image, got {shape}"]
        low, high = float(got.min()), float(got.max())
        problems += require(f"{name}: pixels in [0, 1]", low >= 0 and high <= 1,
                            f"values from {low:.3f} to {high:.3f} (clamp after each step)")
        probability = float(network.predict(got.float().clamp(0, 1))[0, target])
        problems += require(f"{name}: GlyphNet's probability > 0.9 after 30 steps", probability > 0.9,
                            f"it is {probability:.3f}")
    if problems:
        problems.append(f"Hint: {LOOP_HINT} Does each step climb the score (check-step-corner)?")
    return problems
