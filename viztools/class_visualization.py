"""Class visualization: the image a network finds most typical of a class (lecture 05).

Gradient ascent on the class score minus an L2 penalty, ``S_c(I) - lambda * ||I||^2`` (Simonyan, Vedaldi &
Zisserman 2014), made legible with jitter, periodic Gaussian blur and clipping to [0, 1] (Yosinski et al. 2015), as
in the CS231n assignment: ``parametrization="pixels"``. Or, after Olah, Mordvintsev & Schubert (2017, "Feature
Visualization", Distill) and Lucid, ascent on a Fourier-basis image in decorrelated colour with transformation
robustness (random pad, jitter, scale and rotation each step): ``parametrization="fourier"``.
:func:`transform_robustness` measures the difference. Built on :func:`viztools.optimize.optimize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from viztools._validation import check_float, check_image, check_int, check_model, make_generator
from viztools.models import VizModel
from viztools.optimize import (
    PARAMETRIZATIONS,
    ClassScore,
    ImageParametrization,
    Jitter,
    L2Penalty,
    OptimizationResult,
    Progress,
    Run,
    finished,
    image_parametrization,
    optimize,
    robust_transforms,
)
from viztools.optimize import (
    blur_every as periodic_blur,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: CS231n takes its steps at 224 x 224 with the gradient scaled to unit L2 norm over all 3 * 224 * 224 values.
REFERENCE_SIZE = 224
#: The first standard deviation (pixel units) of the noise :func:`start_image` tries when the flat image fails.
START_NOISE = 0.01


def mean_image(model: VizModel, size: int | None = None) -> torch.Tensor:
    """The image that is zero in the model's normalized units: every pixel has the data set's mean colour."""
    size = model.input_size if size is None else check_int(size, "size", low=1)
    mean = torch.tensor(model.mean, dtype=torch.float32, device=model.device)
    return mean.view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def pixel_step_size(model: VizModel, lr: float) -> float:
    """CS231n's learning rate (normalized units, unit-L2 gradient at 224 px) as a per-pixel RMS step in [0, 1] units.

    At 224 px a unit-L2 gradient step of ``lr`` moves each of the ``3 * 224 * 224`` values by ``lr / 388`` on
    average (root mean square); one normalized unit is ``std`` pixel units. Taking that RMS step at any size
    (``normalize_gradient="rms"``) keeps the per-pixel change independent of the image size.
    """
    lr = check_float(lr, "lr", low=0.0, low_inclusive=False)
    mean_std = sum(model.std) / len(model.std)
    return lr * mean_std / math.sqrt(3 * REFERENCE_SIZE * REFERENCE_SIZE)


def start_image(
    model: VizModel,
    target: int | str,
    size: int | None = None,
    *,
    parametrization: str | ImageParametrization = "pixels",
    seed: int | None = 0,
) -> torch.Tensor:
    """Class visualization's default start: the mean image, plus faint seeded noise only where that is needed.

    Simonyan et al. start from the zero image (our mean image). SqueezeNet computes a class score as the average
    of a ReLU'd class map: on a flat image the map of many classes (about 100 of 1000) is negative everywhere, so
    the score is exactly 0 and so is its gradient, and the ascent cannot start. In that case Gaussian noise of
    standard deviation :data:`START_NOISE` is added to the parameters of ``parametrization`` (white noise on the
    pixels; for ``"fourier"`` smooth, 1 / f noise, as Lucid's random start), doubled until the score of ``target``
    has a gradient.
    """
    model = check_model(model)
    target_index = model.class_index(target)
    flat = mean_image(model, size)
    start, noise_level = flat, START_NOISE
    generator = make_generator(seed)
    while True:
        pixels = start.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model(pixels)[0, target_index], pixels)
        if bool(gradient.abs().max() > 0) or noise_level > 0.5:
            return start
        built = image_parametrization(parametrization).build(flat)
        with torch.no_grad():
            for parameter in built.parameters:
                noise = torch.randn(parameter.shape, generator=generator, device="cpu").to(parameter.device)
                parameter.add_(noise_level * noise)
            start = built.image().detach().clamp(0, 1)
        noise_level *= 2


@dataclass
class ClassVisualizationResult(OptimizationResult):
    """What :func:`class_visualization` returns: the optimization's result plus the class it visualizes.

    Attributes:
        target: the class index; ``class_name`` its name; ``probability`` the model's probability for it on
            ``image`` (the best image).
        parametrization: ``"pixels"``, ``"fourier"`` or the repr of the :class:`ImageParametrization` used.
    """

    target: int = 0
    class_name: str = ""
    probability: float = 0.0
    parametrization: str = "pixels"


def class_visualization_optimization(
    model: VizModel,
    image: torch.Tensor | None = None,
    target: int | str | None = None,
    *,
    parametrization: str | ImageParametrization = "pixels",
    robust: bool | None = None,
    steps: int = 100,
    lr: float | None = None,
    l2: float | None = None,
    blur_every: int | None = None,
    blur_sigma: float = 0.5,
    jitter: int | None = None,
    size: int | None = None,
    every: int = 1,
    should_stop: Callable[[Progress], bool | None] | None = None,
    time_budget: float | None = None,
    seed: int | None = 0,
) -> Run[ClassVisualizationResult]:
    """An image that maximizes the score of class ``target`` (Simonyan et al. 2014; Olah et al. 2017), live.

    Gradient ascent on ``score - l2 * ||I||^2`` from ``image`` (``None``: :func:`start_image`, the mean-colour
    image, zero in normalized units, with faint noise where the flat image gives no gradient, at ``size`` pixels,
    default the model's input size).

    ``parametrization="pixels"`` (the default) is the classic recipe (Simonyan et al. 2014; Yosinski et al. 2015;
    CS231n): each step rolls the image by a random offset of up to ``jitter`` pixels (default 16 px at 224 px,
    scaled to the image size), steps by ``lr`` (default 25) along the gradient scaled to unit norm (SGD), clamps
    to [0, 1] and, every ``blur_every`` steps (default 10; 0: never), blurs with a Gaussian of ``blur_sigma``
    pixels; ``l2`` defaults to 1e-3. ``lr`` and ``l2`` are in CS231n's units (normalized image, unit-L2 gradient at
    224 px; ``||I||`` of the normalized image); :func:`pixel_step_size` converts ``lr`` to a per-pixel step, so
    they work at any image size.

    ``parametrization="fourier"`` (or any :class:`~viztools.optimize.ImageParametrization`) optimizes a
    Fourier-basis image scaled by 1 / frequency in decorrelated colour (Olah et al. 2017, Lucid) with Adam at
    ``lr`` (default 0.05), ``l2`` and ``blur_every`` defaulting to 0.

    ``robust`` (default: True for Fourier, False for pixels) replaces the jitter by Lucid's transformation
    robustness, :func:`~viztools.optimize.robust_transforms`: pad, jitter, random scale and rotation each step.

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
    parametrization = image_parametrization(parametrization)
    pixels = not (parametrization.fourier or parametrization.decorrelate)
    if image is None:
        size = model.input_size if size is None else check_int(size, "size", low=1)
        model.check_input_size(size, size)
        start = start_image(model, target_index, size, parametrization=parametrization, seed=seed)
    else:
        start = check_image(image, "image", pixels=True, model=model)
    l2 = check_float((1e-3 if pixels else 0.0) if l2 is None else l2, "l2", low=0.0)
    blur_every = check_int((10 if pixels else 0) if blur_every is None else blur_every, "blur_every", low=0)
    lr = check_float((25.0 if pixels else 0.05) if lr is None else lr, "lr", low=0.0, low_inclusive=False)
    robust = (not pixels) if robust is None else bool(robust)
    side = max(start.shape[-2:])
    if robust:
        transforms = robust_transforms(side)
    else:
        jitter = round(16 * side / REFERENCE_SIZE) if jitter is None else check_int(jitter, "jitter", low=0)
        transforms = [Jitter(jitter)]
    after_step = [periodic_blur(blur_every, blur_sigma)] if blur_every > 0 else []
    regularizers = [L2Penalty(l2, center=model.mean, scale=model.std)] if l2 > 0 or pixels else []
    step_settings = (
        {"optimizer": "sgd", "lr": pixel_step_size(model, lr), "normalize_gradient": "rms"}
        if pixels else {"optimizer": "adam", "lr": lr}
    )
    name = next((key for key, value in PARAMETRIZATIONS.items() if value == parametrization), repr(parametrization))
    optimization = optimize(
        model,
        start,
        ClassScore(target_index),
        parametrization=parametrization,
        transforms=transforms,
        regularizers=regularizers,
        after_step=after_step,
        steps=steps,
        every=every,
        should_stop=should_stop,
        time_budget=time_budget,
        seed=seed,
        **step_settings,
    )

    def finish(outcomes: list[OptimizationResult]) -> ClassVisualizationResult:
        outcome = outcomes[-1]
        probability = float(model.predict(outcome.image)[0, target_index])
        return ClassVisualizationResult.extending(
            outcome, target=target_index, class_name=model.categories[target_index], probability=probability,
            parametrization=name,
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


def transform_robustness(
    model: VizModel,
    image: torch.Tensor,
    target: int | str,
    *,
    draws: int = 20,
    max_shift: float = 0.25,
    scales: tuple[float, float] = (0.6, 1.4),
    max_angle: float = 45.0,
    seed: int | None = 0,
) -> float:
    """The fraction of ``draws`` random views of ``image`` in which ``target`` is still the top-1 class.

    Each view rolls the image by up to ``max_shift`` of its side along each axis, scales it by a factor drawn
    uniformly from ``scales`` and rotates it by up to ``max_angle`` degrees (about the centre, borders repeated).
    A visualization that only works in one alignment (high-frequency patterns, like an adversarial example)
    loses its class under such changes; one that shows the class's features at a readable scale keeps it
    (Olah et al. 2017 make the ascent itself robust to such transformations, see :func:`robust_transforms`).
    """
    import torch.nn.functional as F

    model = check_model(model)
    image = check_image(image, "image", pixels=True, model=model)
    target_index = model.class_index(target)
    draws = check_int(draws, "draws", low=1)
    check_float(max_shift, "max_shift", low=0.0, high=1.0)
    low, high = (check_float(s, "scale", low=0.0, low_inclusive=False) for s in scales)
    check_float(max_angle, "max_angle", low=0.0)
    generator = make_generator(seed)
    height, width = image.shape[-2:]
    views = []
    for _ in range(draws):
        scale, angle, dy, dx = (torch.rand(4, generator=generator, device="cpu") * 2 - 1).tolist()  # in [-1, 1)
        factor = low + (high - low) * (scale + 1) / 2
        radians = math.radians(max_angle * angle)
        cos, sin = math.cos(radians) / factor, math.sin(radians) / factor
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=image.dtype, device=image.device)
        grid = F.affine_grid(theta, [1, *image.shape[1:]], align_corners=False)
        view = F.grid_sample(image, grid.to(image.device), mode="bilinear", padding_mode="border",
                             align_corners=False)
        views.append(torch.roll(view, (round(dy * max_shift * height), round(dx * max_shift * width)), (-2, -1)))
    with torch.no_grad():
        top = model(torch.cat(views)).argmax(dim=1)
    return int((top == target_index).sum()) / draws
