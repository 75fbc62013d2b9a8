"""Class visualization: the image a network finds most typical of a class (lecture notebook on visualization).

Gradient ascent on the class score minus an L2 penalty, ``S_c(I) - lambda * ||I||^2`` (Simonyan, Vedaldi &
Zisserman 2014), made legible with jitter and periodic Gaussian blur (Yosinski et al. 2015), as in the CS231n
assignment. Built on :func:`viztools.optimize.optimize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from viztools._validation import check_float, check_image, check_int, check_model
from viztools.models import VizModel
from viztools.optimize import (
    ClassScore,
    Jitter,
    L2Penalty,
    OptimizationResult,
    Progress,
    Run,
    finished,
    optimize,
)
from viztools.optimize import (
    blur_every as periodic_blur,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: CS231n takes its steps at 224 x 224 with the gradient scaled to unit L2 norm over all 3 * 224 * 224 values.
REFERENCE_SIZE = 224


def mean_image(model: VizModel, size: int | None = None) -> torch.Tensor:
    """The image that is zero in the model's normalized units: every pixel has the data set's mean colour."""
    size = model.input_size if size is None else check_int(size, "size", low=1)
    return torch.tensor(model.mean, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def pixel_step_size(model: VizModel, lr: float) -> float:
    """CS231n's learning rate (normalized units, unit-L2 gradient at 224 px) as a per-pixel RMS step in [0, 1] units.

    At 224 px a unit-L2 gradient step of ``lr`` moves each of the ``3 * 224 * 224`` values by ``lr / 388`` on
    average (root mean square); one normalized unit is ``std`` pixel units. Taking that RMS step at any size
    (``normalize_gradient="rms"``) keeps the per-pixel change independent of the image size.
    """
    lr = check_float(lr, "lr", low=0.0, low_inclusive=False)
    mean_std = sum(model.std) / len(model.std)
    return lr * mean_std / math.sqrt(3 * REFERENCE_SIZE * REFERENCE_SIZE)


@dataclass
class ClassVisualizationResult(OptimizationResult):
    """What :func:`class_visualization` returns: the optimization's result plus the class it visualizes.

    Attributes:
        target: the class index; ``class_name`` its name; ``probability`` the model's probability for it on
            ``image`` (the best image).
    """

    target: int = 0
    class_name: str = ""
    probability: float = 0.0


def class_visualization_optimization(
    model: VizModel,
    image: torch.Tensor | None = None,
    target: int | str | None = None,
    *,
    steps: int = 100,
    lr: float = 25.0,
    l2: float = 1e-3,
    blur_every: int = 10,
    blur_sigma: float = 0.5,
    jitter: int | None = None,
    every: int = 1,
    should_stop: Callable[[Progress], bool | None] | None = None,
    time_budget: float | None = None,
    seed: int | None = 0,
) -> Run[ClassVisualizationResult]:
    """An image that maximizes the score of class ``target`` (Simonyan et al. 2014; Yosinski et al. 2015), live.

    Gradient ascent on ``score - l2 * ||I||^2`` from ``image`` (``None``: the mean-colour image, zero in
    normalized units), with the CS231n recipe: each step rolls the image by a random offset of up to ``jitter``
    pixels (default 16 px at 224 px, scaled to the image size), steps by ``lr`` along the gradient scaled to unit
    norm, clamps to [0, 1] and, every ``blur_every`` steps (0: never), blurs with a Gaussian of ``blur_sigma``
    pixels.

    ``lr`` and ``l2`` are in CS231n's units (normalized image, unit-L2 gradient at 224 px; ``||I||`` of the
    normalized image); :func:`pixel_step_size` converts ``lr`` to a per-pixel step, so the defaults work at any
    image size (on GlyphNet's 64 px icons ``lr=10`` gives smoother, more glyph-like images; both reach p > 0.99).
    ``should_stop(progress)`` sees every step and may return True to stop. The result's ``image`` is the best
    image (highest regularized score), ``(1, 3, H, W)`` pixels.
    """
    model = check_model(model)
    if target is None:
        raise ValueError(
            "class_visualization needs a target class: an index or a name from model.categories, e.g. "
            "class_visualization(model, target='flamingo') (image=None starts from the mean colour)."
        )
    target_index = model.class_index(target)
    start = mean_image(model) if image is None else check_image(image, "image", pixels=True, model=model)
    check_float(l2, "l2", low=0.0)
    blur_every = check_int(blur_every, "blur_every", low=0)
    size = max(start.shape[-2:])
    jitter = round(16 * size / REFERENCE_SIZE) if jitter is None else check_int(jitter, "jitter", low=0)
    after_step = [periodic_blur(blur_every, blur_sigma)] if blur_every > 0 else []
    optimization = optimize(
        model,
        start,
        ClassScore(target_index),
        steps=steps,
        optimizer="sgd",
        lr=pixel_step_size(model, lr),
        normalize_gradient="rms",
        transforms=[Jitter(jitter)],
        regularizers=[L2Penalty(l2, center=model.mean, scale=model.std)],
        after_step=after_step,
        every=every,
        should_stop=should_stop,
        time_budget=time_budget,
        seed=seed,
    )

    def finish(outcomes: list[OptimizationResult]) -> ClassVisualizationResult:
        outcome = outcomes[-1]
        probability = float(model.predict(outcome.image)[0, target_index])
        return ClassVisualizationResult.extending(
            outcome, target=target_index, class_name=model.categories[target_index], probability=probability
        )

    return Run(optimization, finish)


class_visualization = finished(class_visualization_optimization, "class_visualization")


def plot_class_visualization(
    result: ClassVisualizationResult | Sequence[ClassVisualizationResult],
    image: None = None,
    *,
    ax: Axes | None = None,
    columns: int = 5,
) -> Figure:
    """Class visualizations titled with the class and the model's probability for it (one, or a grid)."""
    from viztools.plotting import show_images

    results = [result] if isinstance(result, ClassVisualizationResult) else list(result)
    return show_images(
        [r.image for r in results],
        [f"{r.class_name}\np = {r.probability:.2f}" for r in results],
        columns=check_int(columns, "columns", low=1),
        ax=ax,
    )
