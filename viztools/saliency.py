"""Gradient-based attribution: saliency maps, guided backprop, deconvnet, and gradients of single neurons.

All four are one backward pass from a chosen score to the input pixels; they differ only in the score (a class
logit or one unit of a layer) and in what a ReLU lets through on the way back (the ``rule``):

* ``"plain"``: the true gradient, as in saliency maps (Simonyan, Vedaldi & Zisserman 2014, "Deep Inside
  Convolutional Networks"): gradient through ReLUs whose forward input was positive.
* ``"guided"``: guided backpropagation (Springenberg et al. 2015, "Striving for Simplicity"): only positive
  gradients, and only through ReLUs whose forward input was positive.
* ``"deconvnet"``: the deconvnet of Zeiler & Fergus (2014, "Visualizing and Understanding Convolutional
  Networks"): only positive gradients, whatever the forward input was (max-pool switches are kept, as in the
  paper).

Lecture notebook: ``04_saliency``. Gradients are taken with respect to pixels in [0, 1]; the model's
normalization is part of the differentiated function.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch.overrides import TorchFunctionMode

from viztools._validation import check_choice, check_float, check_image, check_int, check_model
from viztools.data import to_numpy_image
from viztools.hooks import forward_activations
from viztools.models import VizModel
from viztools.plotting import axes_grid

RULES: tuple[str, ...] = ("plain", "guided", "deconvnet")

_OUT_OF_PLACE_RELUS = (F.relu, torch.relu, torch.Tensor.relu, torch.ops.aten.relu.default)
_IN_PLACE_RELUS = (torch.relu_, torch.Tensor.relu_, torch.ops.aten.relu_.default)


# --------------------------------------------------------------------------------------------------------------
# ReLU backward rules
# --------------------------------------------------------------------------------------------------------------


class _RuleReLU(torch.autograd.Function):
    """ReLU forward; backward passes only positive gradients, masked by the forward activation if asked."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, inputs: torch.Tensor, use_forward_mask: bool) -> torch.Tensor:
        output = torch.relu(inputs)
        ctx.use_forward_mask = use_forward_mask
        if use_forward_mask:
            ctx.save_for_backward(output > 0)
        return output

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad_output.clamp(min=0)
        if ctx.use_forward_mask:
            (active,) = ctx.saved_tensors
            grad = grad * active
        return grad, None


