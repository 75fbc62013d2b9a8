"""Hidden checks of exercise 08 (neural style): other feature maps, images, layers and weights than the visible
checks.

Every check draws its inputs from ``rng`` (seeded per grading run) and computes the expected values here with the
grader's own references (:func:`reference_gram`, divided by H*W as ``viztools.style.gram_matrix``; relative content
and style losses as ``viztools.style``; total variation as the exercise defines it; the exercise's tests check them
against the library). When an answer is wrong, the check also computes the plausible mistakes (a transposed or
unnormalized Gram matrix, a style loss without the layer weights, sums instead of means...) and names the one the
answer matches.
"""

from __future__ import annotations

import random

import torch

import viztools
from viztools.grading.proxy import Returned, Student, close, model, reference_model, require

GLYPHNET = model("glyphnet")
STYLE_IMAGES = ["hubble", "brick", "gravel", "grass", "colorwheel", "coffee", "astronaut"]
CONV_LAYERS = ["conv1", "conv2", "conv3", "conv4"]
GRAM_HINT = ("Hint: F = features.reshape(N, C, H * W); return F @ F.transpose(1, 2) / (H * W), one C x C matrix per "
             "image of the batch.")
CONTENT_HINT = "Hint: return (features - target).pow(2).sum() / target.pow(2).sum()."
STYLE_HINT = ("Hint: for each layer add weight * (gram_matrix(F_l) - A_l).pow(2).sum() / A_l.pow(2).sum(), with the "
              "features, target Gram matrix and weight of that layer.")
TV_HINT = ("Hint: (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean() + "
           "(image[..., 1:, :] - image[..., :-1, :]).pow(2).mean().")
TRANSFER_HINT = ("Hint: targets once without gradients; pixels = content.clone().requires_grad_(True); Adam on "
                 "[pixels]; each step zero_grad, total loss (content_weight * content + style + tv_weight * TV), "
                 "backward, optimizer.step(), then clamp the pixels to [0, 1] in place.")


def reference_gram(features: torch.Tensor, scale: str = "hw") -> torch.Tensor:
    """The Gram matrices divided by H*W; ``scale`` "sum" / "chw" are the unnormalized / CS231n variants."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    gram = flat @ flat.transpose(1, 2)
    return {"hw": gram / (h * w), "sum": gram, "chw": gram / (c * h * w)}[scale]


def reference_content(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (features - target).pow(2).sum() / target.pow(2).sum()


def reference_style(features: list[torch.Tensor], grams: list[torch.Tensor], weights: list[float],
                    gram_scale: str = "hw", relative: bool = True) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for layer_features, target, weight in zip(features, grams, weights, strict=True):
        error = (reference_gram(layer_features.double(), gram_scale) - target.double()).pow(2).sum()
        total = total + weight * (error / target.double().pow(2).sum() if relative else error)
    return total


def reference_tv(image: torch.Tensor, how: str = "mean") -> torch.Tensor:
    horizontal = image[..., :, 1:] - image[..., :, :-1]
    vertical = image[..., 1:, :] - image[..., :-1, :]
    if how == "sum":
        return horizontal.pow(2).sum() + vertical.pow(2).sum()
    if how == "abs":
        return horizontal.abs().mean() + vertical.abs().mean()
    if how == "horizontal":
        return horizontal.pow(2).mean()
    if how == "vertical":
        return vertical.pow(2).mean()
    if how == "cropped":  # viztools.optimize.TotalVariation's pairs: the last row and column left out
        dx = image[..., :-1, 1:] - image[..., :-1, :-1]
        dy = image[..., 1:, :-1] - image[..., :-1, :-1]
        return dx.pow(2).mean() + dy.pow(2).mean()
    return horizontal.pow(2).mean() + vertical.pow(2).mean()


def total_loss(network: viztools.VizModel, pixels: torch.Tensor, content: torch.Tensor, style: torch.Tensor,
               content_layer: str, style_layers: list[str], style_weights: list[float], content_weight: float,
               tv_weight: float) -> float:
    """The exercise's total loss of ``pixels``, measured with the references."""
    with torch.no_grad():
        target = viztools.get_activations(network, content, [content_layer])[content_layer]
        style_features = viztools.get_activations(network, style, style_layers)
        grams = [reference_gram(style_features[layer]) for layer in style_layers]
        now = viztools.get_activations(network, pixels, [content_layer, *style_layers])
        loss = (content_weight * reference_content(now[content_layer], target)
                + reference_style([now[layer] for layer in style_layers], grams, style_weights)
                + tv_weight * reference_tv(pixels))
    return float(loss)


