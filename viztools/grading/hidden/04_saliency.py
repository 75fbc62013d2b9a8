"""Hidden checks of exercise 04 (saliency): other images, classes, corner models and tensors than the visible checks.

Every check draws its inputs from ``rng`` (seeded per grading run) and computes the expected values here, with the
grader's own copy of :mod:`viztools.saliency` (gradients with respect to pixels, ReLU rules by a torch function mode).
When a wrong answer matches a known mistake (signed gradient, sum over channels, one mask of guided backprop
missing, ...) the feedback names it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import torch

import viztools
from viztools.grading.checks import corner_model
from viztools.grading.proxy import Student, close, close_or_hint, model, reference_model, require
from viztools.saliency import deconvnet, guided_backprop, input_gradient, relu_rule, saliency

GLYPHNET = model("glyphnet")
ATOL, RTOL = 1e-4, 1e-3


def _glyph_images(rng: random.Random, n: int) -> tuple[torch.Tensor, list[int]]:
    images, labels = viztools.make_glyphworld(n, seed=rng.randrange(1, 10_000), start=rng.randrange(10_000))
    return images, [int(label) for label in labels]


#: close_or_hint at this exercise's tolerances: the hint names the mistake an answer matches.
compare = functools.partial(close_or_hint, atol=ATOL, rtol=RTOL)


def _probability_gradient(network: viztools.VizModel, image: torch.Tensor, target: int) -> torch.Tensor:
    pixels = image.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(torch.softmax(network(pixels), dim=1)[0, target], pixels)
    return gradient[0]


def saliency_mistakes(network: viztools.VizModel, image: torch.Tensor, target: int) -> list[tuple[torch.Tensor, str]]:
    """The maps that plausible mistakes give, with what to tell the student."""
    gradient = input_gradient(network, image, target)
    return [
        (gradient.amax(dim=0), "take the absolute value of the gradient before the maximum over the channels."),
        (gradient.abs().sum(dim=0), "take the maximum over the three colour channels, not their sum."),
        (gradient.abs().mean(dim=0), "take the maximum over the three colour channels, not their mean."),
        (gradient.sum(dim=0).abs(), "take |gradient| of each channel, then the maximum (not |sum over channels|)."),
        (_probability_gradient(network, image, target).abs().amax(dim=0),
         "differentiate the class score (the logit, model(pixels)[0, target]), not the softmax probability."),
    ]


SALIENCY_HINT = "the map is max over channels of |d score / d pixel|, with the score the logit of class `target`."


def check_saliency_corner(student: Student, rng: random.Random) -> list[str]:
    """saliency_map on a corner model of another size: 1/3 on the corner for class 0, zero for class 1."""
    corner, size = rng.choice([(2, 5), (3, 5), (3, 6), (4, 7)])
    network, spec = corner_model(corner, size), model("corner", corner=corner, size=size)
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    image = torch.rand(1, 3, size, size, generator=generator)
    expected = torch.zeros(size, size)
    expected[:corner, :corner] = 1 / 3
    returned = student.call("saliency_map", spec, image, 0)
    problems = compare(f"class 0 of a {corner}x{corner} corner model on a {size}x{size} image", returned.value,
                       expected, saliency_mistakes(network, image, 0), SALIENCY_HINT)
    problems += require("the input image is left unchanged", bool(returned.tensor_args)
                        and torch.equal(returned.tensor_args[0], image), "your function changed the caller's image")
    got = student.call("saliency_map", spec, image, 1).value
    problems += compare("class 1, whose logit is always 0", got, torch.zeros(size, size),
                        saliency_mistakes(network, image, 1), SALIENCY_HINT)
    return list(dict.fromkeys(problems))  # the same hint once


def check_saliency_glyphnet(student: Student, rng: random.Random) -> list[str]:
    """saliency_map on GlyphNet and unseen GlyphWorld images, for their class and another one."""
    network, (images, labels) = reference_model(), _glyph_images(rng, 2)
    problems = []
    for k, label in enumerate(labels):
        image = images[k : k + 1]
        for target in (label, rng.choice([c for c in range(10) if c != label])):
            got = student.call("saliency_map", GLYPHNET, image, target).value
            expected = saliency(network, image, target)
            problems += compare(f"image {k + 1}, class {network.categories[target]!r}", got, expected,
                                saliency_mistakes(network, image, target), SALIENCY_HINT)
            if problems:
                return problems
    return problems


def _rule_gradients(x: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "plain": torch.where(x > 0, grad, 0.0),
        "guided": torch.where((x > 0) & (grad > 0), grad, 0.0),
        "deconvnet": grad.clamp(min=0),
        "identity": grad,
    }


RELU_MISTAKES = {
    "guided": {
        "plain": "you pass R * [x > 0], the plain ReLU gradient: also keep only positive R (the [R > 0] mask).",
        "deconvnet": "you pass max(R, 0) only: also mask by the forward input, [x > 0] (save x in forward).",
        "identity": "you pass R unchanged: guided backprop passes R * [x > 0] * [R > 0].",
    },
    "deconvnet": {
        "guided": "the deconvnet does not mask by the forward input: pass max(R, 0), whatever x was.",
        "plain": "you pass R * [x > 0], the plain ReLU gradient: the deconvnet passes max(R, 0), whatever x was.",
        "identity": "you pass R unchanged: the deconvnet passes only its positive part, max(R, 0).",
    },
}


def _relu_check(student: Student, rng: random.Random, rule: str) -> list[str]:
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    shapes = [(rng.randrange(5, 12),), (rng.randrange(1, 4), rng.randrange(2, 6), rng.randrange(2, 6), 3)]
    problems: list[str] = []
    for shape in shapes:
        x, grad = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        got = student.call("relu_backward", rule, x, grad).value
        if not isinstance(got, list) or len(got) != 2:
            return [f"relu_backward({rule!r}, ...): expected (output, gradient), got a {type(got).__name__}",
                    "Hint: keep the given relu_backward helper as it is."]
        output, gradient = got
        problems += close(f"forward on a tensor of shape {shape}", output, x.clamp(min=0), atol=1e-6)
        if problems:
            return [*problems, "Hint: forward is the ordinary ReLU, x.clamp(min=0)."]
        variants = _rule_gradients(x, grad)
        mistakes = [(variants[name], text) for name, text in RELU_MISTAKES[rule].items()]
        expected_hint = "R * [x > 0] * [R > 0]" if rule == "guided" else "max(R, 0)"
        problems += compare(f"backward on a tensor of shape {shape}", gradient, variants[rule], mistakes,
                            f"backward returns {expected_hint}, with R = grad_output.")
        if problems:
            return problems
    return problems


def check_guided_relu(student: Student, rng: random.Random) -> list[str]:
    """GuidedReLU on random tensors of other shapes: ReLU forward, R * [x > 0] * [R > 0] backward."""
    return _relu_check(student, rng, "guided")


def check_deconvnet_relu(student: Student, rng: random.Random) -> list[str]:
    """DeconvReLU on random tensors of other shapes: ReLU forward, max(R, 0) backward."""
    return _relu_check(student, rng, "deconvnet")


def _features_only(network: viztools.VizModel, image: torch.Tensor, target: int, rule: str) -> torch.Tensor:
    """The map when only the ReLUs of ``network.features`` follow the rule (the classifier's ReLU forgotten)."""
    pixels = image.clone().requires_grad_(True)
    with torch.enable_grad():
        features = network.network.features
        with relu_rule(rule):
            feature_maps = features(network.normalize(pixels))
        logits = network.network.classifier(torch.flatten(feature_maps, 1))
        (gradient,) = torch.autograd.grad(logits[0, target], pixels)
    return gradient[0]


RULE_HINT = ("attach a forward hook returning relu.apply(inputs[0]) to every nn.ReLU of model.network.modules() "
             "(GuidedReLU for 'guided', DeconvReLU for 'deconvnet'; no hooks for 'plain').")


def check_rule_gradient(student: Student, rng: random.Random) -> list[str]:
    """rule_gradient for the three rules on unseen images and classes; no hook outlives a call."""
    network, (images, labels) = reference_model(), _glyph_images(rng, 2)
    references: dict[str, Callable] = {"guided": guided_backprop, "deconvnet": deconvnet, "plain": input_gradient}
    problems: list[str] = []
    for k, label in enumerate(labels):
        image = images[k : k + 1]
        target = label if k == 0 else rng.choice([c for c in range(10) if c != label])
        plain = input_gradient(network, image, target)
        for rule in ("guided", "deconvnet", "plain"):
            got = student.call("rule_gradient", GLYPHNET, image, target, rule).value
            mistakes = [(plain, f"with rule={rule!r} you got the plain gradient: are the hooks attached, and do they "
                                "return the new output?")] if rule != "plain" else []
            if rule == "plain":
                mistakes.append((guided_backprop(network, image, target), "rule='plain' gave guided backprop: hooks "
                                 "from an earlier call are still on the model; attach them only inside the with block "
                                 "(hooks.enter_context(attach(...))), and none for 'plain'."))
                mistakes.append((deconvnet(network, image, target), "rule='plain' gave the deconvnet: hooks from an "
                                 "earlier call are still on the model; attach them only inside the with block, and "
                                 "none for 'plain'."))
            else:
                mistakes.append((_features_only(network, image, target, rule), "only the ReLUs of "
                                 "model.network.features follow the rule: the classifier's ReLU "
                                 "(model.network.classifier) must too."))
                other = "deconvnet" if rule == "guided" else "guided"
                mistakes.append((references[other](network, image, target), f"rule={rule!r} gave the {other} map: "
                                 "check which autograd Function each rule uses."))
            problems += compare(f"image {k + 1}, class {network.categories[target]!r}, rule {rule!r}", got,
                                references[rule](network, image, target), mistakes, RULE_HINT)
            if problems:
                return problems
    return problems
