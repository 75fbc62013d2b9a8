"""Grad-CAM: where in the image a layer's evidence for a class lies (Selvaraju et al. 2017, "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization"); lecture notebook ``04_saliency``.

At a convolutional layer with feature maps ``A_k`` (``k`` = channel), each channel gets the weight
``alpha_k = mean over positions of dS_c / dA_k`` (the gradient of the class score, global-average-pooled), and
the map is ``ReLU(sum_k alpha_k A_k)`` at the layer's resolution, upsampled bilinearly to the image. The ReLU
keeps the positions that raise the score. Captum's ``LayerGradCam`` followed by
``LayerAttribution.interpolate(..., "bilinear")`` computes the same map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from viztools._validation import check_float, check_image
from viztools.data import to_numpy_image
from viztools.hooks import capture_activations, get_activations
from viztools.models import VizModel
from viztools.plotting import figure_and_axes
from viztools.saliency import _prepare


@dataclass(frozen=True)
class GradCamResult:
    """What :func:`grad_cam` returns.

    Attributes:
        attribution: ``(H, W)`` map at the image's size, non-negative (bilinear upsampling of ``layer_map``).
        layer_map: ``(h, w)`` map at the layer's resolution, ``ReLU(sum_k weights[k] * A_k)``.
        weights: ``(C,)`` channel weights ``alpha_k``: the class score's gradient averaged over positions.
        layer: the layer name as given (or the default chosen).
        target: the class index explained.
        score: the class score (logit) for the image.
        image: the ``(1, 3, H, W)`` pixels explained (what :func:`plot_grad_cam` draws under the map).
    """

    attribution: torch.Tensor
    layer_map: torch.Tensor
    weights: torch.Tensor
    layer: str
    target: int
    score: float
    image: torch.Tensor = field(repr=False, compare=False)


def default_layer(model: VizModel) -> str:
    """The layer Grad-CAM uses by default: the last named layer with a spatial map (more than 1 x 1), not a
    pooling layer and not a map with one channel per class (SqueezeNet's ``conv10``): ``"fire9"`` on SqueezeNet,
    ``"conv4"`` on GlyphNet, the last convolutional block as in Selvaraju et al."""
    parameter = next(model.network.parameters(), None)
    probe = torch.zeros(1, 3, model.input_size, model.input_size,
                        device=None if parameter is None else parameter.device)
    outputs = get_activations(model, probe, list(model.layers))
    spatial = [name for name, out in outputs.items() if out.dim() == 4 and min(out.shape[-2:]) > 1]
    preferred = [name for name in spatial if not name.startswith("pool") and outputs[name].shape[1] != len(
        model.categories)]
    if not (preferred or spatial):
        raise ValueError(
            f"Model {model.name!r} has no named layer with a spatial feature map; pass layer= (a dotted module "
            "path of a convolutional layer from model.network.named_modules())."
        )
    return (preferred or spatial)[-1]


def grad_cam(model: VizModel, image: torch.Tensor, target: int | str | None = None, *,
             layer: str | None = None) -> GradCamResult:
    """Grad-CAM of Selvaraju et al. (2017) for class ``target`` (index or name; None: the top prediction).

    ``layer`` is a ``model.layers`` name or a dotted module path with a ``(1, C, h, w)`` output (default
    :func:`default_layer`: the last convolutional block). One forward and one backward pass; the activation
    is recorded with a hook (removed afterwards) and the model is left unchanged.
    """
    pixels = _prepare(model, image)
    layer = default_layer(model) if layer is None else layer
    module_path = model.layer_path(layer)  # a helpful ValueError for an unknown layer
    target_index = model.resolve_target(target, pixels.detach())
    with torch.enable_grad(), capture_activations(model, [module_path], detach=False) as recorded:
        score = model(pixels)[0, target_index]
    activation = recorded[module_path]
    if activation.dim() != 4:
        raise ValueError(
            f"Layer {layer!r} outputs {tuple(activation.shape)}, without positions; Grad-CAM needs a "
            "convolutional or pooling layer with a (1, C, h, w) output, e.g. "
            f"layer={default_layer(model)!r}."
        )
    (gradient,) = torch.autograd.grad(score, activation)
    weights = gradient[0].mean(dim=(1, 2))
    layer_map = torch.relu((weights[:, None, None] * activation[0]).sum(dim=0)).detach()
    upsampled = F.interpolate(layer_map[None, None], size=tuple(pixels.shape[-2:]), mode="bilinear",
                              align_corners=False)[0, 0]
    return GradCamResult(upsampled, layer_map, weights.detach(), layer, target_index, float(score.detach()),
                         pixels.detach())


def plot_grad_cam(result: GradCamResult, image: torch.Tensor | None = None, *, ax: Axes | None = None,
                  alpha: float = 0.5, cmap: str = "jet", title: str | None = None) -> Figure:
    """The Grad-CAM map over the image (default: ``result.image``), as in Selvaraju et al.'s figures.

    The colours span 0 to the map's maximum (an all-zero map shows no colour); ``alpha`` is the map's opacity.
    Draws on ``ax`` and returns its figure, or makes a new Figure outside pyplot.
    """
    if not isinstance(result, GradCamResult):
        raise TypeError(f"plot_grad_cam takes the result of grad_cam(...); got {type(result).__name__}.")
    alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
    pixels = check_image(result.image if image is None else image, "image")
    if tuple(pixels.shape[-2:]) != tuple(result.attribution.shape):
        raise ValueError(
            f"image is {tuple(pixels.shape[-2:])} px but the map is {tuple(result.attribution.shape)}; pass the "
            "image the result was computed on."
        )
    figure, ax = figure_and_axes(ax, figsize=(4.0, 4.0))
    heat = result.attribution.float().cpu().numpy()
    ax.imshow(to_numpy_image(pixels))
    ax.imshow(heat, cmap=cmap, vmin=0.0, vmax=float(heat.max()) or 1.0, alpha=alpha)
    ax.set_title(f"Grad-CAM at {result.layer}" if title is None else title)
    ax.set_axis_off()
    return figure
