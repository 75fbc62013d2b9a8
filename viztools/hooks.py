"""Hooks that never outlive their use, activation recording, and receptive fields.

Every hook in viztools is registered through :func:`attach`, a context manager that removes it on exit, also
when the body raises (as Captum does with try/finally); hooks left behind slow every later call (lucent #45).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from viztools._validation import check_image, check_int
from viztools.models import VizModel

Hook = Callable[..., object]


@contextmanager
def attach(
    module: nn.Module,
    *,
    forward: Hook | None = None,
    forward_pre: Hook | None = None,
    backward: Hook | None = None,
) -> Iterator[nn.Module]:
    """Register hooks on ``module`` for the duration of a ``with`` block.

    ``forward(module, inputs, output)``, ``forward_pre(module, inputs)`` and ``backward(module, grad_input,
    grad_output)`` (a full backward hook) follow torch's signatures; each may return a replacement value.
    Forward hooks act only on forward passes of the thread that attached them: a widget's background computation
    never records, or stops, a forward pass that another thread runs on the same model at the same time.
    """
    handles = []
    try:
        if forward_pre is not None:
            handles.append(module.register_forward_pre_hook(_this_thread_only(forward_pre)))
        if forward is not None:
            handles.append(module.register_forward_hook(_this_thread_only(forward)))
        if backward is not None:
            handles.append(module.register_full_backward_hook(backward))
        yield module
    finally:
        for handle in handles:
            handle.remove()


def _this_thread_only(hook: Hook) -> Hook:
    owner = threading.get_ident()

    @functools.wraps(hook)
    def guarded(*args: object) -> object:
        return hook(*args) if threading.get_ident() == owner else None

    return guarded


def has_hooks(module: nn.Module) -> bool:
    """True when ``module`` or any submodule has a forward, forward-pre or backward hook registered."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in module.modules()
    )


