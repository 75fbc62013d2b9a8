"""DeepDream: amplify whatever a layer sees in an image (lecture notebook on Deep Dream).

Mordvintsev, Olah & Tyka (2015), "Inceptionism": choose a layer and set its gradient equal to its activations,
i.e. ascend ``0.5 * sum(a^2)``, so patterns the layer weakly detects grow stronger. Their recipe: random jitter,
steps normalized by the mean absolute gradient, and octaves (process the image from coarse to fine scales,
carrying the dreamed detail up). The forward pass stops at the chosen layer, so any image size works and a
classifier that needs a fixed size (GlyphNet's ``fc1``) is never run. Built on :func:`viztools.optimize.optimize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from viztools._validation import check_float, check_image, check_int, check_model
from viztools.hooks import forward_activations
from viztools.models import VizModel
from viztools.optimize import (
    Jitter,
    LayerDream,
    Optimization,
    OptimizationResult,
    Progress,
    Run,
    finished,
    optimize,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def octave_sizes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Image sizes from the coarsest octave to the original, each ``scale`` times the previous (at least 8 px)."""
    sizes = [(height, width)]
    for _ in range(octaves - 1):
        h, w = sizes[0]
        smaller = (max(8, round(h / scale)), max(8, round(w / scale)))
        if smaller == sizes[0]:
            break
        sizes.insert(0, smaller)
    return sizes


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == size:
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)


def _check_layer_runs(model: VizModel, layer: str, size: tuple[int, int]) -> None:
    try:
        forward_activations(model, torch.zeros(1, 3, *size, device=model.device, requires_grad=True), [layer])
    except RuntimeError as error:
        raise ValueError(
            f"Layer {layer!r} cannot process a {size[0]}x{size[1]} image ({error}). Choose an earlier "
            f"(convolutional) layer, or fewer octaves and an image of the model's input size ({model.input_size} px)."
        ) from error


@dataclass
class DeepDreamResult(OptimizationResult):
    """What :func:`deepdream` returns. ``image`` (and ``last_image``) is the dream at the input's size, after the
    last octave; ``history`` holds every step of every octave; ``octave_sizes`` the ``(height, width)`` of each
    octave run; ``original`` the input image; ``layer`` the dreamed layer."""

    layer: str = ""
    original: torch.Tensor | None = None
    octave_sizes: list[tuple[int, int]] = field(default_factory=list)


def deepdream_optimization(
    model: VizModel,
    image: torch.Tensor,
    *,
    layer: str,
    steps: int = 10,
    lr: float = 0.01,
    octaves: int = 3,
    octave_scale: float = 1.4,
    jitter: int | None = None,
    every: int = 1,
    should_stop: Callable[[Progress], bool | None] | None = None,
    seed: int | None = 0,
) -> Run[DeepDreamResult]:
    """Dream ``image`` at ``layer`` (Mordvintsev et al. 2015), live; the result is the size of the input.

    Each of ``octaves`` scales (each ``octave_scale`` times larger, the last the original size) runs ``steps``
    gradient-ascent steps on ``0.5 * sum(activations^2)``: the image is rolled by up to ``jitter`` pixels
    (default: 32 px at 224 px, scaled to the model's input size), the step is ``lr * g / mean|g|`` in pixel units
    (``lr=0.01`` is 2.5 / 255), then pixels are clamped to [0, 1]. The detail dreamed at one octave is upscaled
    and added to the next octave's image. Progress records carry the octave in ``progress.stage`` and count steps
    within it; ``should_stop(progress)`` sees every step and may return True to stop (the dream so far is the
    result, as on Ctrl-C). ``seed`` seeds the jitter (octave ``i`` uses ``seed + i``).
    """
    model = check_model(model)
    image = check_image(image, "image", pixels=True)
    model.layer_path(layer)
    check_int(steps, "steps", low=0)
    check_float(lr, "lr", low=0.0, low_inclusive=False)
    octaves = check_int(octaves, "octaves", low=1)
    octave_scale = check_float(octave_scale, "octave_scale", low=1.0, low_inclusive=False)
    if jitter is None:
        jitter = round(32 * model.input_size / 224)
    jitter = check_int(jitter, "jitter", low=0)
    if seed is not None:
        check_int(seed, "seed", low=0)

    original = image.detach()
    full_size = tuple(original.shape[-2:])
    sizes = octave_sizes(*full_size, octaves, octave_scale)
    _check_layer_runs(model, layer, sizes[0])

    def octave(index: int, detail: torch.Tensor) -> Optimization:
        size = sizes[index]
        start = (_resize(original, size) + _resize(detail, size)).clamp(0.0, 1.0)
        return optimize(
            model, start, LayerDream(layer), steps=steps, optimizer="sgd", lr=lr, normalize_gradient="mean_abs",
            transforms=[Jitter(min(jitter, min(size) - 1))], every=every,
            should_stop=None if should_stop is None else lambda progress: should_stop(replace(progress, stage=index)),
            seed=None if seed is None else seed + index,
        )

    def detail_of(outcome: OptimizationResult) -> torch.Tensor:
        """What the octave added to its (resized) original."""
        return outcome.last_image - _resize(original, tuple(outcome.last_image.shape[-2:]))

    def next_octave(outcome: OptimizationResult) -> Optimization | None:
        index = sizes.index(tuple(outcome.last_image.shape[-2:])) + 1
        return octave(index, detail_of(outcome)) if index < len(sizes) else None

    def finish(outcomes: list[OptimizationResult]) -> DeepDreamResult:
        dream = (original + _resize(detail_of(outcomes[-1]), full_size)).clamp(0.0, 1.0)
        return DeepDreamResult(
            image=dream, loss=outcomes[-1].loss, best_step=sum(o.steps for o in outcomes), last_image=dream,
            steps=sum(o.steps for o in outcomes), closure_calls=sum(o.closure_calls for o in outcomes),
            stop_reason=outcomes[-1].stop_reason, history=[row for o in outcomes for row in o.history],
            elapsed=sum(o.elapsed for o in outcomes), layer=layer, original=original,
            octave_sizes=[tuple(o.last_image.shape[-2:]) for o in outcomes],
        )

    return Run(octave(0, torch.zeros(1, 3, *sizes[0], dtype=original.dtype, device=original.device)), finish,
               next_stage=next_octave)


deepdream = finished(deepdream_optimization, "deepdream")


def plot_deepdream(result: DeepDreamResult, image: torch.Tensor | None = None, *, ax: Axes | None = None) -> Figure:
    """The original image beside its dream."""
    from viztools.plotting import show_images

    original = result.original if image is None else check_image(image, "image")
    return show_images([original, result.image], ["original", f"dreamed at {result.layer}"], columns=2, ax=ax)
