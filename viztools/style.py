"""Neural style transfer (Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural Networks",
CVPR 2016); lecture notebook ``08_neural_style``.

An image is optimized so that its features at one layer match the *content* image's, and the Gram matrices of
its features at several layers match the *style* image's. A Gram matrix records which channels fire together,
averaged over positions: it keeps texture and colour statistics and forgets where things are. The optimization
is the shared loop of :mod:`viztools.optimize`: the losses here are objectives (maximized, so they enter
negated) plus its :class:`~viztools.optimize.TotalVariation` regularizer.

Normalization (implementations differ, so weights do not transfer between them):

- :func:`gram_matrix` divides by the number of positions ``H*W``: the Gram is the *mean* outer product of the
  C-dimensional fibers, so it does not depend on image size and the style image may be larger or smaller than
  the content image.
- Each loss is a *relative* squared error, like :class:`~viztools.optimize.FeatureMatch`:
  ``||G(x) - G(style)||^2 / ||G(style)||^2`` per style layer and ``||F(x) - F(content)||^2 / ||F(content)||^2``
  for content. 0 is a perfect match and 1 is as far off as an all-zero feature map. The scale of a layer's
  activations cancels, so equal per-layer weights are a sensible default and weights are comparable across models
  and image sizes. Gatys's per-layer loss ``E_l`` (unnormalized Gram, factor ``1 / (4 N_l^2 M_l^2)``) equals
  ours times ``||G(style)||^2 / (4 C_l^2)`` with our Gram, so a Gatys weight ``w_l`` is ours divided by that.
- ``tv_weight`` multiplies the *mean* squared difference of neighbouring pixel values, so it does not depend
  on the image size either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from viztools._validation import check_choice, check_float, check_image, check_model, make_generator
from viztools.hooks import forward_activations
from viztools.models import VizModel
from viztools.optimize import (
    Activations,
    FeatureMatch,
    Objective,
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

#: Default ``(content layer, style layers)`` of the registered models, after Gatys et al. (VGG: conv4_2 and
#: conv1_1 ... conv5_1) and the CS231n assignment (SqueezeNet: fire2, and conv1, fire3, fire4, fire5).
DEFAULT_LAYERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "glyphnet": ("conv3", ("conv1", "conv2", "conv3", "conv4")),
    "squeezenet1_0": ("fire2", ("conv1", "fire3", "fire4", "fire5")),
    "squeezenet1_1": ("fire2", ("conv1", "fire3", "fire4", "fire5")),
    "alexnet": ("conv4", ("conv1", "conv2", "conv3", "conv4", "conv5")),
    "vgg16": ("conv4_2", ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")),
    "googlenet": ("inception3b", ("conv1", "conv3", "inception3a", "inception4a")),
}

#: Weight of each style layer by default. With content weight 1, ImageNet SqueezeNet keeps the cat recognizable
#: and clearly painted or textured by the course's style images ("starry_strokes", "stained_cells", "hubble") after
#: 50-100 L-BFGS steps.
DEFAULT_STYLE_WEIGHT = 5.0

INITS = ("content", "random")
OPTIMIZERS = ("lbfgs", "adam")
#: Step sizes that work for pixels in [0, 1]: L-BFGS takes full quasi-Newton steps, Adam moves each pixel by
#: about ``lr`` per step.
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}

#: Guards the relative losses against an all-zero target (e.g. a black style image at a ReLU layer).
_EPS = 1e-12


def gram_matrix(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Gram matrices ``(N, C, C)`` of features ``(N, C, H, W)`` (Gatys et al. 2016, eq. 3).

    Entry ``(i, j)`` sums ``F[i, p] * F[j, p]`` over the ``H*W`` positions ``p``: the inner product of channels
    ``i`` and ``j``, or equivalently the sum of the outer products of the C-dimensional fibers ``F[:, p]``. With
    ``normalize=True`` (our convention) it is divided by ``H*W``, giving the *mean* outer product of the fibers,
    which is the same for a texture and a larger piece of it.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"features must be a tensor of shape (N, C, H, W) (one feature map per channel); got {shape}. "
            "Fully connected layers have no positions and no Gram matrix: choose a convolutional layer."
        )
    batch, channels, height, width = features.shape
    scale = 1.0 / (height * width) if normalize else 1.0
    return _Gram.apply(features.reshape(batch, channels, height * width), scale)


class _Gram(torch.autograd.Function):
    """``G = scale * F F^T`` with a one-product backward, ``dL/dF = scale * (dL/dG + dL/dG^T) F``.

    Autograd would differentiate the two uses of ``F`` separately (two ``C x C x HW`` products); the Gram and
    its backward cost about as much as the convolutions below the style layers; this saves a third of that.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, fibers: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(fibers)
        ctx.scale = scale
        return (fibers @ fibers.transpose(1, 2)) * scale

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (fibers,) = ctx.saved_tensors
        symmetric = (grad + grad.transpose(1, 2)) * ctx.scale
        if fibers.stride(1) == 1:  # channels-last features: return the gradient in the same memory layout
            return (fibers.transpose(1, 2) @ symmetric).transpose(1, 2), None
        return symmetric @ fibers, None


