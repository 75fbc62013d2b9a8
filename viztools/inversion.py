"""Feature inversion: what an image looks like to a layer (lecture notebook on visualization).

Mahendran & Vedaldi (2015), "Understanding Deep Image Representations by Inverting Them": find pixels whose
features at one layer match the features of a given image, starting from noise, with a total-variation prior
that prefers natural, piecewise-smooth images. Early layers keep almost everything; deep layers keep only what
matters for the class. Built on :func:`viztools.optimize.optimize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from viztools._validation import check_choice, check_float, check_image, check_int, check_model, make_generator
from viztools.hooks import get_activations
from viztools.models import VizModel
from viztools.optimize import (
    FeatureMatch,
    L2Penalty,
    OptimizationResult,
    Progress,
    Run,
    TotalVariation,
    finished,
    optimize,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STARTS = ("random", "mean")


@dataclass
class InversionResult(OptimizationResult):
    """What :func:`invert_features` returns: the optimization's result plus what was inverted.

    Attributes:
        layer: the inverted layer; ``original``: the image whose features were matched; ``error``: the RMS pixel
            difference between ``image`` (the best reconstruction) and ``original``.
    """

    layer: str = ""
    original: torch.Tensor | None = None
    error: float = 0.0


def starting_image(model: VizModel, like: torch.Tensor, start: str | torch.Tensor, seed: int | None) -> torch.Tensor:
    """``"random"``: the mean colour plus Gaussian noise (0.1 std, seeded); ``"mean"``: the mean colour; or a tensor."""
    like = check_image(like, "image")
    if isinstance(start, torch.Tensor):
        start = check_image(start, "start", pixels=True)
        if start.shape != like.shape:
            raise ValueError(f"start must have the image's shape {tuple(like.shape)}; got {tuple(start.shape)}.")
        return start.detach().clone()
    check_choice(start, "start", STARTS)
    mean = torch.tensor(model.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1).expand_as(like)
    if start == "mean":
        return mean.clone()
    noise = torch.randn(like.shape, generator=make_generator(seed), dtype=like.dtype, device="cpu").to(like.device)
    return (mean + 0.1 * noise).clamp(0.0, 1.0)


def invert_features_optimization(
    model: VizModel,
    image: torch.Tensor,
    *,
    layer: str,
    steps: int = 300,
    lr: float = 0.02,
    tv_weight: float = 1.0,
    l2: float = 0.0,
    start: str | torch.Tensor = "random",
    every: int = 1,
    should_stop: Callable[[Progress], bool | None] | None = None,
    time_budget: float | None = None,
    seed: int | None = 0,
) -> Run[InversionResult]:
    """Reconstruct ``image`` from its features at ``layer`` (Mahendran & Vedaldi 2015), live.

    Minimizes ``||F(x) - F(image)||^2 / ||F(image)||^2 + tv_weight * TV(x) / (H*W) + l2 * ||x_n||^2 / (H*W)`` with
    Adam from ``start`` (``"random"``: seeded noise around the mean colour; ``"mean"``; or a tensor), where
    ``TV`` sums squared differences of neighbouring pixels (values in [0, 1]) and ``x_n`` is the normalized image.
    Dividing by the pixel count makes the weights independent of the image size. ``should_stop(progress)`` sees
    every step and may return True to stop. The result's ``image`` is the best reconstruction.
    """
    model = check_model(model)
    image = check_image(image, "image", pixels=True)
    model.layer_path(layer)
    tv_weight = check_float(tv_weight, "tv_weight", low=0.0)
    l2 = check_float(l2, "l2", low=0.0)
    target = get_activations(model, image, [layer])[layer]
    pixel_count = image.shape[-2] * image.shape[-1]
    optimization = optimize(
        model,
        starting_image(model, image, start, seed),
        FeatureMatch(layer, target),
        steps=steps,
        optimizer="adam",
        lr=lr,
        regularizers=[
            *([TotalVariation(tv_weight / pixel_count)] if tv_weight > 0 else []),
            *([L2Penalty(l2 / pixel_count, center=model.mean, scale=model.std)] if l2 > 0 else []),
        ],
        every=every,
        should_stop=should_stop,
        time_budget=time_budget,
        seed=seed,
    )

    def finish(outcomes: list[OptimizationResult]) -> InversionResult:
        outcome = outcomes[-1]
        return InversionResult.extending(
            outcome, layer=layer, original=image.detach(), error=reconstruction_error(outcome.image, image)
        )

    return Run(optimization, finish)


invert_features = finished(invert_features_optimization, "invert_features")


def reconstruction_error(reconstruction: torch.Tensor, image: torch.Tensor) -> float:
    """Root mean squared pixel difference between a reconstruction and the original (values in [0, 1]), on the
    reconstruction's device."""
    reconstruction, image = check_image(reconstruction, "reconstruction"), check_image(image, "image")
    if reconstruction.shape != image.shape:
        raise ValueError(f"Shapes differ: {tuple(reconstruction.shape)} vs {tuple(image.shape)}.")
    return float((reconstruction - image.to(reconstruction.device)).pow(2).mean().sqrt())


def plot_inversion(
    result: InversionResult | Sequence[InversionResult],
    image: torch.Tensor | None = None,
    *,
    ax: Axes | None = None,
    columns: int = 5,
) -> Figure:
    """The original image followed by its reconstruction(s), each titled with its layer and RMS pixel error."""
    from viztools.plotting import show_images

    results = [result] if isinstance(result, InversionResult) else list(result)
    if not results:
        raise ValueError("plot_inversion needs at least one InversionResult.")
    original = results[0].original if image is None else check_image(image, "image")
    return show_images(
        [original, *(r.image for r in results)],
        ["original", *(f"from {r.layer}\nRMS error {r.error:.3f}" for r in results)],
        columns=check_int(columns, "columns", low=1),
        ax=ax,
    )
