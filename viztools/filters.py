"""Filter weights as pictures: what a convolution layer looks for (lecture "01_patches_and_filters").

First-layer filters act on RGB pixels, so each one can be shown as a small colour image: trained networks learn
oriented edges and colour blobs (Krizhevsky et al. 2012, Fig. 3; Zeiler & Fergus 2014). Deeper filters act on
feature maps, so they are shown as greyscale maps, one per input channel, for a few output channels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from viztools._validation import check_choice, check_int, check_model
from viztools.hooks import attach
from viztools.models import VizModel
from viztools.plotting import figure_and_axes

MODES = ("auto", "rgb", "grey")
NORMALIZATIONS = ("filter", "map", "global")
DEFAULT_GREY_CHANNELS = 8
_RGB_GAP = (1.0, 1.0, 1.0)  # white between colour filters
_GREY_GAP = (0.75, 0.85, 1.0)  # light blue between greyscale maps, distinct from any grey value


_WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class _StopForwardError(Exception):
    """Raised by a pre-hook to end a forward pass once every target layer has been reached."""


def _weight_layer_before(
    model: VizModel, targets: Sequence[nn.Module]
) -> dict[int, tuple[str, nn.Module] | None]:
    """For each target (keyed by ``id``): the last Conv/Linear layer the forward pass calls before it, or None.

    One forward pass on a blank image, traced with pre-hooks; it stops once every target has been called.
    """
    last: list[tuple[str, nn.Module]] = []
    found: dict[int, tuple[str, nn.Module] | None] = {}
    wanted = {id(target) for target in targets}

    def record(path: str, module: nn.Module) -> Callable[[nn.Module, tuple], None]:
        def hook(hooked: nn.Module, inputs: tuple) -> None:
            if id(hooked) in wanted and id(hooked) not in found:
                found[id(hooked)] = last[-1] if last else None
                if len(found) == len(wanted):
                    raise _StopForwardError
            if isinstance(hooked, _WEIGHT_TYPES):
                last.append((path, module))

        return hook

    with ExitStack() as stack:
        for path, module in model.network.named_modules():
            if isinstance(module, _WEIGHT_TYPES) or id(module) in wanted:
                stack.enter_context(attach(module, forward_pre=record(path, module)))
        pixels = torch.zeros(1, 3, model.input_size, model.input_size, device=model.device)
        with torch.no_grad(), contextlib.suppress(_StopForwardError):
            model(pixels)
    return found


def resolve_conv(model: VizModel, layer: str) -> tuple[str, nn.Conv2d]:
    """The ``(dotted path, Conv2d)`` whose filters produce ``layer``.

    A Conv2d is itself; a block that contains convolutions gives its last registered Conv2d (for a SqueezeNet
    Fire module that is ``expand3x3``, half of its output channels); any other module (a ReLU, a pool: friendly
    names such as ``"conv1"`` name the ReLU after the conv) gives the nearest Conv2d called before it in the
    forward pass. Raises ValueError when that nearest weight layer is not a Conv2d (e.g. a fully connected layer).
    """
    model = check_model(model)
    path = model.layer_path(layer)
    module = model.network.get_submodule(path)
    if isinstance(module, nn.Conv2d):
        return path, module
    if isinstance(module, _WEIGHT_TYPES):
        raise ValueError(f"Layer {layer!r} ({path}) is a {type(module).__name__} layer, not a Conv2d; filters can "
                         f"only be shown for Conv2d layers. Choose a convolutional layer: {_conv_layer_list(model)}.")
    inside = [(f"{path}.{name}", m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if inside:
        return inside[-1]
    before = _weight_layer_before(model, [module]).get(id(module))
    if before is not None and isinstance(before[1], nn.Conv2d):
        return before
    reason = (
        f"is produced by the {type(before[1]).__name__} layer {before[0]!r}, not a convolution"
        if before is not None
        else "has no Conv2d before it"
    )
    raise ValueError(
        f"Layer {layer!r} ({path}) {reason}; filters can only be shown for Conv2d layers. "
        f"Choose a convolutional layer: {_conv_layer_list(model)}."
    )


def _conv_layer_list(model: VizModel) -> str:
    """The friendly layer names that :func:`resolve_conv` resolves to a Conv2d, for error messages."""
    modules = {name: model.layer(name) for name in model.layers}
    before = _weight_layer_before(model, list(modules.values()))

    def has_filters(module: nn.Module) -> bool:
        if any(isinstance(m, nn.Conv2d) for m in module.modules()):
            return True
        producer = before.get(id(module))
        return not isinstance(module, _WEIGHT_TYPES) and producer is not None and isinstance(producer[1], nn.Conv2d)

    names = [name for name, module in modules.items() if has_filters(module)]
    return ", ".join(names) if names else "(this model has none)"


@dataclass
class FilterGrid:
    """Filters of one Conv2d as pictures.

    Attributes:
        model_name: the model's name; layer: the layer as given; conv_path: the Conv2d shown (see
            :func:`resolve_conv`).
        mode: ``"rgb"`` (one colour tile per filter) or ``"grey"`` (one greyscale map per input channel).
        normalize: how values were scaled to [0, 1] (see :func:`filter_grid`).
        channels: output channels shown; input_channels: input channels shown (grey mode), else None.
        tiles: rgb: ``(n, kh, kw, 3)``; grey: ``(n, m, kh, kw)``; values in [0, 1].
        mosaic: all tiles in one ``(H, W, 3)`` image (rgb: a near-square grid; grey: a row per output channel,
            a column per input channel), tiles ``padding`` pixels apart.
        columns: tiles per mosaic row; padding: pixels between tiles.
        weight_shape: shape ``(out, in, kh, kw)`` of the Conv2d's full weight.
    """

    model_name: str
    layer: str
    conv_path: str
    mode: str
    normalize: str
    channels: list[int]
    input_channels: list[int] | None
    tiles: np.ndarray
    mosaic: np.ndarray
    columns: int
    padding: int
    weight_shape: tuple[int, int, int, int]


def _scale(values: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Min-max scale to [0, 1] over ``dims``; a constant group becomes 0.5."""
    low = values.amin(dim=dims, keepdim=True)
    high = values.amax(dim=dims, keepdim=True)
    span = high - low
    return torch.where(span > 0, (values - low) / torch.where(span > 0, span, 1), torch.full_like(values, 0.5))