def style_layer_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Style loss of one layer (Gatys et al. 2016, eq. 4), relative: ``||G - A||^2 / ||A||^2`` (a scalar).

    ``features`` ``(1, C, H, W)`` are the layer's activations for the image being optimized; ``target_gram``
    ``(1, C, C)`` is the normalized Gram matrix of the style image at that layer (any image size).
    """
    gram = gram_matrix(features)
    if gram.shape[1:] != target_gram.shape[1:]:
        raise ValueError(
            f"The Gram matrix of features {tuple(features.shape)} is {tuple(gram.shape)} but the target Gram is "
            f"{tuple(target_gram.shape)}; compute the target at the same layer of the same model."
        )
    return (gram - target_gram).pow(2).sum() / target_gram.pow(2).sum().clamp_min(_EPS)


def style_loss(
    features: Mapping[str, torch.Tensor],
    target_grams: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
) -> dict[str, torch.Tensor]:
    """Weighted style loss of each layer, ``{layer: w_l * E_l}`` (Gatys et al. 2016, eq. 5 before the sum).

    The total style loss is the sum of the values; keeping them apart lets a widget plot every layer.
    """
    missing = [layer for layer in weights if layer not in features or layer not in target_grams]
    if missing:
        raise ValueError(f"No features or target Gram matrix for style layer(s) {missing}; pass both for each layer.")
    return {layer: weight * style_layer_loss(features[layer], target_grams[layer]) for layer, weight in weights.items()}


class GramMatch(Objective):
    """Match the Gram matrices of several layers to targets: the style term of Gatys et al. 2016.

    Maximizes ``-sum_l w_l * ||G_l(x) - A_l||^2 / ||A_l||^2`` and reports one term per layer, named
    ``"style:<layer>"``, so the loop's progress carries every layer's loss.
    """

    def __init__(self, target_grams: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> None:
        if set(weights) != set(target_grams):
            raise ValueError(
                f"GramMatch needs one weight per target Gram matrix; got weights for {sorted(weights)} and targets "
                f"for {sorted(target_grams)}."
            )
        self.target_grams = {layer: gram.detach() for layer, gram in target_grams.items()}
        self.weights = {layer: check_float(w, f"style weight of {layer!r}", low=0.0) for layer, w in weights.items()}
        super().__init__("style", list(target_grams))

    def terms(self, activations: Activations) -> dict[str, torch.Tensor]:
        losses = style_loss(activations, self.target_grams, self.weights)
        return {f"style:{layer}": -loss for layer, loss in losses.items()}

    def value(self, activations: Activations) -> torch.Tensor:
        return sum(self.terms(activations).values())


class ContentMatch(FeatureMatch):
    """The content term of Gatys et al. 2016 (eq. 1): a relative :class:`FeatureMatch`, named ``"content:<layer>"``."""

    def __init__(self, layer: str, target_features: torch.Tensor) -> None:
        super().__init__(layer, target_features)
        self.name = f"content:{layer}"


def default_layers(model: VizModel) -> tuple[str, tuple[str, ...]]:
    """The default ``(content_layer, style_layers)`` for ``model``.

    Registered models use :data:`DEFAULT_LAYERS`. For other models the style layers are the entries of
    ``model.layers`` whose outputs have spatial positions (pools left out), and the content layer is the middle one.
    """
    if model.name in DEFAULT_LAYERS:
        content_layer, style_layers = DEFAULT_LAYERS[model.name]
        if all(layer in model.layers for layer in (content_layer, *style_layers)):
            return content_layer, style_layers
    probe = torch.zeros(1, 3, model.input_size, model.input_size, device=model.device)
    with torch.no_grad():
        activations = forward_activations(model, probe, list(model.layers))
    spatial = [name for name in model.layers if name in activations and activations[name].dim() == 4]
    style_layers = [name for name in spatial if not name.startswith("pool")] or spatial
    if not style_layers:
        raise ValueError(
            f"Model {model.name!r} has no named layer with spatial feature maps; pass content_layer= and "
            "style_layers= (dotted module paths of convolutional layers)."
        )
    return style_layers[len(style_layers) // 2], tuple(style_layers)


def style_transfer_objective(
    model: VizModel,
    content: torch.Tensor,
    style: torch.Tensor,
    *,
    content_layer: str | None = None,
    style_layers: Sequence[str] | None = None,
    style_weights: Sequence[float] | None = None,
    content_weight: float = 1.0,
) -> Objective:
    """``content_weight * ContentMatch + GramMatch`` with targets computed once from the two images.

    Layers default to :func:`default_layers`; ``style_weights`` (one per style layer, default
    :data:`DEFAULT_STYLE_WEIGHT` each) scale the per-layer relative style losses. Content and style images may
    have different sizes.
    """
    content = check_image(content, "content", pixels=True)
    style = check_image(style, "style", pixels=True)
    default_content, default_style = default_layers(model)
    content_layer = default_content if content_layer is None else content_layer
    if not isinstance(content_layer, str):
        raise TypeError(f"content_layer must be one layer name such as 'conv3'; got {content_layer!r}.")
    style_layers = list(default_style if style_layers is None else _check_layer_list(style_layers))
    weights = _style_weights(style_layers, style_weights)
    content_weight = check_float(content_weight, "content_weight", low=0.0)
    if content_weight == 0 and not any(weights.values()):
        raise ValueError("content_weight and every style weight are 0: nothing to optimize. Make one positive.")
    for layer in (content_layer, *style_layers):
        model.layer_path(layer)  # a helpful ValueError for unknown layers
    with torch.no_grad():
        content_features = _target_activations(model, _network_view(content), [content_layer], "content")
        style_features = _target_activations(model, _network_view(style), style_layers, "style")
    grams = {}
    for layer in style_layers:
        if style_features[layer].dim() != 4:
            raise ValueError(
                f"Style layer {layer!r} has no spatial positions (output shape {tuple(style_features[layer].shape)}),"
                " so it has no Gram matrix. Choose convolutional layers from model.layers."
            )
        grams[layer] = gram_matrix(style_features[layer])
    return content_weight * ContentMatch(content_layer, content_features[content_layer]) + GramMatch(grams, weights)


@dataclass
class StyleTransferResult(OptimizationResult):
    """What :func:`style_transfer` returns: the optimization's result (``image``: the best image; ``history``:
    every step's ``"content:<layer>"``, ``"style:<layer>"`` and ``"total variation"`` losses) plus the two
    images it started from."""

    content: torch.Tensor | None = None
    style: torch.Tensor | None = None


def style_transfer_optimization(
    model: VizModel,
    content: torch.Tensor,
    style: torch.Tensor,
    *,
    content_layer: str | None = None,
    style_layers: Sequence[str] | None = None,
    style_weights: Sequence[float] | None = None,
    content_weight: float = 1.0,
    tv_weight: float = 1.0,
    optimizer: str = "lbfgs",
    steps: int = 100,
    lr: float | None = None,
    init: str = "content",
    seed: int | None = 0,
    optimizer_options: Mapping[str, object] | None = None,
    every: int = 1,
    time_budget: float | None = None,
    should_stop: Callable[[Progress], bool | None] | None = None,
) -> Run[StyleTransferResult]:
    """Neural style transfer (Gatys et al. 2016; lecture ``08_neural_style``): paint ``content`` in ``style``, live.

    Minimizes ``content_weight * content + sum_l w_l * style_l + tv_weight * TV`` (relative losses, see the
    module docstring) over the pixels with the shared loop of :mod:`viztools.optimize`.

    Args:
        model: a :class:`VizModel`; only the layers up to the deepest one used run at each step.
        content, style: pixel images ``(1, 3, H, W)`` in [0, 1]; their sizes may differ. The result has the
            content image's size.
        content_layer, style_layers: ``model.layers`` names (default: :func:`default_layers`).
        style_weights: one non-negative weight per style layer (default :data:`DEFAULT_STYLE_WEIGHT` each).
        content_weight, tv_weight: weights of the content loss and of the total-variation penalty (mean squared
            difference of neighbouring pixels).
        optimizer: ``"lbfgs"`` (Gatys et al.) or ``"adam"`` (CS231n). Pixels are clamped to [0, 1] after every
            step, and the network sees clamped pixels inside the step too, so L-BFGS never models pixel values
            it cannot keep. One L-BFGS step is one iteration without line search, i.e. one forward/backward
            pass (a strong-Wolfe line search stalls against the clamp). ``optimizer_options`` go to the torch
            optimizer (e.g. ``{"max_iter": 20}``: 20 passes per step, all counted in ``closure_calls``).
        steps, lr: number of optimizer steps; step size (default :data:`DEFAULT_LR`).
        init: start from the ``"content"`` image or from ``"random"`` uniform noise drawn with ``seed``.
        every, time_budget, should_stop: passed to :func:`viztools.optimize.optimize`.

    Returns:
        A :class:`~viztools.optimize.Run`: iterate it for :class:`~viztools.optimize.Progress` records
        (``progress.losses`` holds ``"content:<layer>"``, one ``"style:<layer>"`` per style layer and ``"total
        variation"``), or call ``.result()`` for the :class:`StyleTransferResult`.
    """
    model = check_model(model)
    content = check_image(content, "content", pixels=True)
    style = check_image(style, "style", pixels=True)
    tv_weight = check_float(tv_weight, "tv_weight", low=0.0)
    optimizer = check_choice(optimizer, "optimizer", OPTIMIZERS)
    init = check_choice(init, "init", INITS)
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    objective = style_transfer_objective(
        model, content, style, content_layer=content_layer, style_layers=style_layers,
        style_weights=style_weights, content_weight=content_weight,
    )
    start = content.detach().clone() if init == "content" else torch.rand(
        content.shape, generator=make_generator(seed), device="cpu").to(content.device)
    # TotalVariation sums over pixel pairs; dividing by the number of values makes tv_weight act on the mean.
    regularizers = [TotalVariation(tv_weight / content.numel())] if tv_weight > 0 else []
    optimization = optimize(
        model, start, objective, steps=steps, optimizer=optimizer, lr=lr, regularizers=regularizers,
        transforms=[_network_view],
        optimizer_options=optimizer_options, every=every, time_budget=time_budget, should_stop=should_stop, seed=seed,
    )

    def finish(outcomes: list[OptimizationResult]) -> StyleTransferResult:
        return StyleTransferResult.extending(outcomes[-1], content=content.detach(), style=style.detach())

    return Run(optimization, finish)


style_transfer = finished(style_transfer_optimization, "style_transfer")


def plot_style_transfer(
    result: StyleTransferResult, image: torch.Tensor | None = None, *, ax: Axes | None = None
) -> Figure:
    """Content, style and result, with every loss term per step on a log scale below (lecture ``08_neural_style``).

    With ``ax`` only the loss curves are drawn there (a widget's live plot); ``image`` replaces the result's
    image in the picture row (e.g. an intermediate frame).
    """
    from viztools.plotting import new_figure, show_images

    if not isinstance(result, StyleTransferResult):
        raise TypeError(f"plot_style_transfer takes the result of style_transfer(...); got {type(result).__name__}.")
    if ax is not None:
        plot_loss_curves(result.history, ax)
        return ax.figure
    figure = new_figure((10.5, 8.2))  # the images above their loss curves: projector-wide, 10-11 pt text
    pictures, losses = figure.subplots(2, 1, height_ratios=[1, 1.1])
    shown = result.image if image is None else check_image(image, "image")
    show_images([result.content, result.style, shown], ["content", "style", f"result (step {result.best_step})"],
                columns=3, ax=pictures, panel_size=3.0)
    plot_loss_curves(result.history, losses)
    return figure


def plot_loss_curves(history: Sequence[Mapping[str, float]], ax: Axes) -> None:
    """Every loss term of an optimization's ``history`` per step, on a log scale (the total drawn thicker)."""
    from viztools.plotting import FONT_SIZE

    names = [name for name in (history[0] if history else {}) if name != "total"]
    steps = range(1, len(history) + 1)
    for name in ["total", *names]:
        values = [record[name] if record[name] > 0 else float("nan") for record in history]  # log scale
        ax.plot(steps, values, label=name, linewidth=2.5 if name == "total" else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("losses (weighted)")
    if names:
        ax.legend(fontsize=FONT_SIZE - 1, ncols=2)


def _network_view(pixels: torch.Tensor) -> torch.Tensor:
    """The pixels the network sees: clamped to [0, 1] (no gradient pushes a pixel further out of range), in
    channels-last memory layout, which every layer keeps and which makes CPU convolutions and pooling faster."""
    return pixels.clamp(0.0, 1.0).contiguous(memory_format=torch.channels_last)


def _check_layer_list(layers: object) -> list[str]:
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(
            f"style_layers must be a non-empty list of layer names, e.g. ['conv1', 'conv2']; got {layers!r}."
        )
    duplicates = sorted({layer for layer in layers if list(layers).count(layer) > 1})
    if duplicates:
        raise ValueError(f"style_layers lists {duplicates} more than once; give each layer once (weights add up).")
    return list(layers)


def _style_weights(style_layers: Sequence[str], style_weights: Sequence[float] | None) -> dict[str, float]:
    if style_weights is None:
        return dict.fromkeys(style_layers, DEFAULT_STYLE_WEIGHT)
    if isinstance(style_weights, (str, Mapping)) or not isinstance(style_weights, Sequence):
        raise TypeError(f"style_weights must be a list of numbers, one per style layer; got {style_weights!r}.")
    if len(style_weights) != len(style_layers):
        raise ValueError(
            f"style_weights has {len(style_weights)} value(s) but there are {len(style_layers)} style layers "
            f"({', '.join(style_layers)}); give one weight per layer."
        )
    return {
        layer: check_float(weight, f"style weight of {layer!r}", low=0.0)
        for layer, weight in zip(style_layers, style_weights, strict=True)
    }


def _target_activations(model: VizModel, pixels: torch.Tensor, layers: Sequence[str], what: str) -> Activations:
    try:
        return forward_activations(model, pixels, layers)
    except RuntimeError as error:
        height, width = pixels.shape[-2:]
        raise ValueError(
            f"The {what} image ({height}x{width} px) could not pass through {model.name!r} up to layer(s) "
            f"{list(layers)}: {error}. Use a larger image (e.g. viztools.load_image(..., size=model.input_size)); "
            f"layers after a flatten need exactly the input size ({model.input_size} px): choose convolutional ones."
        ) from error
