"""Feature inversion: what an image looks like to a layer (lecture notebook on visualization).

Mahendran & Vedaldi (2015), "Understanding Deep Image Representations by Inverting Them": find pixels whose
features at one layer match the features of a given image, starting from noise, with a total-variation prior
that prefers natural, piecewise-smooth images. Early layers keep almost everything; deep layers keep only what
matters for the class. Built on :func:`viztools.optimize.optimize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from viztools._validation import check_choice, check_float, check_image, check_int
from viztools.hooks import get_activations
from viztools.models import VizModel
from viztools.optimize import FeatureMatch, L2Penalty, Optimization, Progress, TotalVariation, optimize

STARTS = ("random", "mean")


def starting_image(model: VizModel, like: torch.Tensor, start: str | torch.Tensor, seed: int | None) -> torch.Tensor:
    """``"random"``: the mean colour plus Gaussian noise (0.1 std, seeded); ``"mean"``: the mean colour; or a tensor."""
    like = check_image(like, "image")
    if isinstance(start, torch.Tensor):
        start = check_image(start, "start")
        if start.shape != like.shape:
            raise ValueError(f"start must have the image's shape {tuple(like.shape)}; got {tuple(start.shape)}.")
        return start.detach().clone()
    check_choice(start, "start", STARTS)
    mean = torch.tensor(model.mean, dtype=like.dtype).view(1, 3, 1, 1).expand_as(like)
    if start == "mean":
        return mean.clone()
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(check_int(seed, "seed", low=0))
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype)
    return (mean + 0.1 * noise).clamp(0.0, 1.0)


def invert_features_optimization(
    model: VizModel,
    image: torch.Tensor,
    layer: str,
    *,
    steps: int = 300,
    lr: float = 0.02,
    tv_weight: float = 1.0,
    l2: float = 0.0,
    start: str | torch.Tensor = "random",
    every: int = 1,
    callback: Callable[[Progress], bool | None] | None = None,
    time_budget: float | None = None,
    seed: int | None = 0,
) -> Optimization:
    """The running optimization behind :func:`invert_features` (iterate it for live progress)."""
    image = check_image(image, "image")
    model.layer_path(layer)
    tv_weight = check_float(tv_weight, "tv_weight", low=0.0)
    l2 = check_float(l2, "l2", low=0.0)
    target = get_activations(model, image, [layer])[layer]
    pixel_count = image.shape[-2] * image.shape[-1]
    return optimize(
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
        should_stop=None if callback is None else lambda progress: bool(callback(progress)),
        time_budget=time_budget,
        seed=seed,
    )


def invert_features(
    model: VizModel,
    image: torch.Tensor,
    layer: str,
    *,
    steps: int = 300,
    lr: float = 0.02,
    tv_weight: float = 1.0,
    l2: float = 0.0,
    start: str | torch.Tensor = "random",
    callback: Callable[[Progress], bool | None] | None = None,
    time_budget: float | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    """Reconstruct ``image`` from its features at ``layer`` (Mahendran & Vedaldi 2015).

    Minimizes ``||F(x) - F(image)||^2 / ||F(image)||^2 + tv_weight * TV(x) / (H*W) + l2 * ||x_n||^2 / (H*W)`` with
    Adam from ``start`` (``"random"``: seeded noise around the mean colour; ``"mean"``; or a tensor), where
    ``TV`` sums squared differences of neighbouring pixels (values in [0, 1]) and ``x_n`` is the normalized image.
    Dividing by the pixel count makes the weights independent of the image size. ``callback(progress)`` sees
    every step and may return True to stop. Returns the best reconstruction as ``(1, 3, H, W)`` pixels.
    """
    return invert_features_optimization(
        model, image, layer, steps=steps, lr=lr, tv_weight=tv_weight, l2=l2, start=start, callback=callback,
        time_budget=time_budget, seed=seed,
    ).result().image


def reconstruction_error(reconstruction: torch.Tensor, image: torch.Tensor) -> float:
    """Root mean squared pixel difference between a reconstruction and the original (values in [0, 1])."""
    reconstruction, image = check_image(reconstruction, "reconstruction"), check_image(image, "image")
    if reconstruction.shape != image.shape:
        raise ValueError(f"Shapes differ: {tuple(reconstruction.shape)} vs {tuple(image.shape)}.")
    return float((reconstruction - image).pow(2).mean().sqrt())


def plot_inversions(image: torch.Tensor, reconstructions: dict[str, torch.Tensor], *, columns: int = 5):
    """The original image followed by its reconstruction from each layer, titled with the RMS pixel error."""
    import matplotlib.pyplot as plt

    from viztools.data import to_numpy_image

    columns = check_int(columns, "columns", low=1)
    panels: Sequence[tuple[str, torch.Tensor]] = [("original", image), *reconstructions.items()]
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (title, pixels) in zip(axes.flat, panels, strict=False):
        axis.imshow(to_numpy_image(pixels))
        if title != "original":
            title = f"from {title}\nRMS error {reconstruction_error(pixels, image):.3f}"
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure
