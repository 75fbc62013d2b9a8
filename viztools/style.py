"""Neural style transfer (Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural Networks",
CVPR 2016); lecture notebook ``08_neural_style``.

An image is optimized so that its features at one layer match the *content* image's, and the Gram matrices of
its features at several layers match the *style* image's. A Gram matrix records which channels fire together,
averaged over positions: it keeps texture and colour statistics and forgets where things are.

Normalization (implementations differ, so weights do not transfer between them):

- ``gram_matrix`` divides by the number of positions ``H*W`` (Gatys's convention): the Gram is the mean outer
  product of the C-dimensional fibers, so it does not depend on image size and content and style images may
  have different sizes.
- Each loss term is a *relative* squared error: ``||G(x) - G(style)||^2 / ||G(style)||^2`` per style layer and
  ``||F(x) - F(content)||^2 / ||F(content)||^2`` for content. A value of 1 means "as far off as a black image
  would be"; the scale of a layer's activations cancels, so equal per-layer weights are a sensible default and
  weights carry over between models and image sizes. Gatys's per-layer loss ``E_l`` (unnormalized Gram,
  factor ``1/(4 N_l^2 M_l^2)``) equals ours times ``||G(style)||^2 / (4 C_l^2)`` with our Gram, so a Gatys
  weight ``w_l`` corresponds to ours times that constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress

import torch

from viztools._validation import check_float
from viztools.hooks import attach
from viztools.models import VizModel

#: Default (content layer, style layers) per registered model, after Gatys et al. (VGG) and the CS231n
#: assignment (SqueezeNet: content fire2, style conv1/fire3/fire4/fire5). Other models: see default_layers.
DEFAULT_LAYERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "glyphnet": ("conv3", ("conv1", "conv2", "conv3", "conv4")),
    "squeezenet1_0": ("fire2", ("conv1", "fire3", "fire4", "fire5")),
    "squeezenet1_1": ("fire2", ("conv1", "fire3", "fire4", "fire5")),
    "alexnet": ("conv4", ("conv1", "conv2", "conv3", "conv4", "conv5")),
    "vgg16": ("conv4_2", ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")),
    "googlenet": ("inception3b", ("conv1", "conv3", "inception3a", "inception4a")),
}

#: Guards the relative losses against an all-zero target (e.g. a black image at a ReLU layer).
_EPS = 1e-12


def gram_matrix(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Gram matrices ``(N, C, C)`` of features ``(N, C, H, W)`` (Gatys et al. 2016, eq. 3).

    Entry ``(i, j)`` is the sum over the ``H*W`` positions of ``F[i, p] * F[j, p]``: the inner products of
    channels, i.e. the sum of the outer products of the C-dimensional fibers ``F[:, p]``. With
    ``normalize=True`` (our convention) it is divided by ``H*W``, giving the *mean* outer product of the fibers,
    which is the same for a texture and a larger crop of it.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"features must be a tensor of shape (N, C, H, W) (one feature map per channel); got {shape}. "
            "Fully connected layers have no positions and no Gram matrix: choose a convolutional layer."
        )
    batch, channels, height, width = features.shape
    fibers = features.reshape(batch, channels, height * width)
    gram = fibers @ fibers.transpose(1, 2)
    return gram / (height * width) if normalize else gram


def relative_squared_error(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||value - target||^2 / ||target||^2`` per batch item, shape ``(N,)``: 0 at the target, 1 at zero."""
    if value.shape[1:] != target.shape[1:]:
        raise ValueError(
            f"Cannot compare features of shape {tuple(value.shape)} with a target of shape {tuple(target.shape)}; "
            "content features are compared position by position, so the image must have the content image's size."
        )
    dims = tuple(range(1, value.dim()))
    squared_error = (value - target).pow(2).sum(dim=dims)
    return squared_error / target.pow(2).sum(dim=dims).clamp_min(_EPS)