@contextmanager
def capture_activations(
    model: VizModel, layers: Sequence[str], *, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of named layers during forward passes inside the ``with`` block.

    Yields a dict filled (and overwritten) at every forward: ``{layer_name: output}``. With ``detach=False``
    the recorded tensors stay in the autograd graph, for objectives on activations.
    """
    if isinstance(layers, str):
        layers = [layers]
    modules = {name: model.layer(name) for name in layers}
    recorded: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Hook:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            recorded[name] = output.detach() if detach else output

        return hook

    with ExitStack() as stack:
        for name, module in modules.items():
            stack.enter_context(attach(module, forward=recorder(name)))
        yield recorded


#: Key for the model's output (logits) in :func:`forward_activations`.
LOGITS = "<logits>"


class _ForwardCompleteError(Exception):
    """Raised by a forward hook once every requested layer has run: the rest of the network is not needed."""


def forward_activations(model: VizModel, pixels: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{layer: activation}`` for ``layers``, attached to the autograd graph; :data:`LOGITS` gives the output.

    Without :data:`LOGITS` the forward pass stops once every requested layer has run, so it is faster and
    networks whose classifier needs a fixed input size (GlyphNet) still work at any image size.
    """
    named = [layer for layer in layers if layer != LOGITS]
    with capture_activations(model, named, detach=False) as recorded, ExitStack() as stack:
        if LOGITS not in layers and named:

            def stop_when_complete(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                if all(layer in recorded for layer in named):
                    raise _ForwardCompleteError

            for module in dict.fromkeys(model.layer(layer) for layer in named):
                stack.enter_context(attach(module, forward=stop_when_complete))
        try:
            logits = model(pixels)
        except _ForwardCompleteError:
            logits = None
        activations = dict(recorded)
    if logits is not None:
        activations[LOGITS] = logits
    return activations


def get_activations(model: VizModel, pixels: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations of the named layers for a batch of pixel images, without gradients.

    The forward pass stops after the last requested layer (use :data:`LOGITS` for the model's output).
    """
    if isinstance(layers, str):
        layers = [layers]
    pixels = check_image(pixels, "pixels", batch=True)
    with torch.no_grad():
        return forward_activations(model, pixels, layers)


# --------------------------------------------------------------------------------------------------------------
# Receptive fields
# --------------------------------------------------------------------------------------------------------------


class _StopForwardError(Exception):
    pass


_probe_networks: weakref.WeakKeyDictionary[VizModel, nn.Module] = weakref.WeakKeyDictionary()


def _probe_network(model: VizModel) -> nn.Module:
    """A float64 copy of the network whose input gradients are non-zero exactly on the receptive field.

    Weights become positive averages, ReLUs identities and max pools average pools (a max pool sends gradient
    to one input only), so no unit inside the field can get a zero gradient by chance.
    """
    if model in _probe_networks:
        return _probe_networks[model]
    probe = copy.deepcopy(model.network, _probe_tensors(model.network)).eval()
    for parent in list(probe.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.Sigmoid, nn.Tanh)):
                setattr(parent, name, nn.Identity())
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
    _probe_networks[model] = probe
    return probe


def _probe_tensors(network: nn.Module) -> dict[int, torch.Tensor]:
    """``copy.deepcopy`` memo giving the probe float64 CPU tensors without copying the network's weights first (a
    GPU model is never copied on its GPU): each convolution's and linear layer's weight is its average, one number
    expanded to the weight's shape (no memory even for VGG's 100 M-weight classifier), biases zero."""
    memo: dict[int, torch.Tensor] = {}
    for module in network.modules():
        averaged = isinstance(module, (nn.Conv2d, nn.Linear))
        for name, parameter in module.named_parameters(recurse=False):
            if averaged and name == "weight":
                fan_in = parameter[0].numel()
                value = torch.full((1,) * parameter.dim(), 1.0 / fan_in, dtype=torch.float64, device="cpu")
                value = value.expand(parameter.shape)
            elif averaged and name == "bias":
                value = torch.zeros(parameter.shape, dtype=torch.float64, device="cpu")
            else:
                value = parameter.detach().to(device="cpu", dtype=torch.float64, copy=True)
            memo[id(parameter)] = nn.Parameter(value, requires_grad=False)
        for buffer in module.buffers(recurse=False):
            dtype = torch.float64 if buffer.is_floating_point() else buffer.dtype
            memo[id(buffer)] = buffer.detach().to(device="cpu", dtype=dtype, copy=True)
    return memo


def _field_mask(model: VizModel, path: str, position: tuple[int, int], size: int) -> torch.Tensor:
    probe = _probe_network(model)
    pixels = torch.ones(1, 3, size, size, dtype=torch.float64, device="cpu", requires_grad=True)
    captured: dict[str, torch.Tensor] = {}

    def stop(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured["output"] = output
        raise _StopForwardError

    with attach(probe.get_submodule(path), forward=stop), contextlib.suppress(_StopForwardError):
        probe(pixels)
    output = captured["output"]
    if output.dim() != 4:
        raise ValueError(
            f"Layer {path!r} has no spatial positions (output shape {tuple(output.shape)}); every unit sees the "
            "whole image. Choose a convolutional or pooling layer."
        )
    row, col = position
    height, width = output.shape[2:]
    check_int(row, "row", low=0, high=height - 1)
    check_int(col, "col", low=0, high=width - 1)
    output[0, :, row, col].sum().backward()
    return pixels.grad[0].abs().sum(dim=0) > 0


def layer_output_shape(model: VizModel, layer: str, size: int | None = None) -> tuple[int, ...]:
    """Shape ``(C, H, W)`` (or ``(C,)``) of a layer's output for one ``size`` x ``size`` input.

    Measured on the probe copy of the network (same shapes), so the model itself runs no forward pass.
    """
    path = model.layer_path(layer)
    size = model.input_size if size is None else size
    captured: dict[str, tuple[int, ...]] = {}

    def stop(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured["shape"] = tuple(output.shape[1:])
        raise _StopForwardError

    probe = _probe_network(model)
    with attach(probe.get_submodule(path), forward=stop), contextlib.suppress(_StopForwardError), torch.no_grad():
        probe(torch.zeros(1, 3, size, size, dtype=torch.float64, device="cpu"))
    return captured["shape"]


def receptive_field(
    model: VizModel, layer: str, position: tuple[int, int], *, size: int | None = None
) -> tuple[slice, slice]:
    """The input rows and columns that can influence the unit at ``position = (row, col)`` of ``layer``.

    Computed exactly for any architecture (branches, padding, pooling) from the support of the unit's input
    gradient in a probe copy of the network, and clipped to the ``size`` x ``size`` image (default: the
    model's input size). Use it to crop the patch a unit "sees".
    """
    size = model.input_size if size is None else check_int(size, "size", low=1)
    mask = _field_mask(model, model.layer_path(layer), position, size)
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


@dataclass(frozen=True)
class ReceptiveFieldGeometry:
    """Unclipped receptive field of a layer: unit ``(r, c)`` sees rows ``offset + r*stride`` onwards, ``size`` long."""

    size: int
    stride: int
    offset: int

    def box(self, row: int, col: int, image_size: int) -> tuple[slice, slice]:
        """The field of unit ``(row, col)`` clipped to an ``image_size`` square."""
        top, left = self.offset + row * self.stride, self.offset + col * self.stride
        return (
            slice(max(top, 0), min(top + self.size, image_size)),
            slice(max(left, 0), min(left + self.size, image_size)),
        )


def receptive_field_geometry(model: VizModel, layer: str, *, max_size: int = 1024) -> ReceptiveFieldGeometry:
    """Size, stride and offset of a layer's receptive field, measured on an input large enough not to clip it."""
    path = model.layer_path(layer)
    size = model.input_size
    if len(layer_output_shape(model, path, size)) != 3:
        raise ValueError(
            f"Layer {layer!r} has no spatial positions; every unit sees the whole image. "
            "Choose a convolutional or pooling layer."
        )
    while True:
        height = layer_output_shape(model, path, size)[1]
        center = height // 2
        rows = torch.nonzero(_field_mask(model, path, (center, center), size).any(dim=1)).flatten()
        if int(rows[0]) > 0 and int(rows[-1]) < size - 1 and center + 1 < height:
            break
        if size * 2 > max_size:
            raise ValueError(
                f"The receptive field of {layer!r} is larger than {max_size} px (it sees the whole image)."
            )
        size *= 2
    next_rows = torch.nonzero(_field_mask(model, path, (center + 1, center + 1), size).any(dim=1)).flatten()
    stride = int(next_rows[0]) - int(rows[0])
    size_px = int(rows[-1] - rows[0]) + 1
    return ReceptiveFieldGeometry(size=size_px, stride=stride, offset=int(rows[0]) - center * stride)