def _check_indices(indices: Sequence[int] | None, name: str, count: int) -> list[int] | None:
    if indices is None:
        return None
    if isinstance(indices, int) or not isinstance(indices, Sequence) or not indices:
        raise ValueError(f"{name} must be a non-empty list of indices (or None for the default); got {indices!r}.")
    return [check_int(i, f"{name} entry (the layer has {count})", low=0, high=count - 1) for i in indices]


def _mosaic(tiles: list[list[np.ndarray]], padding: int, gap: tuple[float, float, float]) -> np.ndarray:
    """Equal-size ``(kh, kw, 3)`` tiles in rows, ``padding`` px of colour ``gap`` between them."""
    tile_h, tile_w = tiles[0][0].shape[:2]
    columns = max(len(row) for row in tiles)
    height = len(tiles) * (tile_h + padding) - padding
    width = columns * (tile_w + padding) - padding
    mosaic = np.empty((height, width, 3), dtype=np.float32)
    mosaic[:] = gap
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            top, left = r * (tile_h + padding), c * (tile_w + padding)
            mosaic[top : top + tile_h, left : left + tile_w] = tile
    return mosaic


def filter_grid(
    model: VizModel,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    input_channels: Sequence[int] | None = None,
    mode: str = "auto",
    normalize: str = "filter",
    columns: int | None = None,
    padding: int = 1,
) -> FilterGrid:
    """The filters that produce ``layer`` as images (Krizhevsky et al. 2012; Zeiler & Fergus 2014).

    ``mode="auto"`` shows a Conv2d on 3 input channels as RGB tiles (``"rgb"``: weights on R, G, B become a
    colour picture) and deeper ones as greyscale maps (``"grey"``: one kh x kw map per input channel).
    Default ``channels``: all filters (rgb) or the first 8 (grey); default ``input_channels``: all.

    ``normalize`` maps weights to [0, 1] by min-max scaling: ``"filter"`` scales each filter on its own (over
    its 3 x kh x kw weights in rgb mode, over its shown maps in grey mode), so every tile uses the full range
    and tiles are not comparable in magnitude; ``"map"`` (grey only) scales each kh x kw map on its own;
    ``"global"`` uses one scale for all shown weights, so weak filters look flat. A constant group shows 0.5.
    """
    model = check_model(model)
    conv_path, conv = resolve_conv(model, layer)
    mode = check_choice(mode, "mode", MODES)
    normalize = check_choice(normalize, "normalize", NORMALIZATIONS)
    padding = check_int(padding, "padding", low=0)
    weight = conv.weight.detach().float().cpu().clone()
    out_count, in_count = weight.shape[:2]
    if mode == "auto":
        mode = "rgb" if in_count == 3 else "grey"
    if mode == "rgb" and in_count != 3:
        raise ValueError(f"{conv_path} has {in_count} input channels, so its filters are not RGB images; use "
                         "mode='grey' (or 'auto').")
    if mode == "rgb" and normalize == "map":
        raise ValueError("normalize='map' would scale R, G and B separately and change the colours; use 'filter' "
                         "or 'global' for RGB filters.")
    channels = _check_indices(channels, "channels", out_count)
    input_channels = _check_indices(input_channels, "input_channels", in_count)
    if channels is None:
        channels = list(range(out_count if mode == "rgb" else min(DEFAULT_GREY_CHANNELS, out_count)))
    if mode == "rgb":
        if input_channels is not None:
            raise ValueError("input_channels applies to mode='grey' only; RGB tiles always show all 3 channels.")
        selected = weight[channels]
        scaled = _scale(selected, (1, 2, 3) if normalize == "filter" else (0, 1, 2, 3))
        tiles = scaled.permute(0, 2, 3, 1).numpy()
        columns = math.ceil(math.sqrt(len(channels))) if columns is None else check_int(columns, "columns", low=1)
        rows = [list(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
        mosaic = _mosaic(rows, padding, _RGB_GAP)
    else:
        if columns is not None:
            raise ValueError("columns applies to mode='rgb' only; grey mosaics have one column per input channel.")
        input_list = list(range(in_count)) if input_channels is None else input_channels
        selected = weight[channels][:, input_list]
        dims = {"filter": (1, 2, 3), "map": (2, 3), "global": (0, 1, 2, 3)}[normalize]
        tiles = _scale(selected, dims).numpy()
        columns = len(input_list)
        mosaic = _mosaic([[np.repeat(m[..., None], 3, axis=2) for m in row] for row in tiles], padding, _GREY_GAP)
    return FilterGrid(model_name=model.name, layer=layer, conv_path=conv_path, mode=mode, normalize=normalize,
                      channels=channels,
                      input_channels=None if mode == "rgb" else (input_channels or list(range(in_count))),
                      tiles=tiles, mosaic=mosaic, columns=columns, padding=padding,
                      weight_shape=tuple(weight.shape))


def plot_filters(grid: FilterGrid, *, ax: Axes | None = None) -> Figure:
    """Draw a :func:`filter_grid` as one image; pass ``ax`` to put two models' first layers side by side."""
    if not isinstance(grid, FilterGrid):
        raise TypeError(f"plot_filters takes the result of filter_grid(model, layer=...); got {type(grid).__name__}."
                        " Example: plot_filters(filter_grid(model, layer='conv1')).")
    out_count, in_count, kh, kw = grid.weight_shape
    height, width = grid.mosaic.shape[:2]
    scale = 6.0 / max(height, width)
    figure, ax = figure_and_axes(ax, figsize=(max(2.5, width * scale) + 0.6, max(2.0, height * scale) + 0.8))
    ax.imshow(grid.mosaic, interpolation="nearest")
    ax.set_title(f"{grid.model_name} {grid.layer} ({grid.conv_path}): {out_count} filters {in_count}x{kh}x{kw}\n"
                 f"{'RGB' if grid.mode == 'rgb' else 'per input channel'}, scaled per {grid.normalize}", fontsize=11)
    if grid.mode == "rgb":
        ax.set_axis_off()
        return figure
    step_h, step_w = kh + grid.padding, kw + grid.padding
    ax.set_yticks([r * step_h + (kh - 1) / 2 for r in range(len(grid.channels))], [str(c) for c in grid.channels])
    every = max(1, len(grid.input_channels) // 16)
    shown = range(0, len(grid.input_channels), every)
    ax.set_xticks([c * step_w + (kw - 1) / 2 for c in shown], [str(grid.input_channels[c]) for c in shown])
    ax.tick_params(length=0, labelsize=10)
    ax.set_xlabel("input channel")
    ax.set_ylabel("output channel (filter)")
    for spine in ax.spines.values():
        spine.set_visible(False)
    return figure
