"""Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks"); lecture
notebook ``04_saliency``.

The attribution of pixel ``i`` is ``(x_i - x'_i) * integral_0^1 dS_c/dx_i (x' + a (x - x')) da``: the gradient
averaged along the straight path from a *baseline* image ``x'`` (black by default) to the image ``x``, times the
pixel's change. By the fundamental theorem of calculus the attributions add up to ``S_c(x) - S_c(x')``
(*completeness*); the integral is approximated by a weighted sum over ``steps`` points of the path.

Quadrature rules (the names Captum uses): ``"gausslegendre"`` (the default), ``"riemann_left"``,
``"riemann_right"``, ``"riemann_middle"`` (weights ``1/steps``) and ``"riemann_trapezoid"`` (``steps`` points from
``a = 0`` to ``1``, weights ``1/(steps-1)`` halved at the two ends, summing to 1). Captum 0.9's
``riemann_trapezoid`` uses weights ``1/steps`` (halved at the ends) on the same points: its attributions are ours
times ``(steps-1)/steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from viztools._validation import check_choice, check_image, check_int
from viztools.data import gaussian_blur
from viztools.models import VizModel
from viztools.saliency import _prepare, plot_saliency, score_gradients

METHODS: tuple[str, ...] = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
BASELINES: tuple[str, ...] = ("black", "grey", "blur")


@dataclass(frozen=True)
class IntegratedGradientsResult:
    """What :func:`integrated_gradients` returns.

    Attributes:
        attribution: ``(3, H, W)`` attribution of every pixel and colour channel (signed).
        baseline: the ``(1, 3, H, W)`` baseline image ``x'``.
        score, baseline_score: the class score (logit) at the image and at the baseline.
        delta: ``attribution.sum() - (score - baseline_score)``, the quadrature's error (0 for the exact integral).
        steps, method, target: as used.
        image: the ``(1, 3, H, W)`` pixels explained.
    """

    attribution: torch.Tensor
    baseline: torch.Tensor = field(repr=False)
    score: float
    baseline_score: float
    delta: float
    steps: int
    method: str
    target: int
    image: torch.Tensor = field(repr=False, compare=False)

    @property
    def map(self) -> torch.Tensor:
        """``(H, W)`` attribution per pixel: the sum over colour channels (keeps completeness; signed)."""
        return self.attribution.sum(dim=0)


def quadrature(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)`` of the rule ``method`` with ``steps`` points on [0, 1]; the weights sum to 1."""
    method = check_choice(method, "method", METHODS)
    steps = check_int(steps, "steps", low=2 if method == "riemann_trapezoid" else 1)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    # the points as Captum computes them (float32 linspace), so that both evaluate the network at the same images
    first = {"riemann_trapezoid": 0.0, "riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    last = {"riemann_trapezoid": steps - 1, "riemann_left": steps - 1, "riemann_middle": steps - 0.5,
            "riemann_right": steps}[method]
    span = steps - 1 if method == "riemann_trapezoid" else steps
    alphas = torch.linspace(first / span, last / span, steps, device="cpu").double()  # moved per batch
    weights = torch.full((steps,), 1.0 / span, dtype=torch.float64, device="cpu")
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
    return alphas, weights


def make_baseline(image: torch.Tensor, baseline: str | torch.Tensor) -> torch.Tensor:
    """The baseline ``x'`` for ``image``: ``"black"`` (all 0), ``"grey"`` (all 0.5), ``"blur"`` (the image blurred
    with a Gaussian of ``max(H, W) / 20`` px), or a pixel tensor of the image's shape."""
    if isinstance(baseline, torch.Tensor):
        pixels = check_image(baseline, "baseline", pixels=True).to(image)
        if pixels.shape != image.shape:
            raise ValueError(f"baseline must have the image's shape {tuple(image.shape)}; got {tuple(pixels.shape)}.")
        return pixels.detach()
    baseline = check_choice(baseline, "baseline", BASELINES)
    if baseline == "blur":
        return gaussian_blur(image.detach(), max(image.shape[-2:]) / 20)
    return torch.full_like(image, 0.0 if baseline == "black" else 0.5).detach()


def integrated_gradients(model: VizModel, image: torch.Tensor, target: int | str | None = None, *,
                         baseline: str | torch.Tensor = "black", steps: int = 50,
                         method: str = "gausslegendre", batch_size: int = 10) -> IntegratedGradientsResult:
    """Integrated Gradients (Sundararajan et al. 2017) of class ``target`` (index or name; None: the top class).

    Args:
        baseline: the image that means "no evidence": ``"black"``, ``"grey"``, ``"blur"`` or a pixel tensor
            (see :func:`make_baseline`).
        steps: points on the path (the paper: 20 to 300 with Riemann sums; check ``result.delta``).
        method: the quadrature rule, one of :data:`METHODS`; Gauss-Legendre (Captum's default too) needs the
            fewest points for a given accuracy (on SqueezeNet, 20 points: completeness within 4 %).
        batch_size: path points per forward/backward pass.
    """
    pixels = _prepare(model, image).detach()
    method = check_choice(method, "method", METHODS)
    alphas, weights = quadrature(method, steps)
    batch_size = check_int(batch_size, "batch_size", low=1)
    start = make_baseline(pixels, baseline)
    target_index = model.resolve_target(target, pixels)
    difference = pixels - start
    total = torch.zeros_like(pixels[0], dtype=torch.float64)
    for first in range(0, len(alphas), batch_size):
        alpha = alphas[first:first + batch_size].to(pixels)
        points = start + alpha[:, None, None, None] * difference
        gradients, _ = score_gradients(model, points, target_index)
        total += (weights[first:first + batch_size].to(gradients.device)[:, None, None, None]
                  * gradients.double()).sum(dim=0)
    attribution = (difference[0].double() * total).to(pixels.dtype)
    with torch.no_grad():
        scores = model(torch.cat([pixels, start]))[:, target_index]
    score, baseline_score = float(scores[0]), float(scores[1])
    delta = float(attribution.double().sum()) - (score - baseline_score)
    return IntegratedGradientsResult(attribution, start, score, baseline_score, delta, len(alphas), method,
                                     target_index, pixels)


def plot_integrated_gradients(result: IntegratedGradientsResult, image: torch.Tensor | None = None, *,
                              ax: Axes | None = None, title: str | None = None, percentile: float = 99.0) -> Figure:
    """The per-pixel attribution ``result.map`` (red: raises the score, blue: lowers it, white: 0), saturating at
    its ``percentile``; pass ``image`` to draw it beside the map."""
    if not isinstance(result, IntegratedGradientsResult):
        raise TypeError(
            f"plot_integrated_gradients takes the result of integrated_gradients(...); got {type(result).__name__}."
        )
    title = f"Integrated Gradients ({result.steps} steps)" if title is None else title
    return plot_saliency({title: result.map}, image, ax=ax, percentile=percentile)