class _ReLURuleMode(TorchFunctionMode):
    """Replaces every ReLU call made while active by :class:`_RuleReLU`."""

    def __init__(self, use_forward_mask: bool) -> None:
        super().__init__()
        self.use_forward_mask = use_forward_mask

    def __torch_function__(self, func: object, types: tuple, args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        in_place = func in _IN_PLACE_RELUS
        if func is F.relu:
            in_place = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        if in_place or func in _OUT_OF_PLACE_RELUS:
            inputs = args[0]
            output = _RuleReLU.apply(inputs, self.use_forward_mask)
            # An in-place ReLU must still mutate its input: copy_ keeps that, and routes the gradient through
            # the rule (autograd raises, as for a plain in-place ReLU, if the old value was needed elsewhere).
            return inputs.copy_(output) if in_place else output
        return func(*args, **kwargs)


@contextmanager
def relu_rule(rule: str = "guided") -> Iterator[None]:
    """Inside the ``with`` block, every ReLU's backward follows ``rule`` ("plain", "guided" or "deconvnet").

    Implemented as a ``torch.overrides.TorchFunctionMode`` rather than hooks on ``nn.ReLU`` modules (Captum's
    way): the mode sees every ReLU call made during the forward pass wherever it happens, ``nn.ReLU`` modules,
    ``F.relu``, ``torch.relu``, ``x.relu()``, their in-place forms, and ``torch.ops.aten.relu``, in any
    branch of the network, and swaps in a ReLU with the rule's backward. The model itself is never touched;
    the mode is popped on exit, also on error. Only the forward pass must run inside the block; the modified
    backward is recorded in the autograd graph. Other activations (ReLU6, LeakyReLU, GELU) keep their true
    gradient. Modules compiled with TorchScript bypass the mode.
    """
    rule = check_choice(rule, "rule", RULES)
    if rule == "plain":
        yield
        return
    with _ReLURuleMode(use_forward_mask=rule == "guided"):
        yield


# --------------------------------------------------------------------------------------------------------------
# Class scores
# --------------------------------------------------------------------------------------------------------------


def _prepare(model: VizModel, image: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of the single image that requires grad, in the network's dtype."""
    model = check_model(model)
    if any(module.training for module in model.network.modules()):
        raise ValueError(
            "model.network (or one of its modules) is in training mode, so dropout would make the map random and "
            "batch norm would change the model. Call model.network.eval() first."
        )
    pixels = check_image(image, "image", pixels=True, model=model)
    parameter = next(model.network.parameters(), None)
    dtype = parameter.dtype if parameter is not None else pixels.dtype
    return pixels.detach().to(dtype).clone().requires_grad_(True)


def input_gradient(model: VizModel, image: torch.Tensor, target: int | str | None = None, *,
                   rule: str = "plain") -> torch.Tensor:
    """Gradient ``(3, H, W)`` of the class score (the logit, before softmax) with respect to the pixels.

    ``target`` is a class index or name (None: the top prediction). ``rule`` chooses what ReLUs pass back:
    "plain" is the true gradient (Simonyan et al. 2014), "guided" is guided backprop (Springenberg et al.
    2015), "deconvnet" is Zeiler & Fergus (2014). See :func:`relu_rule`.
    """
    rule = check_choice(rule, "rule", RULES)
    pixels = _prepare(model, image)
    target_index = model.resolve_target(target, pixels.detach())
    with torch.enable_grad():
        with relu_rule(rule):
            score = model(pixels)[0, target_index]
        (gradient,) = torch.autograd.grad(score, pixels)
    return gradient[0]


def score_gradients(model: VizModel, batch: torch.Tensor, target: int, *,
                    rule: str = "plain") -> tuple[torch.Tensor, torch.Tensor]:
    """``(gradients (N, 3, H, W), scores (N,))`` of class ``target``'s score for every image of ``batch``.

    One forward and one backward pass for the whole batch (the model is in eval mode, so the images do not
    interact). The images need not be valid pixels: SmoothGrad's noisy copies and Integrated Gradients' path
    points go through here. ``rule`` as in :func:`input_gradient`.
    """
    rule = check_choice(rule, "rule", RULES)
    parameter = next(model.network.parameters(), None)
    dtype = parameter.dtype if parameter is not None else batch.dtype
    pixels = batch.detach().to(dtype).clone().requires_grad_(True)
    with torch.enable_grad():
        with relu_rule(rule):
            scores = model(pixels)[:, target]
        (gradients,) = torch.autograd.grad(scores.sum(), pixels)
    return gradients, scores.detach()


def saliency(model: VizModel, image: torch.Tensor, target: int | str | None = None) -> torch.Tensor:
    """Saliency map ``(H, W)`` of Simonyan, Vedaldi & Zisserman (2014): max over colour channels of the absolute
    gradient of the class score (the unnormalized logit) with respect to the input pixels.

    The raw signed gradient is :func:`input_gradient`.
    """
    return input_gradient(model, image, target).abs().amax(dim=0)


def guided_backprop(model: VizModel, image: torch.Tensor, target: int | str | None = None) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015) of the class score: ``(3, H, W)``.

    At every ReLU only positive gradients pass, and only where the forward activation was positive.
    """
    return input_gradient(model, image, target, rule="guided")


def deconvnet(model: VizModel, image: torch.Tensor, target: int | str | None = None) -> torch.Tensor:
    """Deconvnet reconstruction (Zeiler & Fergus 2014) of the class score: ``(3, H, W)``.

    At every ReLU only positive gradients pass, regardless of the forward activation (max-pool switches kept).
    """
    return input_gradient(model, image, target, rule="deconvnet")


# --------------------------------------------------------------------------------------------------------------
# Single neurons
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeuronGradient:
    """Result of :func:`neuron_gradient`.

    Attributes:
        gradient: ``(3, H, W)`` gradient (or guided / deconvnet map) of the unit with respect to the pixels.
        layer: the layer name as given.
        channel: the channel (or feature, for fully connected layers).
        position: ``(row, col)`` of the unit in the channel's map, or None for a fully connected layer.
        activation: the unit's value for this image.
        rule: "plain", "guided" or "deconvnet".
    """

    gradient: torch.Tensor
    layer: str
    channel: int
    position: tuple[int, int] | None
    activation: float
    rule: str


def neuron_gradient(
    model: VizModel,
    image: torch.Tensor,
    *,
    layer: str,
    channel: int,
    position: tuple[int, int] | None = None,
    rule: str = "plain",
) -> NeuronGradient:
    """Backpropagate from one unit of ``layer`` to the image (Zeiler & Fergus 2014; Springenberg et al. 2015).

    Runs forward to ``layer``, keeps only the chosen unit (its gradient is 1, all others 0) and backpropagates
    to the pixels with the ReLU ``rule`` ("plain", "guided" or "deconvnet"). For a convolutional layer the
    unit is ``position = (row, col)`` of ``channel``; None picks the unit with the largest activation in that
    channel. Fully connected layers take no position.
    """
    rule = check_choice(rule, "rule", RULES)
    pixels = _prepare(model, image)
    with torch.enable_grad(), relu_rule(rule):
        output = forward_activations(model, pixels, [layer])[layer]
    if not isinstance(output, torch.Tensor) or output.dim() not in (2, 4):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"Layer {layer!r} outputs {shape}; neuron_gradient needs (1, C, H, W) or (1, C). "
            "Choose a convolutional, pooling or fully connected layer from model.layers."
        )
    channels = output.shape[1]
    channel = check_int(channel, f"channel of layer {layer!r}", low=0, high=channels - 1)
    if output.dim() == 2:
        if position is not None:
            raise ValueError(f"Layer {layer!r} is fully connected (output {tuple(output.shape)}); pass position=None.")
        unit = output[0, channel]
    else:
        height, width = output.shape[2:]
        if position is None:
            flat_index = int(output[0, channel].detach().argmax())
            position = (flat_index // width, flat_index % width)
        elif not isinstance(position, (tuple, list)) or len(position) != 2:
            raise TypeError(f"position must be a (row, col) pair or None; got {position!r}.")
        row = check_int(position[0], f"row of layer {layer!r}", low=0, high=height - 1)
        col = check_int(position[1], f"column of layer {layer!r}", low=0, high=width - 1)
        position = (row, col)
        unit = output[0, channel, row, col]
    (gradient,) = torch.autograd.grad(unit, pixels)
    return NeuronGradient(gradient[0], layer, channel, position, float(unit.detach()), rule)


# --------------------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------------------


def _saturation(values: torch.Tensor, percentile: float) -> float:
    """The ``percentile`` of ``values`` (falling back to the maximum, then 1, when it is zero)."""
    flat = values.flatten()
    for candidate in (torch.quantile(flat, percentile / 100), flat.max()):
        if float(candidate) > 0:
            return float(candidate)
    return 1.0


def gradient_image(gradient: torch.Tensor, *, percentile: float = 99.0) -> np.ndarray:
    """A signed ``(3, H, W)`` gradient as an ``(H, W, 3)`` RGB array in [0, 1] for ``imshow``: zero is mid grey.

    Values are divided by the ``percentile`` of their absolute values (so a few extreme pixels do not wash out
    the rest), clipped to [-1, 1] and mapped to [0, 1].
    """
    if not isinstance(gradient, torch.Tensor) or gradient.dim() != 3 or gradient.shape[0] != 3:
        shape = tuple(gradient.shape) if isinstance(gradient, torch.Tensor) else type(gradient).__name__
        raise ValueError(f"gradient must be a (3, H, W) tensor such as input_gradient(...) returns; got {shape}.")
    percentile = check_float(percentile, "percentile", low=0, high=100, low_inclusive=False)
    values = gradient.detach().float().cpu()
    scale = _saturation(values.abs(), percentile)
    return to_numpy_image(0.5 + 0.5 * values / scale)


def plot_saliency(
    maps: torch.Tensor | Mapping[str, torch.Tensor],
    image: torch.Tensor | None = None,
    *,
    ax: Axes | None = None,
    cmap: str = "inferno",
    percentile: float = 99.0,
    panel_size: float = 3.0,
) -> Figure:
    """One or more attribution maps in a row, after the image when given; returns the Figure.

    ``maps`` is a map or a dict ``{title: map}``. ``(H, W)`` maps such as :func:`saliency` are drawn as heat
    maps with ``cmap`` (signed ones blue-white-red), saturating at their ``percentile``; ``(3, H, W)`` maps
    such as :func:`guided_backprop` as RGB images via :func:`gradient_image` (grey is zero). With ``ax`` the
    panels take that Axes' place.
    """
    percentile = check_float(percentile, "percentile", low=0, high=100, low_inclusive=False)
    named = {"saliency": maps} if isinstance(maps, torch.Tensor) else dict(maps)
    if not named:
        raise ValueError("maps is empty; pass a map tensor or a dict {title: map}.")
    for title, attribution in named.items():
        if not isinstance(attribution, torch.Tensor) or attribution.dim() not in (2, 3):
            shape = tuple(attribution.shape) if isinstance(attribution, torch.Tensor) else type(attribution).__name__
            raise ValueError(f"map {title!r} must be an (H, W) or (3, H, W) tensor; got {shape}.")
    panels = [] if image is None else [("image", to_numpy_image(check_image(image, "image", pixels=True)), {})]
    for title, attribution in named.items():
        if attribution.dim() == 3:
            panels.append((str(title), gradient_image(attribution, percentile=percentile), {}))
            continue
        values = attribution.detach().float().cpu()
        limit = _saturation(values.abs(), percentile)
        signed = bool((values < 0).any())
        options = {"cmap": "RdBu_r" if signed else cmap, "vmin": -limit if signed else 0.0, "vmax": limit}
        panels.append((str(title), values.numpy(), options))
    container, axes = axes_grid(len(panels), len(panels), ax=ax, panel_size=panel_size)
    for panel, (title, array, options) in zip(axes, panels, strict=True):
        panel.imshow(array, **options)
        panel.set_title(title)
        panel.set_axis_off()
    return container.get_figure(root=True)
