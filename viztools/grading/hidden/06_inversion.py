"""Hidden checks of exercise 06 (feature inversion): other tensors, images, layers, weights and starting points.

Every check draws its inputs from ``rng`` (seeded per grading run) and computes the expected values here with the
grader's own reference of the exercise's recipe (:func:`reference_invert`: Adam on the relative feature error plus
the TV prior, clamped after each step). When a wrong answer matches a known mistake (no normalization, TV over one
axis, SGD instead of Adam, ascent, no clamp, ...) the feedback names it.
"""

from __future__ import annotations

import functools
import random

import torch

import viztools
from viztools.grading.proxy import Student, close_or_hint, model, reference_model, require
from viztools.hooks import forward_activations
from viztools.optimize import TotalVariation

GLYPHNET = model("glyphnet")
ATOL, RTOL = 1e-4, 1e-3


def _glyph_image(rng: random.Random) -> torch.Tensor:
    images, _ = viztools.make_glyphworld(1, seed=rng.randrange(1, 10_000), start=rng.randrange(10_000))
    return images


def _generator(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


def _start(rng: random.Random, spread: tuple[float, float] = (0.05, 0.15)) -> torch.Tensor:
    """The mean colour plus seeded noise, clamped to [0, 1] (a wide spread puts many pixels at 0 and 1)."""
    noise = torch.randn(1, 3, 64, 64, generator=_generator(rng))
    return (0.5 + rng.uniform(*spread) * noise).clamp(0, 1)


#: close_or_hint at this exercise's tolerances: the hint names the mistake an answer matches.
compare = functools.partial(close_or_hint, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------------------


def features(network: viztools.VizModel, image: torch.Tensor, layer: str) -> torch.Tensor:
    return forward_activations(network, image, [layer])[layer]


def reference_loss(got: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (got - target).pow(2).sum() / target.pow(2).sum()


def reference_tv(image: torch.Tensor, *, horizontal: bool = True, vertical: bool = True,
                 power: int = 2) -> torch.Tensor:
    total = torch.zeros((), dtype=image.dtype)
    if horizontal:
        total = total + (image[..., :, 1:] - image[..., :, :-1]).abs().pow(power).sum()
    if vertical:
        total = total + (image[..., 1:, :] - image[..., :-1, :]).abs().pow(power).sum()
    return total


def reference_invert(network: viztools.VizModel, image: torch.Tensor, layer: str, start: torch.Tensor, steps: int,
                     lr: float, tv_weight: float, *, optimizer: str = "adam", direction: float = 1.0,
                     clamp: bool = True, normalized: bool = True) -> torch.Tensor:
    target = features(network, image, layer).detach()
    x = start.detach().clone().requires_grad_(True)
    optim = torch.optim.Adam([x], lr=lr) if optimizer == "adam" else torch.optim.SGD([x], lr=lr)
    for _ in range(steps):
        optim.zero_grad()
        got = features(network, x, layer)
        match = reference_loss(got, target) if normalized else (got - target).pow(2).sum()
        loss = direction * match + tv_weight * reference_tv(x)
        loss.backward()
        optim.step()
        if clamp:
            with torch.no_grad():
                x.clamp_(0, 1)
    return x.detach()


# --------------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------------

LOSS_HINT = "return ((features - target_features) ** 2).sum() / (target_features ** 2).sum()."


def check_feature_loss(student: Student, rng: random.Random) -> list[str]:
    """feature_loss on random feature tensors of other shapes and scales (4-d maps and a vector)."""
    generator = _generator(rng)
    shapes = [(1, rng.randrange(2, 9), rng.randrange(3, 9), rng.randrange(3, 9)), (1, rng.randrange(5, 40))]
    problems: list[str] = []
    for shape in shapes:
        scale = rng.choice([0.1, 3.0, 20.0])
        target = scale * torch.randn(shape, generator=generator).relu()
        got_features = target + scale * 0.5 * torch.randn(shape, generator=generator)
        difference = (got_features - target).pow(2)
        mistakes = [
            (difference.sum(), "divide by ||target_features||^2 (the relative error: 1 for all-zero features)."),
            (difference.sum().sqrt() / target.pow(2).sum().sqrt(), "square both norms: ||F - F0||^2 / ||F0||^2."),
            (difference.sum() / got_features.pow(2).sum(), "divide by the norm of the target features F0, not of F."),
            (difference.mean(), "sum over all elements and divide by ||F0||^2, not take the mean."),
            (difference.mean() / target.pow(2).sum(), "sum the squared differences (not their mean)."),
            (difference.sum() / target.abs().sum(), "divide by the squared norm sum(F0 ** 2), not sum(|F0|)."),
        ]
        got = student.call("feature_loss", got_features, target).value
        problems += compare(f"features of shape {shape}", got, reference_loss(got_features, target), mistakes,
                            LOSS_HINT)
        if problems:
            return problems
    return problems


TV_HINT = ("sum the squared differences of all horizontal neighbours (image[..., :, 1:] - image[..., :, :-1]) and "
           "all vertical ones (image[..., 1:, :] - image[..., :-1, :]).")


def check_total_variation(student: Student, rng: random.Random) -> list[str]:
    """total_variation of random images of other (non-square) sizes, one image and a batch."""
    generator = _generator(rng)
    problems: list[str] = []
    for batch in (1, 2):
        height, width = rng.randrange(3, 12), rng.randrange(3, 12)
        while width == height:
            width = rng.randrange(3, 12)
        image = torch.rand(batch, 3, height, width, generator=generator)
        mistakes = [
            (reference_tv(image, vertical=False), "only horizontal differences: add the vertical ones, "
             "image[..., 1:, :] - image[..., :-1, :]."),
            (reference_tv(image, horizontal=False), "only vertical differences: add the horizontal ones, "
             "image[..., :, 1:] - image[..., :, :-1]."),
            (reference_tv(image, power=1), "square the differences (beta = 2), not their absolute values."),
            (TotalVariation(1.0).penalty(image), "every pair of neighbours counts, also in the last row and column "
             "(H x (W - 1) horizontal and (H - 1) x W vertical differences)."),
            (reference_tv(image) / image.numel(), "sum the squared differences, not their mean."),
            (reference_tv(image[:1]), "sum over every image of the batch."),
        ]
        got = student.call("total_variation", image).value
        problems += compare(f"a batch of {batch} image(s) of {height}x{width} pixels", got, reference_tv(image),
                            mistakes, TV_HINT)
        if problems:
            return problems
    return problems


INVERT_HINT = ("target = features(model, image, layer).detach(); x = start.detach().clone().requires_grad_(True); "
               "Adam([x], lr=lr); each step: zero_grad, loss = feature_loss(features(model, x, layer), target) + "
               "tv_weight * total_variation(x), backward, step, then clamp x to [0, 1] under torch.no_grad().")


def check_invert_steps(student: Student, rng: random.Random) -> list[str]:
    """The first steps of invert from an unseen start, image, layer, step size and TV weight, exactly."""
    network, image = reference_model(), _glyph_image(rng)
    layer = rng.choice(["conv1", "pool1", "conv2"])
    start = _start(rng, (0.3, 0.4))  # many pixels at 0 or 1, where the clamp matters
    steps, lr, tv_weight = 3, rng.uniform(0.03, 0.08), rng.uniform(5e-4, 2e-3)
    settings = {"steps": steps, "lr": lr, "tv_weight": tv_weight}
    returned = student.call("invert", GLYPHNET, image, layer, start, **settings)
    expected = reference_invert(network, image, layer, start, **settings)
    mistakes = [
        (start, "the start came back unchanged: optimize a copy x of it and return x."),
        (reference_invert(network, image, layer, start, **settings, optimizer="sgd"),
         "use torch.optim.Adam([x], lr=lr), not SGD."),
        (reference_invert(network, image, layer, start, **settings, direction=-1.0),
         "minimize the feature loss (you climbed it)."),
        (reference_invert(network, image, layer, start, **settings, clamp=False),
         "clamp the pixels to [0, 1] after every step."),
        (reference_invert(network, image, layer, start, **{**settings, "tv_weight": 0.0}),
         "add tv_weight * total_variation(x) to the loss."),
        (reference_invert(network, image, layer, start, **settings, normalized=False),
         "the feature term is feature_loss, the relative error (is check-feature-loss passing?)."),
        (reference_invert(network, image, layer, start, **{**settings, "steps": steps - 1}),
         f"take exactly `steps` steps ({steps} here)."),
    ]
    problems = compare(f"{steps} steps from {layer}, lr={lr:.3f}, tv_weight={tv_weight:.2g}", returned.value, expected,
                       mistakes, INVERT_HINT)
    problems += require("the caller's start is left unchanged", len(returned.tensor_args) >= 2
                        and torch.equal(returned.tensor_args[1], start), "your function changed `start`")
    return problems


def check_invert_depths(student: Student, rng: random.Random) -> list[str]:
    """invert at conv1 and conv3 on an unseen image: features matched, the deeper reconstruction further away."""
    network, image = reference_model(), _glyph_image(rng)
    start = _start(rng)
    deep = rng.choice(["conv3", "pool3"])
    errors: dict[str, float] = {}
    problems: list[str] = []
    for layer in ("conv1", deep):
        got = student.call("invert", GLYPHNET, image, layer, start).value
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(image.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return [f"{layer}: expected an image of shape {tuple(image.shape)}, got {shape}"]
        got = got.float()
        with torch.no_grad():
            target = features(network, image, layer)
            before = float(reference_loss(features(network, start, layer), target))
            after = float(reference_loss(features(network, got.clamp(0, 1), layer), target))
        problems += require(f"{layer}: the feature loss drops to less than a third", after < before / 3,
                            f"from {before:.3f} to {after:.3f}")
        problems += require(f"{layer}: pixels in [0, 1]", float(got.min()) >= 0 and float(got.max()) <= 1,
                            f"values from {float(got.min()):.3f} to {float(got.max()):.3f}")
        errors[layer] = float((got - image).pow(2).mean().sqrt())
    problems += require("conv1 reconstructs the image (RMS error < 0.1)", errors["conv1"] < 0.1,
                        f"RMS error {errors['conv1']:.3f}")
    problems += require(f"{deep} is further from the image than conv1", errors[deep] > errors["conv1"],
                        f"RMS errors {errors['conv1']:.3f} (conv1) and {errors[deep]:.3f} ({deep})")
    if problems:
        problems.append(f"Hint: {INVERT_HINT} (with the defaults steps=40, lr=0.05, tv_weight=3e-4)")
    return problems
