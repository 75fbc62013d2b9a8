"""DeepDream: amplify whatever a layer sees in an image (lecture notebook on Deep Dream).

Mordvintsev, Olah & Tyka (2015), "Inceptionism": choose a layer and set its gradient equal to its activations,
i.e. ascend ``0.5 * sum(a^2)``, so patterns the layer weakly detects grow stronger. Their recipe: random jitter,
steps normalized by the mean absolute gradient, and octaves (process the image from coarse to fine scales,
carrying the dreamed detail up). The forward pass stops at the chosen layer, so any image size works and a
classifier that needs a fixed size (GlyphNet's ``fc1``) is never run. Built on :func:`viztools.optimize.optimize`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from viztools._validation import check_float, check_image, check_int
from viztools.hooks import forward_activations
from viztools.models import VizModel
from viztools.optimize import Jitter, LayerDream, Progress, optimize


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
        forward_activations(model, torch.zeros(1, 3, *size, requires_grad=True), [layer])
    except RuntimeError as error:
        raise ValueError(
            f"Layer {layer!r} cannot process a {size[0]}x{size[1]} image ({error}). Choose an earlier "
            f"(convolutional) layer, or fewer octaves and an image of the model's input size ({model.input_size} px)."
        ) from error


def deepdream(
    model: VizModel,
    image: torch.Tensor,
    layer: str,
    *,
    steps: int = 10,
    lr: float = 0.01,
    octaves: int = 3,
    octave_scale: float = 1.4,
    jitter: int | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    """Dream ``image`` at ``layer`` (Mordvintsev et al. 2015); returns pixels of the input's size.

    Each of ``octaves`` scales (each ``octave_scale`` times larger, the last the original size) runs ``steps``
    gradient-ascent steps on ``0.5 * sum(activations^2)``: the image is rolled by up to ``jitter`` pixels
    (default: 32 px at 224 px, scaled to the model's input size), the step is ``lr * g / mean|g|`` in pixel units
    (``lr=0.01`` is 2.5 / 255), then pixels are clamped to [0, 1]. The detail dreamed at one octave is upscaled
    and added to the next octave's image. ``callback(progress)`` sees every step (``progress.step`` counts within
    the octave) and may return True to stop; a KeyboardInterrupt also returns the image dreamed so far.
    """
    image = check_image(image, "image")
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
    sizes = octave_sizes(*original.shape[-2:], octaves, octave_scale)
    _check_layer_runs(model, layer, sizes[0])
    detail = torch.zeros(1, 3, *sizes[0], dtype=original.dtype, device=original.device)
    for index, size in enumerate(sizes):
        base = _resize(original, size)
        start = (base + _resize(detail, size)).clamp(0.0, 1.0)
        result = optimize(
            model,
            start,
            LayerDream(layer),
            steps=steps,
            optimizer="sgd",
            lr=lr,
            normalize_gradient="mean_abs",
            transforms=[Jitter(min(jitter, min(size) - 1))],
            should_stop=None if callback is None else lambda progress: bool(callback(progress)),
            seed=None if seed is None else seed + index,
        ).result()
        detail = result.last_image - base
        if result.stop_reason != "steps":
            break
    return (original + _resize(detail, tuple(original.shape[-2:]))).clamp(0.0, 1.0)


def plot_deepdream(image: torch.Tensor, dreamed: torch.Tensor, *, layer: str = ""):
    """The original image beside its dream."""
    import matplotlib.pyplot as plt

    from viztools.data import to_numpy_image

    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    for axis, pixels, title in zip(axes, (image, dreamed), ("original", f"dreamed at {layer}" if layer else "dreamed"),
                                   strict=True):
        axis.imshow(to_numpy_image(pixels))
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    return figure