def content_loss(features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """Content loss (Gatys et al. 2016, eq. 1), relative: ``||F - P||^2 / ||P||^2`` per image, shape ``(N,)``.

    ``features`` are the layer's activations for the image being optimized, ``target_features`` those of the
    content image (same spatial size: content is matched position by position).
    """
    return relative_squared_error(features, target_features)


def style_layer_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Style loss of one layer (Gatys et al. 2016, eq. 4), relative: ``||G - A||^2 / ||A||^2``, shape ``(N,)``.

    ``features`` ``(N, C, H, W)`` of the image being optimized; ``target_gram`` ``(1 or N, C, C)`` is the
    (normalized) Gram matrix of the style image at the same layer, which may come from an image of another size.
    """
    return relative_squared_error(gram_matrix(features), target_gram)


def style_loss(
    features: Mapping[str, torch.Tensor],
    target_grams: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
) -> dict[str, torch.Tensor]:
    """Weighted style loss of each layer (Gatys et al. 2016, eq. 5 before the sum): ``{layer: w_l * E_l}``.

    The total style loss is the sum of the values; keeping them apart lets a widget plot every layer.
    """
    missing = [layer for layer in weights if layer not in features or layer not in target_grams]
    if missing:
        raise ValueError(f"No features or target Gram matrix for style layer(s) {missing}; pass both for every layer.")
    return {layer: weight * style_layer_loss(features[layer], target_grams[layer]) for layer, weight in weights.items()}


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Total-variation penalty: mean squared difference of neighbouring pixels (down and right), shape ``(N,)``.

    Mahendran & Vedaldi 2015 (used by Johnson et al. and CS231n for style transfer) penalize it to suppress
    high-frequency noise. The mean (not the sum) keeps its weight independent of the image size.
    """
    down = (pixels[:, :, 1:, :] - pixels[:, :, :-1, :]).pow(2).mean(dim=(1, 2, 3))
    right = (pixels[:, :, :, 1:] - pixels[:, :, :, :-1]).pow(2).mean(dim=(1, 2, 3))
    return down + right


# --------------------------------------------------------------------------------------------------------------
# Features: one forward pass that stops after the deepest layer needed
# --------------------------------------------------------------------------------------------------------------


class _EnoughLayersError(Exception):
    """Raised by a forward hook once every requested layer is recorded, to skip the rest of the network."""


def layer_features(model: VizModel, pixels: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` for ``pixels``, from one forward pass that stops once all of them are recorded.

    The later layers and the classifier never run. The outputs stay in the autograd graph (wrap the call in
    ``torch.no_grad()`` for targets). Hooks are attached only for the duration of the call.
    """
    paths = {name: model.layer_path(name) for name in layers}
    pending = set(paths.values())
    recorded: dict[str, torch.Tensor] = {}

    def recorder(path: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if path in pending:
                recorded[path] = output
                pending.discard(path)
                if not pending:
                    raise _EnoughLayersError

        return hook

    with ExitStack() as stack:
        for path in set(paths.values()):
            stack.enter_context(attach(model.network.get_submodule(path), forward=recorder(path)))
        with suppress(_EnoughLayersError):
            model(pixels)
    if pending:
        unused = [name for name, path in paths.items() if path in pending]
        raise ValueError(f"Layer(s) {unused} did not run in the model's forward pass; choose layers from model.layers.")
    return {name: recorded[path] for name, path in paths.items()}


def default_layers(model: VizModel) -> tuple[str, tuple[str, ...]]:
    """The default ``(content_layer, style_layers)`` for ``model``.

    Registered models use :data:`DEFAULT_LAYERS`. For any other model, the style layers are the entries of
    ``model.layers`` whose output has spatial positions (not pools), and the content layer is the middle one.
    """
    if model.name in DEFAULT_LAYERS and all(
        layer in model.layers for layer in (DEFAULT_LAYERS[model.name][0], *DEFAULT_LAYERS[model.name][1])
    ):
        return DEFAULT_LAYERS[model.name]
    size = model.input_size
    with torch.no_grad():
        shapes = {name: tuple(f.shape) for name, f in layer_features(model, torch.zeros(1, 3, size, size),
                                                                    list(model.layers)).items()}
    spatial = [name for name, shape in shapes.items() if len(shape) == 4]
    style_layers = [name for name in spatial if not name.startswith("pool")] or spatial
    if not style_layers:
        raise ValueError(
            f"Model {model.name!r} has no named layer with spatial feature maps; pass content_layer= and "
            "style_layers= with dotted module paths of convolutional layers."
        )
    return style_layers[len(style_layers) // 2], tuple(style_layers)


def _check_weight(value: object, name: str) -> float:
    return check_float(value, name, low=0.0)
