"""Hidden checks of exercise 07 (DeepDream): other images, sizes, layers, step sizes and octaves than the visible
checks.

Every check draws its inputs from ``rng`` (seeded per grading run) and computes the expected values here with the
grader's own references: :func:`reference_gradient` (backpropagate the activations, as the original code),
:func:`reference_step` and :func:`reference_dream` (the exercise's recipe, which equals ``viztools.deepdream`` with
``jitter=0``; tests/test_exercise_07_deepdream.py checks that). When an answer is wrong, the check also computes the
plausible mistakes (the gradient of ``sum(a)``, a step without normalization or clamp, octaves that lose the
detail...) and names the one the answer matches.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

import viztools
from viztools.deepdream import octave_sizes as library_octave_sizes
from viztools.grading.proxy import Returned, Student, close, equal, model, reference_model, require
from viztools.hooks import forward_activations

GLYPHNET = model("glyphnet")
GRADIENT_HINT = ("Hint: copy the image with requires_grad, run it to the layer with viztools.forward_activations, "
                 "call activation.backward(gradient=activation.detach()) and return the pixels' .grad.")
STEP_HINT = "Hint: image + lr * g / g.abs().mean() with g = dream_gradient(...), then .clamp(0, 1)."
SIZES_HINT = ("Hint: start from [(height, width)]; octaves - 1 times divide the smallest size by scale, round each "
              "side with round(), keep it at least 8 px and insert it in front; stop when it no longer shrinks.")
OCTAVES_HINT = ("Hint: for each size of octave_sizes (coarsest first): base = resize(image, size), start from "
                "(base + resize(detail, size)).clamp(0, 1), run `steps` dream_step calls, then "
                "detail = dreamed - base.")


def resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The exercise's resize: bilinear with antialiasing (as viztools.deepdream)."""
    return F.interpolate(pixels, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def reference_gradient(network: viztools.VizModel, image: torch.Tensor, layer: str,
                       seed: str = "activation") -> torch.Tensor:
    """The pixel gradient when backpropagation starts at ``layer`` from the activations (or from ones: sum(a))."""
    pixels = image.clone().requires_grad_(True)
    activation = forward_activations(network, pixels, [layer])[layer]
    start = activation.detach() if seed == "activation" else torch.ones_like(activation)
    activation.backward(gradient=start)
    return pixels.grad.detach()


def _normalized(gradient: torch.Tensor, how: str = "mean_abs") -> torch.Tensor:
    if how == "mean_abs":
        return gradient / gradient.abs().mean()
    if how == "l2":
        return gradient / gradient.norm()
    if how == "max":
        return gradient / gradient.abs().max()
    return gradient


def reference_step(network: viztools.VizModel, image: torch.Tensor, layer: str, lr: float) -> torch.Tensor:
    """One DeepDream step: image + lr * g / mean|g|, clamped to [0, 1]."""
    return (image + lr * _normalized(reference_gradient(network, image, layer))).clamp(0.0, 1.0)


def reference_dream(network: viztools.VizModel, image: torch.Tensor, layer: str, steps: int, lr: float, octaves: int,
                    scale: float, carry: str = "detail") -> torch.Tensor:
    """DeepDream with octaves; ``carry="nothing"`` / ``"image"`` are the mistakes (no detail / the whole dream)."""
    sizes = library_octave_sizes(image.shape[-2], image.shape[-1], octaves, scale)
    detail = torch.zeros(1, 3, *sizes[0])
    dreamed = None
    for size in sizes:
        base = resize(image, size)
        if carry == "image" and dreamed is not None:
            start = resize(dreamed, size).clamp(0.0, 1.0)
        elif carry == "nothing":
            start = base.clamp(0.0, 1.0)
        else:
            start = (base + resize(detail, size)).clamp(0.0, 1.0)
        dreamed = start
        for _ in range(steps):
            dreamed = reference_step(network, dreamed, layer, lr)
        detail = dreamed - base
    return dreamed


def _glyph_image(rng: random.Random, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    images, _ = viztools.make_glyphworld(1, seed=rng.randrange(1, 10_000), start=rng.randrange(10_000))
    return images if tuple(size) == (64, 64) else resize(images, size).clamp(0.0, 1.0)


def _as_tensor(value: object) -> torch.Tensor | None:
    """The value as a float64 tensor, or None when it is not numeric."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    if isinstance(value, list):
        try:
            return torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _matching_hint(value: object, variants: list[tuple[torch.Tensor, str]], atol: float) -> list[str]:
    """The hint of the first variant ``value`` equals (within ``atol``), as a one-element list, else []."""
    got = _as_tensor(value)
    if got is None:
        return []
    for candidate, hint in variants:
        candidate = candidate.to(torch.float64)
        if got.shape == candidate.shape and float((got - candidate).abs().max()) <= atol:
            return [hint]
    return []


def _unchanged(returned: Returned, image: torch.Tensor) -> list[str]:
    return require("the input image is left unchanged",
                   bool(returned.tensor_args) and torch.equal(returned.tensor_args[0], image),
                   "your function changed the caller's image (work on `image.clone()`)")


def _finish(problems: list[str], hints: list[str], default: str) -> list[str]:
    if not problems:
        return []
    return [*problems, *(dict.fromkeys(hints) or [default])]


def check_gradient(student: Student, rng: random.Random) -> list[str]:
    """dream_gradient at other GlyphNet layers, on unseen images, one of them not 64 px."""
    network = reference_model()
    layers = rng.sample(["conv1", "conv2", "conv4", "pool2", "pool3"], 2)
    cases = [(layer, _glyph_image(rng)) for layer in layers]
    side = rng.choice([40, 48, 56, 80])
    cases.append(("conv2", _glyph_image(rng, (side, side))))
    problems, hints = [], []
    for layer, image in cases:
        returned = student.call("dream_gradient", GLYPHNET, image, layer)
        expected = reference_gradient(network, image, layer)
        scale = float(expected.abs().mean())
        got = _as_tensor(returned.value)
        what = f"GlyphNet {layer}, unseen {image.shape[-1]} px image, relative to mean |gradient|"
        found = close(what, returned.value if got is None else got / scale, expected / scale, atol=1e-3)
        if found:
            problems += found
            ones = reference_gradient(network, image, layer, seed="ones")
            hints += _matching_hint(returned.value, [
                (ones, "Hint: you backpropagated ones, which gives the gradient of sum(a). DeepDream sets the layer's "
                       "gradient to its activations: activation.backward(gradient=activation.detach())."),
                (2 * expected, "Hint: your gradient is twice the expected one, the gradient of sum(a^2). The "
                               "objective is 1/2 * sum(a^2), whose gradient at the layer is the activation itself."),
                (-expected, "Hint: your gradient has the wrong sign: backpropagate +activation."),
            ], atol=1e-3 * scale)
            if not hints and got is not None and got.shape == expected.shape and float(got.abs().mean()) < 0.01 * scale:
                hints.append("Hint: your gradient is much smaller than expected: did you average (mean) instead of "
                             "summing over the activations?")
        problems += _unchanged(returned, image)
    return _finish(problems, hints, GRADIENT_HINT)


def check_step(student: Student, rng: random.Random) -> list[str]:
    """dream_step for other layers and step sizes, one so large that many pixels are clamped."""
    network = reference_model()
    cases = [(rng.choice(["conv1", "pool1"]), rng.choice([0.003, 0.005, 0.008])),
             (rng.choice(["conv4", "pool3"]), rng.choice([0.02, 0.03, 0.04])),
             (rng.choice(["conv2", "conv3"]), rng.choice([0.15, 0.2, 0.3]))]
    problems, hints = [], []
    for layer, lr in cases:
        image = _glyph_image(rng)
        returned = student.call("dream_step", GLYPHNET, image, layer, lr)
        expected = reference_step(network, image, layer, lr)
        found = close(f"GlyphNet {layer}, lr={lr}, unseen image", returned.value, expected)
        if found:
            problems += found
            gradient = reference_gradient(network, image, layer)
            ones = reference_gradient(network, image, layer, seed="ones")
            hints += _matching_hint(returned.value, [
                ((image + lr * _normalized(gradient)), "Hint: the pixels must stay in [0, 1]: clamp them after "
                                                       "the step (.clamp(0, 1))."),
                ((image + lr * gradient).clamp(0, 1), "Hint: normalize the step: divide the gradient by its mean "
                                                      "absolute value (lr * g / g.abs().mean()), so lr is the "
                                                      "average change of a pixel."),
                ((image - lr * _normalized(gradient)).clamp(0, 1), "Hint: wrong sign: DeepDream ascends, "
                                                                   "image + lr * g / mean|g|."),
                ((image + lr * _normalized(gradient, "l2")).clamp(0, 1), "Hint: divide by the mean absolute value "
                                                                         "of the gradient, not by its L2 norm."),
                ((image + lr * _normalized(gradient, "max")).clamp(0, 1), "Hint: divide by the mean absolute value "
                                                                          "of the gradient, not by its maximum."),
                ((image + lr * _normalized(ones)).clamp(0, 1), "Hint: the step follows the gradient of sum(a): "
                                                               "fix dream_gradient (check 1)."),
            ], atol=1e-4)
            got = _as_tensor(returned.value)
            if not hints and got is not None and got.numel() and (float(got.min()) < 0 or float(got.max()) > 1):
                hints.append("Hint: some pixels are outside [0, 1]: clamp them after the step.")
        problems += _unchanged(returned, image)
    return _finish(problems, hints, STEP_HINT)


def check_octave_sizes(student: Student, rng: random.Random) -> list[str]:
    """octave_sizes for other sizes, numbers of octaves and scales, including the 8 px floor and an early stop."""
    scales = [1.3, 1.4, 1.5, 1.7]  # no rounding ties (x.5) for integer sides
    cases = [(rng.randrange(9, 12), rng.randrange(9, 12), 5, rng.choice(scales)),
             (rng.randrange(10, 16), rng.randrange(30, 60), 4, rng.choice(scales)),
             (rng.randrange(20, 300), rng.randrange(20, 300), 1, rng.choice(scales))]
    for _ in range(3):
        cases.append((rng.randrange(40, 400), rng.randrange(40, 400), rng.randrange(2, 6), rng.choice(scales)))
    problems, hints = [], []
    for height, width, octaves, scale in cases:
        expected = [list(size) for size in library_octave_sizes(height, width, octaves, scale)]
        returned = student.call("octave_sizes", height, width, octaves, scale).value
        found = equal(f"octave_sizes({height}, {width}, {octaves}, {scale})", returned, expected)
        if found:
            problems += found
            if isinstance(returned, list) and returned == expected[::-1] and len(expected) > 1:
                hints.append("Hint: list the sizes from the coarsest (smallest) to the original size.")
    return _finish(problems, hints, SIZES_HINT)


def check_octaves(student: Student, rng: random.Random) -> list[str]:
    """dream_octaves with other layers, numbers of octaves, scales and steps, on unseen (one non-square) images."""
    network = reference_model()
    cases = [(_glyph_image(rng), rng.choice(["conv2", "conv4"]), 2, rng.choice([1.3, 1.5, 1.7]), 2,
              rng.choice([0.01, 0.02, 0.03])),
             (_glyph_image(rng, rng.choice([(56, 72), (72, 56), (60, 80)])), "conv3", 3, rng.choice([1.4, 1.5]), 2,
              rng.choice([0.01, 0.02])),
             (_glyph_image(rng), rng.choice(["conv1", "conv3"]), 1, 1.4, 3, rng.choice([0.01, 0.02]))]
    problems, hints = [], []
    for image, layer, octaves, scale, steps, lr in cases:
        height, width = image.shape[-2:]
        returned = student.call("dream_octaves", GLYPHNET, image, layer, steps, lr, octaves, scale)
        expected = reference_dream(network, image, layer, steps, lr, octaves, scale)
        what = f"{layer}, {octaves} octave(s), scale {scale}, {steps} steps of lr={lr}, unseen {height}x{width} image"
        found = close(what, returned.value, expected, atol=1e-3)
        if found:
            problems += found
            got = _as_tensor(returned.value)
            variants = []
            if octaves > 1:
                variants = [
                    (reference_dream(network, image, layer, steps, lr, octaves, scale, carry="nothing"),
                     "Hint: the detail is not carried between octaves: start each octave from "
                     "(base + resize(detail, size)).clamp(0, 1), where detail = dreamed - base of the previous one."),
                    (reference_dream(network, image, layer, steps, lr, octaves, scale, carry="image"),
                     "Hint: you carried the whole dreamed image up (it gets blurrier at every octave); carry only "
                     "the detail (dreamed - base) and add it to a sharp resize(image, size)."),
                ]
            hints += _matching_hint(returned.value, variants, atol=1e-3)
            if got is not None and got.dim() == 4 and tuple(got.shape[-2:]) != (height, width):
                hints.append(f"Hint: the dream must have the image's size ({height}x{width}): go through "
                             "octave_sizes from the coarsest size to the original one.")
        problems += _unchanged(returned, image)
    return _finish(problems, hints, OCTAVES_HINT)