def reference_transfer(network: viztools.VizModel, content: torch.Tensor, style: torch.Tensor, content_layer: str,
                       style_layers: list[str], style_weights: list[float], content_weight: float, tv_weight: float,
                       steps: int, lr: float) -> torch.Tensor:
    """The exercise's recipe: Adam on the pixels from the content image, clamped after every step."""
    with torch.no_grad():
        target = viztools.forward_activations(network, content, [content_layer])[content_layer]
        style_features = viztools.forward_activations(network, style, style_layers)
        grams = [reference_gram(style_features[layer]) for layer in style_layers]
    pixels = content.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        now = viztools.forward_activations(network, pixels, [content_layer, *style_layers])
        loss = (content_weight * reference_content(now[content_layer], target)
                + reference_style([now[layer] for layer in style_layers], grams, style_weights).float()
                + tv_weight * reference_tv(pixels))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0.0, 1.0)
    return pixels.detach()


def _as_tensor(value: object) -> torch.Tensor | None:
    """The value as a float64 tensor (a number as a 0-d tensor), or None when it is not numeric."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    if isinstance(value, (int, float, list)):
        try:
            return torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _scalar(value: object) -> object:
    """A one-element answer (a number, a 0-d or 1-element tensor) as a 0-d float64 tensor; else unchanged."""
    tensor = _as_tensor(value)
    return tensor.reshape(()) if tensor is not None and tensor.numel() == 1 else value


def _matching_hint(value: object, variants: list[tuple[torch.Tensor, str]], *, atol: float, rtol: float) -> list[str]:
    got = _as_tensor(value)
    if got is None:
        return []
    for candidate, hint in variants:
        candidate = candidate.detach().to(torch.float64)
        if got.shape == candidate.shape and bool(((got - candidate).abs() <= atol + rtol * candidate.abs()).all()):
            return [hint]
    return []


def _finish(problems: list[str], hints: list[str], default: str) -> list[str]:
    if not problems:
        return []
    return [*problems, *(dict.fromkeys(hints) or [default])]


def _features(rng: random.Random, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    return torch.rand(shape, generator=generator)


def _glyph_image(rng: random.Random) -> torch.Tensor:
    images, _ = viztools.make_glyphworld(1, seed=rng.randrange(1, 10_000), start=rng.randrange(10_000))
    return images


def check_gram(student: Student, rng: random.Random) -> list[str]:
    """gram_matrix for other batch sizes, channels and non-square grids (negative values too)."""
    height = rng.randrange(3, 9)
    shapes = [(1, rng.randrange(3, 9), height, height + rng.randrange(1, 5)),
              (rng.randrange(2, 4), rng.randrange(4, 12), rng.randrange(5, 11), rng.randrange(2, 5)),
              (1, rng.randrange(16, 40), rng.randrange(6, 12), rng.randrange(6, 12))]
    problems, hints = [], []
    for index, shape in enumerate(shapes):
        features = _features(rng, shape)
        if index == 1:
            features = features * 2 - 1
        n, c, h, w = shape
        got = student.call("gram_matrix", features).value
        found = close(f"features of shape {shape}", got, reference_gram(features), atol=1e-5, rtol=1e-4)
        if found:
            problems += found
            hints += _matching_hint(got, [
                (reference_gram(features, "sum"), "Hint: divide by the number of positions H*W (our normalization): "
                                                  "your Gram matrix is the plain sum over positions."),
                (reference_gram(features, "chw"), "Hint: divide by H*W only, not by C*H*W (CS231n's normalization; "
                                                  "ours, like viztools.style, divides by the number of positions)."),
            ], atol=1e-5, rtol=1e-4)
            tensor = _as_tensor(got)
            if tensor is not None and tuple(tensor.shape) == (n, h * w, h * w):
                hints.append("Hint: your Gram matrix is HW x HW (positions against positions): you multiplied F^T "
                             "by F. The Gram matrix compares channels: F @ F^T with F of shape (C, H*W) is C x C.")
            elif tensor is not None and tuple(tensor.shape) == (c, c) and n > 1:
                hints.append("Hint: keep the batch: one C x C Gram matrix per image, shape (N, C, C) "
                             "(reshape to (N, C, H*W) and use a batched product).")
    return _finish(problems, hints, GRAM_HINT)


def check_content(student: Student, rng: random.Random) -> list[str]:
    """content_loss on other feature shapes, including GlyphNet features of two unseen images."""
    cases = []
    for _ in range(2):
        shape = (1, rng.randrange(2, 20), rng.randrange(2, 9), rng.randrange(2, 9))
        cases.append((_features(rng, shape), _features(rng, shape) * rng.choice([0.5, 2.0, 3.0])))
    network, layer = reference_model(), rng.choice(CONV_LAYERS)
    activations = [viztools.get_activations(network, _glyph_image(rng), [layer])[layer] for _ in range(2)]
    cases.append((activations[0], activations[1]))
    problems, hints = [], []
    for features, target in cases:
        got = _scalar(student.call("content_loss", features, target).value)
        expected = reference_content(features.double(), target.double())
        found = close(f"features of shape {tuple(features.shape)}", got, expected, atol=1e-6, rtol=1e-4)
        if found:
            problems += found
            difference = (features.double() - target.double()).pow(2)
            hints += _matching_hint(got, [
                (difference.sum(), "Hint: divide by the squared norm of the target, sum(target^2): the loss is "
                                   "relative."),
                (difference.mean(), "Hint: use sums, not means, and divide by sum(target^2)."),
                (difference.sum() / features.double().pow(2).sum(), "Hint: divide by the target's squared norm "
                                                                    "(the content image's features), not by that "
                                                                    "of the features being optimized."),
                (difference.sum().sqrt() / target.double().pow(2).sum().sqrt(), "Hint: use squared norms (no square "
                                                                                "root)."),
            ], atol=1e-6, rtol=1e-4)
    return _finish(problems, hints, CONTENT_HINT)


def check_style(student: Student, rng: random.Random) -> list[str]:
    """style_loss at other GlyphNet layers and weights, with style images of another size than the features."""
    network = reference_model()
    problems, hints = [], []
    for count in (1, rng.randrange(2, 5)):
        layers = sorted(rng.sample(CONV_LAYERS, count))
        weights = [1.0] if count == 1 else [round(rng.uniform(0.1, 8.0), 2) for _ in layers]
        if count > 2:
            weights[rng.randrange(count)] = 0.0
        style_name, style_size = rng.choice(STYLE_IMAGES), rng.choice([48, 80, 96])
        style = viztools.load_image(style_name, style_size)
        image = _glyph_image(rng)
        features = viztools.get_activations(network, image, layers)
        grams = [reference_gram(a) for a in viztools.get_activations(network, style, layers).values()]
        feature_list = [features[layer] for layer in layers]
        got = _scalar(student.call("style_loss", feature_list, grams, weights).value)
        expected = reference_style(feature_list, grams, weights)
        what = f"layers {layers}, weights {weights}, style {style_name!r} at {style_size} px"
        found = close(what, got, expected, atol=1e-6, rtol=1e-4)
        if found:
            problems += found
            variants = [
                (reference_style(feature_list, grams, [1.0] * count),
                 "Hint: multiply each layer's loss by its weight (weights[l]); yours is the unweighted sum."),
                (reference_style(feature_list, grams, weights, relative=False),
                 "Hint: divide each layer's squared Gram error by the target's squared norm ||A_l||^2 (relative "
                 "loss)."),
                (reference_style(feature_list, grams, weights, gram_scale="sum"),
                 "Hint: the Gram matrices of the features are not divided by H*W (fix gram_matrix, check 1)."),
                (reference_style(feature_list, grams, weights) / count,
                 "Hint: sum over the layers; do not average."),
            ]
            if count > 1:
                variants += [(reference_style(feature_list[:1], grams[:1], weights[:1]),
                              "Hint: sum over all the layers (yours stopped after the first: is `return` inside "
                              "the loop?)")]
            hints += _matching_hint(got, variants, atol=1e-6, rtol=1e-4)
    return _finish(problems, hints, STYLE_HINT)


def check_tv(student: Student, rng: random.Random) -> list[str]:
    """tv_loss on unseen non-square images, a batch of two and an image of stripes."""
    stripes = torch.zeros(1, 3, rng.randrange(4, 9), rng.randrange(4, 9))
    stripes[..., :, rng.randrange(2)::2] = 1.0  # vertical stripes: every horizontal neighbour differs by 1
    images = [_features(rng, (1, 3, rng.randrange(5, 12), rng.randrange(12, 20))),
              _features(rng, (2, 3, rng.randrange(5, 10), rng.randrange(5, 10))), stripes]
    problems, hints = [], []
    for image in images:
        got = _scalar(student.call("tv_loss", image).value)
        what = f"{'stripes' if image is stripes else 'image'} of shape {tuple(image.shape)}"
        found = close(what, got, reference_tv(image.double()), atol=1e-6, rtol=1e-4)
        if found:
            problems += found
            hints += _matching_hint(got, [
                (reference_tv(image.double(), "sum"), "Hint: take the mean of the squared differences (in each "
                                                      "direction), not their sum."),
                (reference_tv(image.double(), "abs"), "Hint: square the differences (not their absolute value)."),
                (reference_tv(image.double(), "horizontal"), "Hint: add the vertical differences too "
                                                             "(image[..., 1:, :] - image[..., :-1, :])."),
                (reference_tv(image.double(), "vertical"), "Hint: add the horizontal differences too "
                                                           "(image[..., :, 1:] - image[..., :, :-1])."),
                (reference_tv(image.double(), "cropped"), "Hint: use every pair of neighbours: the horizontal "
                                                          "differences are image[..., :, 1:] - image[..., :, :-1] "
                                                          "over all rows."),
            ], atol=1e-6, rtol=1e-4)
    return _finish(problems, hints, TV_HINT)


def _image_problem(what: str, returned: Returned, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, list[str]]:
    got = _as_tensor(returned.value)
    if got is None or tuple(got.shape) != shape:
        return None, close(what, returned.value, torch.zeros(shape))
    return got, []


def check_transfer(student: Student, rng: random.Random) -> list[str]:
    """transfer_style with other images, layers and weights lowers the grader's total loss about as much as the
    reference's Adam steps, keeps pixels in [0, 1], and starts from the content image."""
    network = reference_model()
    content = _glyph_image(rng)
    style_name, style_size = rng.choice(STYLE_IMAGES), rng.choice([48, 64, 80])
    style = viztools.load_image(style_name, style_size)
    content_layer = rng.choice(["conv2", "conv3"])
    style_layers = sorted(rng.sample(CONV_LAYERS, rng.randrange(2, 5)))
    style_weights = [round(rng.uniform(0.05, 5.0), 2) for _ in style_layers]
    tv_weight, steps, lr = rng.choice([0.5, 1.0, 2.0]), 15, 0.02
    settings = (content_layer, style_layers, style_weights, 1.0, tv_weight)
    what = (f"content layer {content_layer}, style {style_name!r} ({style_size} px) at {style_layers} with weights "
            f"{style_weights}, tv_weight {tv_weight}, {steps} steps")
    returned = student.call("transfer_style", GLYPHNET, content, style, content_layer, style_layers, style_weights,
                            1.0, tv_weight, steps, lr)
    got, problems = _image_problem(what, returned, tuple(content.shape))
    hints = []
    if got is not None:
        low, high = float(got.min()), float(got.max())
        in_range = low >= -1e-6 and high <= 1 + 1e-6
        problems += require(f"{what}: pixels in [0, 1]", in_range, f"pixels from {low:.3g} to {high:.3g}")
        if not in_range:
            hints.append("Hint: clamp the pixels to [0, 1] after every step (with torch.no_grad(): "
                         "pixels.clamp_(0, 1)).")
        start = total_loss(network, content, content, style, *settings)
        reached = total_loss(network, reference_transfer(network, content, style, *settings, steps, lr), content,
                             style, *settings)
        loss = total_loss(network, got.float().clamp(0.0, 1.0), content, style, *settings)
        enough = start - 0.75 * (start - reached)
        problems += require(f"{what}: the total loss goes down", loss <= enough,
                            f"from {start:.4g} (the content image) to {loss:.4g}; {steps} Adam steps of lr={lr} "
                            f"reach {reached:.4g}, and at least {enough:.4g} is expected")
        if loss >= start:
            hints.append("Hint: the total loss did not go down: minimize it (loss.backward(), then "
                         "optimizer.step() on the pixels; zero the gradients every step).")
    unchanged = student.call("transfer_style", GLYPHNET, content, style, content_layer, style_layers,
                             [0.0] * len(style_layers), 1.0, 0.0, 3, lr)
    kept, found = _image_problem("style weights 0 and tv_weight 0", unchanged, tuple(content.shape))
    if kept is not None:
        found = close("style weights 0 and tv_weight 0: the content image comes back unchanged", kept, content,
                      atol=1e-5)
        if found:
            hints.append("Hint: start from a copy of the content image (content.clone().requires_grad_(True)).")
    problems += found
    problems += require("the content image is left unchanged", bool(returned.tensor_args)
                        and torch.equal(returned.tensor_args[0], content),
                        "your function changed the caller's content image (optimize a clone)")
    return _finish(problems, hints, TRANSFER_HINT)
