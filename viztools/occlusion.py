"""Occlusion sensitivity (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks", sec. 4.2).

Slide a patch (grey, black, the image mean or a blurred copy of the image) over the image, record the target
class probability at every position and draw the drop as a heatmap: where hiding the pixels costs probability,
the network was looking. Lecture: the occlusion part of the "what does the network look at" notebook.

Patch positions: top-left corners ``0, stride, 2*stride, ...`` in each direction. With ``edges="shift"`` (the
default) the last patch is moved back to ``side - patch_size`` when the stride does not land there, so every
patch is whole and the last row and column of the image are covered. ``edges="clip"`` instead keeps stepping
until the border is reached and cuts the last patch off at the border, as Captum's ``Occlusion`` does.

Speed. ``method="batched"`` runs many occluded images per forward pass. ``method="incremental"`` exploits that
a patch only changes the activations inside its cone of influence: the clean activations of every layer are
computed once, and for each patch only the affected window of each local layer (convolution, pooling,
element-wise operation, channel concatenation) is recomputed from a crop of the layer's input assembled from
the clean map and the recomputed window of the layer below. Once a window would cover more than
``INCREMENTAL_MAX_FRACTION`` of its map, the occluded maps are rebuilt at full size and the rest of the network
runs normally. The network's computation graph comes from ``torch.fx``; models it cannot trace fall back to
batching. Both fast paths equal the naive one-image-at-a-time loop up to float rounding.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from viztools._validation import check_choice, check_float, check_image, check_int
from viztools.hooks import attach
from viztools.models import VizModel

FILLS = ("grey", "black", "mean", "blur")
METHODS = ("auto", "incremental", "batched", "naive")
KINDS = ("drop", "probability")
EDGES = ("shift", "clip")

#: A layer is recomputed incrementally while its affected window covers at most this fraction of its map.
INCREMENTAL_MAX_FRACTION = 0.85
#: ``method="auto"`` uses incremental inference when it leaves at most this fraction of the multiply-adds.
AUTO_MAX_WORK_FRACTION = 0.8
#: Activation memory (bytes) one batch of occluded images may use when ``batch_size`` is None.
MEMORY_BUDGET = 256 * 2**20
MAX_BATCH_SIZE = 64
_CHANNELS_LAST = torch.channels_last


class OcclusionCancelled(RuntimeError):  # noqa: N818 - the name the widgets and exercises use
    """Raised when ``should_stop()`` returned True; ``done`` of ``total`` patch positions were evaluated."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"Occlusion cancelled by should_stop() after {done} of {total} patch positions.")
        self.done = done
        self.total = total


def patch_starts(side: int, patch_size: int, stride: int, edges: str = "shift") -> tuple[int, ...]:
    """Top-left coordinates of the patches along one side (see the module docstring for ``edges``)."""
    side = check_int(side, "side", low=1)
    patch_size = check_int(patch_size, "patch_size", low=1, high=side)
    stride = check_int(stride, "stride", low=1)
    check_choice(edges, "edges", EDGES)
    if edges == "clip":
        count = math.ceil((side - patch_size) / stride) + 1
        return tuple(i * stride for i in range(count) if i * stride < side)
    starts = list(range(0, side - patch_size + 1, stride))
    if starts[-1] != side - patch_size:
        starts.append(side - patch_size)
    return tuple(starts)


def default_patch_size(side: int) -> int:
    """About 1/7 of the image side, rounded up to a multiple of 4 px: 12 px at 64 px (GlyphNet), 32 px at 224 px."""
    return min(side, 4 * math.ceil(side / 7 / 4))


def default_stride(side: int) -> int:
    """About 1/28 of the image side (a quarter patch), rounded up to a multiple of 4 px: 4 px at 64, 8 px at 224."""
    return 4 * math.ceil(side / 28 / 4)


@dataclass
class OcclusionResult:
    """Target-class probability with the patch at each position (rows x cols of patch positions).

    ``row_starts`` / ``col_starts`` are the patches' top-left coordinates (default: the ``edges="shift"`` grid);
    a patch covers ``[start, start + patch_size)`` clipped to the image. ``method`` names the method that ran.
    """

    probability: torch.Tensor
    baseline: float
    target: int
    patch_size: int
    stride: int
    fill: str
    image_size: tuple[int, int]
    row_starts: tuple[int, ...] = field(default=())
    col_starts: tuple[int, ...] = field(default=())
    method: str = ""

    def __post_init__(self) -> None:
        height, width = self.image_size
        if not self.row_starts:
            self.row_starts = patch_starts(height, self.patch_size, self.stride)
        if not self.col_starts:
            self.col_starts = patch_starts(width, self.patch_size, self.stride)
        expected = (len(self.row_starts), len(self.col_starts))
        if tuple(self.probability.shape) != expected:
            raise ValueError(
                f"probability must have one value per patch position, shape {expected}; "
                f"got {tuple(self.probability.shape)}."
            )

    @property
    def drop(self) -> torch.Tensor:
        """``baseline - probability`` per patch position: positive where occluding hid evidence for the class."""
        return self.baseline - self.probability

    def heatmap(self, kind: str = "drop") -> torch.Tensor:
        """``(H, W)`` map at image resolution: each pixel is the mean of ``kind`` over the patches covering it.

        ``kind`` is ``"drop"`` or ``"probability"``. Pixels that no patch covers (only possible when the stride
        exceeds the patch size) are NaN.
        """
        check_choice(kind, "kind", KINDS)
        values = (self.drop if kind == "drop" else self.probability).to(torch.float64).cpu()
        height, width = self.image_size
        rows = _coverage(self.row_starts, self.patch_size, height)
        cols = _coverage(self.col_starts, self.patch_size, width)
        sums = rows.T @ values @ cols
        counts = torch.outer(rows.sum(dim=0), cols.sum(dim=0))
        heat = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        return heat.to(torch.float32)


def _coverage(starts: Sequence[int], patch_size: int, side: int) -> torch.Tensor:
    """``(len(starts), side)`` float64 indicator of the pixels each patch covers."""
    pixels = torch.arange(side)
    begin = torch.tensor(starts).unsqueeze(1)
    return ((pixels >= begin) & (pixels < begin + patch_size)).to(torch.float64)


# --------------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------------


def occlusion(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None = None,
    *,
    patch_size: int | None = None,
    stride: int | None = None,
    fill: str = "grey",
    batch_size: int | None = None,
    method: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    edges: str = "shift",
    blur_sigma: float | None = None,
) -> OcclusionResult:
    """Occlusion sensitivity map (Zeiler & Fergus 2014): target probability with a patch at each position.

    Args:
        model: the classifier; ``image``: ``(1, 3, H, W)`` pixels in [0, 1]; ``target``: class index or name
            (None: the top prediction for the clean image).
        patch_size, stride: in pixels; None scales them to the image (:func:`default_patch_size`,
            :func:`default_stride`: 12/4 px at 64 px, 32/8 px at 224 px).
        fill: ``"grey"`` (0.5), ``"black"`` (0), ``"mean"`` (per-channel image mean) or ``"blur"`` (the pixels of
            a Gaussian-blurred copy of the image, sigma ``blur_sigma``, default ``patch_size / 4``).
        batch_size: occluded images per forward pass; None sizes batches to ``MEMORY_BUDGET``.
        method: ``"incremental"`` (recompute only the patch's cone of influence), ``"batched"``, ``"naive"``
            (one image per forward pass, the reference) or ``"auto"`` (incremental where it saves work).
        progress: called as ``progress(done, total)`` (patch positions) after every batch.
        should_stop: polled before every batch; returning True raises :class:`OcclusionCancelled`.
        edges: ``"shift"`` or ``"clip"``: where the last patch of a row or column goes (module docstring).
    """
    return _run_occlusion(
        model, image, target, patch_size=patch_size, stride=stride, fill=fill, batch_size=batch_size,
        method=method, progress=progress, should_stop=should_stop, edges=edges, blur_sigma=blur_sigma,
    )


def occlusion_coarse_to_fine(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None = None,
    *,
    patch_size: int | None = None,
    stride: int | None = None,
    fill: str = "grey",
    coarse_stride: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: object,
) -> Iterator[OcclusionResult]:
    """Yield a quick coarse occlusion map, then the full-resolution one (for responsive widgets).

    The coarse pass uses ``coarse_stride`` (default: the smallest multiple of ``stride`` that is at least
    ``patch_size``, i.e. patches that barely overlap); the fine pass reuses every coarse position it shares.
    ``progress(done, total)`` counts patch positions over both passes. Other keyword arguments go to
    :func:`occlusion`.
    """
    pixels = check_image(image)
    side = min(pixels.shape[2:])
    patch_size = default_patch_size(side) if patch_size is None else check_int(patch_size, "patch_size", low=1,
                                                                                high=side)
    stride = default_stride(side) if stride is None else check_int(stride, "stride", low=1)
    if coarse_stride is None:
        coarse_stride = stride * math.ceil(patch_size / stride)
    coarse_stride = check_int(coarse_stride, "coarse_stride", low=1)
    edges = kwargs.get("edges", "shift")
    height, width = pixels.shape[2:]
    coarse_count = len(patch_starts(height, patch_size, coarse_stride, edges)) * len(
        patch_starts(width, patch_size, coarse_stride, edges))
    fine_rows = patch_starts(height, patch_size, stride, edges)
    fine_cols = patch_starts(width, patch_size, stride, edges)

    coarse = _run_occlusion(model, pixels, target, patch_size=patch_size, stride=coarse_stride, fill=fill,
                            progress=None, **kwargs)
    known = {(r, c): float(coarse.probability[i, j])
             for i, r in enumerate(coarse.row_starts) for j, c in enumerate(coarse.col_starts)}
    reused = sum((r, c) in known for r in fine_rows for c in fine_cols)
    total = coarse_count + len(fine_rows) * len(fine_cols) - reused
    if progress is not None:
        progress(coarse_count, total)
    yield coarse

    def fine_progress(done: int, fine_total: int) -> None:
        if progress is not None:
            progress(coarse_count + done - reused, total)

    yield _run_occlusion(model, pixels, coarse.target, patch_size=patch_size, stride=stride, fill=fill,
                         progress=fine_progress, known=known, **kwargs)


def plot_occlusion(
    result: OcclusionResult,
    image: torch.Tensor,
    *,
    ax: object = None,
    kind: str = "drop",
    alpha: float = 0.5,
    title: str | None = None,
) -> object:
    """Overlay ``result.heatmap(kind)`` on the image with a colour bar; returns the matplotlib Figure.

    ``"drop"`` uses a diverging map centred on 0 (red: occluding there lowers the target probability),
    ``"probability"`` a sequential map over [0, 1].
    """
    import matplotlib.pyplot as plt

    from viztools.data import to_numpy_image

    check_choice(kind, "kind", KINDS)
    alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
    pixels = check_image(image)
    if tuple(pixels.shape[2:]) != tuple(result.image_size):
        raise ValueError(
            f"image is {tuple(pixels.shape[2:])} but the occlusion result was computed for {result.image_size}; "
            "pass the image the result was computed on."
        )
    if ax is None:
        figure, ax = plt.subplots(figsize=(5, 4))
    figure = ax.figure
    heat = result.heatmap(kind).numpy()
    ax.imshow(to_numpy_image(pixels))
    if kind == "drop":
        limit = float(abs(result.drop).max()) or 1.0
        overlay = ax.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=alpha)
        label = "drop in target probability"
    else:
        overlay = ax.imshow(heat, cmap="viridis", vmin=0.0, vmax=1.0, alpha=alpha)
        label = "target probability"
    figure.colorbar(overlay, ax=ax, label=label)
    ax.set_axis_off()
    ax.set_title(title if title is not None else
                 f"Occlusion: class {result.target}, p = {result.baseline:.2f}\n"
                 f"{result.fill} patch {result.patch_size} px, stride {result.stride} px")
    return figure


# --------------------------------------------------------------------------------------------------------------
# Driver shared by all methods
# --------------------------------------------------------------------------------------------------------------


def _run_occlusion(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None,
    *,
    patch_size: int | None,
    stride: int | None,
    fill: str,
    batch_size: int | None = None,
    method: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    edges: str = "shift",
    blur_sigma: float | None = None,
    known: dict[tuple[int, int], float] | None = None,
) -> OcclusionResult:
    if not isinstance(model, VizModel):
        raise TypeError(f"model must be a viztools VizModel (from viztools.load_model); got {type(model).__name__}.")
    pixels = check_image(image).to(device=_device(model.network), dtype=torch.float32)
    height, width = pixels.shape[2:]
    side = min(height, width)
    patch_size = default_patch_size(side) if patch_size is None else check_int(
        patch_size, "patch_size (the patch side in pixels, at most the image side)", low=1, high=side)
    stride = default_stride(side) if stride is None else check_int(stride, "stride (pixels between patches)", low=1)
    check_choice(fill, "fill", FILLS)
    check_choice(method, "method", METHODS)
    check_choice(edges, "edges", EDGES)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", low=1)
    if blur_sigma is None:
        blur_sigma = max(patch_size / 4, 0.5)
    blur_sigma = check_float(blur_sigma, "blur_sigma", low=0.0, low_inclusive=False)
    target = model.resolve_target(target, pixels)

    row_starts = patch_starts(height, patch_size, stride, edges)
    col_starts = patch_starts(width, patch_size, stride, edges)
    fill_pixels = _fill_pixels(pixels, fill, blur_sigma)
    boxes = [(r, min(r + patch_size, height), c, min(c + patch_size, width)) for r in row_starts for c in col_starts]

    with torch.inference_mode():
        baseline = float(_target_probability(model(pixels), target)[0])
        values = torch.full((len(boxes),), float("nan"))
        pending = []
        for index, (top, bottom, left, right) in enumerate(boxes):
            if known is not None and (top, left) in known:
                values[index] = known[(top, left)]
            elif torch.equal(pixels[..., top:bottom, left:right], fill_pixels[..., top:bottom, left:right]):
                values[index] = baseline  # the patch changes nothing: the occluded image is the clean image
            else:
                pending.append(index)

        evaluate, used_method, auto_batch = _choose_evaluator(model, pixels, fill_pixels, target, method,
                                                              [boxes[i] for i in pending] or boxes[:1])
        batch_size = auto_batch if batch_size is None or used_method == "naive" else batch_size
        done = len(boxes) - len(pending)
        for first in range(0, len(pending), batch_size):
            if should_stop is not None and should_stop():
                raise OcclusionCancelled(done, len(boxes))
            chunk = pending[first:first + batch_size]
            values[chunk] = evaluate([boxes[i] for i in chunk]).float().cpu()
            done += len(chunk)
            if progress is not None:
                progress(done, len(boxes))
        if not pending and progress is not None:
            progress(done, len(boxes))

    return OcclusionResult(
        probability=values.view(len(row_starts), len(col_starts)),
        baseline=baseline,
        target=target,
        patch_size=patch_size,
        stride=stride,
        fill=fill,
        image_size=(height, width),
        row_starts=row_starts,
        col_starts=col_starts,
        method=used_method,
    )


Box = tuple[int, int, int, int]  # top, bottom, left, right (exclusive ends)
Evaluator = Callable[[list[Box]], torch.Tensor]


def _device(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _target_probability(logits: torch.Tensor, target: int) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)[:, target]


def _fill_pixels(pixels: torch.Tensor, fill: str, blur_sigma: float) -> torch.Tensor:
    """The image the patch shows, same shape as ``pixels``: the patch region of the occluded image comes from it."""
    if fill == "grey":
        return torch.full_like(pixels, 0.5)
    if fill == "black":
        return torch.zeros_like(pixels)
    if fill == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels).contiguous()
    return gaussian_blur(pixels, blur_sigma)


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius ``ceil(3 sigma)``, borders replicated) of ``(N, C, H, W)`` pixels."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=pixels.dtype, device=pixels.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = pixels.shape[1]
    padded = F.pad(pixels, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def _occluded_batch(normalized: torch.Tensor, fill_normalized: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """The occluded (normalized) images, channels-last: convolutions and pooling run faster on that layout."""
    batch = torch.empty((len(boxes), *normalized.shape[1:]), memory_format=_CHANNELS_LAST, device=normalized.device)
    batch.copy_(normalized.expand_as(batch))
    for i, (top, bottom, left, right) in enumerate(boxes):
        batch[i, :, top:bottom, left:right] = fill_normalized[0, :, top:bottom, left:right]
    return batch


def _choose_evaluator(
    model: VizModel,
    pixels: torch.Tensor,
    fill_pixels: torch.Tensor,
    target: int,
    method: str,
    boxes: list[Box],
) -> tuple[Evaluator, str, int]:
    """The evaluator for ``method`` (resolving ``"auto"``), its name and a batch size that fits the memory budget.

    ``boxes`` are the patches still to evaluate.
    """
    network = model.network
    normalized, fill_normalized = model.normalize(pixels), model.normalize(fill_pixels)

    def naive(chunk: list[Box]) -> torch.Tensor:
        probabilities = []
        for top, bottom, left, right in chunk:
            occluded = pixels.clone()
            occluded[..., top:bottom, left:right] = fill_pixels[..., top:bottom, left:right]
            probabilities.append(_target_probability(model(occluded), target))
        return torch.cat(probabilities)

    def batched(chunk: list[Box]) -> torch.Tensor:
        return _target_probability(network(_occluded_batch(normalized, fill_normalized, chunk)), target)

    if method == "naive":
        return naive, "naive", 1
    if method == "batched":
        return batched, "batched", _batch_size_for(_peak_activation_bytes(network, normalized))
    plan = _IncrementalPlan.build(network, normalized, boxes)
    if plan.reason is not None:
        if method == "incremental":
            raise ValueError(f"method='incremental' cannot handle this model: {plan.reason}. Use method='auto' "
                             "(falls back to batching) or method='batched'.")
        return batched, "batched", _batch_size_for(_peak_activation_bytes(network, normalized))
    batch_size = _batch_size_for(plan.peak_bytes)
    if method == "auto" and plan.work_fraction > AUTO_MAX_WORK_FRACTION:
        return batched, "batched", batch_size

    def incremental(chunk: list[Box]) -> torch.Tensor:
        return _target_probability(plan.run(fill_normalized, chunk), target)

    return incremental, "incremental", batch_size


def _batch_size_for(bytes_per_image: int) -> int:
    return max(1, min(MAX_BATCH_SIZE, MEMORY_BUDGET // max(1, bytes_per_image)))


def _peak_activation_bytes(network: nn.Module, normalized: torch.Tensor) -> int:
    """Twice the largest output of any leaf module for one image: a layer's input and output are alive at once."""
    largest = [normalized.numel() * normalized.element_size()]

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            largest.append(output.numel() * output.element_size())

    leaves = [m for m in network.modules() if not list(m.children())]
    with ExitStack() as stack:
        for leaf in leaves:
            stack.enter_context(attach(leaf, forward=record))
        network(normalized)
    return 2 * max(largest)


# --------------------------------------------------------------------------------------------------------------
# Incremental inference
# --------------------------------------------------------------------------------------------------------------

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.BatchNorm2d,
)
_POINTWISE_FUNCTIONS = {
    torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, F.leaky_relu, F.relu6, F.hardtanh,
    operator.add, operator.mul, torch.add, torch.mul,
}
_CONCATENATIONS = {torch.cat, torch.concat}


@dataclass
class _LocalOp:
    """A graph node computed on crops: output position g reads input positions ``[g*s - p, g*s - p + k)``.

    ``compute`` takes the input crops (padding already in them) keyed by input node. ``reduces`` marks global
    pooling, whose 1x1 output is always worth computing from the windows.
    """

    node: fx.Node
    inputs: list[fx.Node]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float
    compute: Callable[[dict[fx.Node, torch.Tensor]], torch.Tensor]
    reduces: bool = False


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _dilated(kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...]) -> tuple[int, int]:
    """The span of a dilated kernel, per axis."""
    return tuple(d * (k - 1) + 1 for d, k in zip(_pair(dilation), _pair(kernel_size), strict=True))


def _is_one_by_one(output_size: object) -> bool:
    return output_size in (1, (1, 1), [1, 1])


def _local_op(graph_module: fx.GraphModule, node: fx.Node, inputs: list[fx.Node],
              input_size: tuple[int, int]) -> _LocalOp | None:
    """Describe ``node`` as a local operation, or None when it is not one (flatten, linear, reshapes...)."""

    def on_crops(function: Callable[..., torch.Tensor]) -> Callable[[dict[fx.Node, torch.Tensor]], torch.Tensor]:
        def compute(crops: dict[fx.Node, torch.Tensor]) -> torch.Tensor:
            args = fx.node.map_arg(node.args, lambda n: crops[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: crops[n])
            return function(*args, **kwargs)

        return compute

    def global_mean(x: torch.Tensor, *_: object) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)

    pointwise = ((1, 1), (1, 1), (0, 0), 0.0)
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        if len(inputs) != 1 or len(node.args) != 1 or node.kwargs:
            return None
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or (isinstance(module.padding, str) and module.padding != "valid"):
                return None
            padding = (0, 0) if isinstance(module.padding, str) else _pair(module.padding)

            def convolve(x: torch.Tensor) -> torch.Tensor:
                return F.conv2d(x, module.weight, module.bias, module.stride, 0, module.dilation, module.groups)

            return _LocalOp(node, inputs, _dilated(module.kernel_size, module.dilation), _pair(module.stride),
                            padding, 0.0, on_crops(convolve))
        if isinstance(module, nn.MaxPool2d) and not module.return_indices:
            stride = _pair(module.stride if module.stride is not None else module.kernel_size)

            def max_pool(x: torch.Tensor) -> torch.Tensor:
                return F.max_pool2d(x, module.kernel_size, stride, 0, module.dilation)

            return _LocalOp(node, inputs, _dilated(module.kernel_size, module.dilation), stride,
                            _pair(module.padding), float("-inf"), on_crops(max_pool))
        if isinstance(module, nn.AvgPool2d) and not module.ceil_mode and (
                module.count_include_pad or _pair(module.padding) == (0, 0)):
            stride = _pair(module.stride if module.stride is not None else module.kernel_size)

            def average_pool(x: torch.Tensor) -> torch.Tensor:
                return F.avg_pool2d(x, module.kernel_size, stride, 0, divisor_override=module.divisor_override)

            return _LocalOp(node, inputs, _pair(module.kernel_size), stride, _pair(module.padding), 0.0,
                            on_crops(average_pool))
        if isinstance(module, nn.AdaptiveAvgPool2d) and _is_one_by_one(module.output_size):
            return _LocalOp(node, inputs, input_size, (1, 1), (0, 0), 0.0, on_crops(global_mean), reduces=True)
        if isinstance(module, _POINTWISE_MODULES) and not module.training:
            return _LocalOp(node, inputs, *pointwise, on_crops(module))
        return None
    if node.op != "call_function":
        return None
    if node.target in _POINTWISE_FUNCTIONS:
        return _LocalOp(node, inputs, *pointwise, on_crops(node.target))
    if node.target in _CONCATENATIONS:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        return _LocalOp(node, inputs, *pointwise, on_crops(node.target)) if dim in (1, -3) else None
    if node.target is F.adaptive_avg_pool2d and len(inputs) == 1:
        output_size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        if _is_one_by_one(output_size):
            return _LocalOp(node, inputs, input_size, (1, 1), (0, 0), 0.0, on_crops(global_mean), reduces=True)
    return None


def _affected(start: int, stop: int, kernel: int, stride: int, padding: int, size: int) -> tuple[int, int]:
    """Output positions ``[a, b)`` whose input window ``[g*s - p, g*s - p + k)`` meets input rows ``[start, stop)``."""
    first = max(0, -(-(start + padding - kernel + 1) // stride))
    last = min(size, (stop - 1 + padding) // stride + 1)
    return first, max(first, last)


def _crops(source: torch.Tensor, tops: Sequence[int], lefts: Sequence[int], height: int, width: int) -> torch.Tensor:
    """``(B, C, height, width)`` channels-last crops at per-element corners of ``source``, an ``(H, W, C)`` map."""
    crops = [source[top:top + height, left:left + width] for top, left in zip(tops, lefts, strict=True)]
    return torch.stack(crops).permute(0, 3, 1, 2)


def _paste(target: torch.Tensor, windows: torch.Tensor, rows: Sequence[int], cols: Sequence[int]) -> None:
    """Write ``windows[i]`` into ``target[i]`` at offset ``(rows[i], cols[i])``, clipped to ``target``."""
    height, width = windows.shape[2:]
    limit_rows, limit_cols = target.shape[2:]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, offset in enumerate(zip(rows, cols, strict=True)):
        groups.setdefault(offset, []).append(i)
    for (dy, dx), members in groups.items():
        y0, y1 = max(dy, 0), min(dy + height, limit_rows)
        x0, x1 = max(dx, 0), min(dx + width, limit_cols)
        if y0 >= y1 or x0 >= x1:
            continue
        source = windows[:, :, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        if len(members) == len(rows):
            target[:, :, y0:y1, x0:x1] = source
        elif len(members) == 1:
            target[members[0], :, y0:y1, x0:x1] = source[members[0]]
        else:
            index = torch.tensor(members, device=target.device)
            target[index, :, y0:y1, x0:x1] = source[index]


Span = tuple[int, int]  # positions [a, b) along one axis


class _IncrementalPlan:
    """Which graph nodes are recomputed on windows, the windows' sizes and corners, and the clean maps.

    Spans are separable: the rows a node recomputes depend only on the patch's rows. So the plan tabulates, per
    node, the window corner for every distinct patch row span (and column span) of the boxes it was built for.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.graph_module: fx.GraphModule | None = None
        self.input_node: fx.Node | None = None
        self.clean: dict[fx.Node, object] = {}
        self.ops: list[_LocalOp] = []
        self.sizes: dict[fx.Node, tuple[int, int]] = {}
        self.corners: dict[fx.Node, tuple[dict[Span, int], dict[Span, int]]] = {}
        self.frontier: list[fx.Node] = []
        self.padded: dict[tuple[fx.Node, fx.Node], torch.Tensor] = {}
        self.work_fraction = 1.0
        self.peak_bytes = 0

    @classmethod
    def build(cls, network: nn.Module, normalized: torch.Tensor, boxes: list[Box]) -> _IncrementalPlan:
        """Trace ``network``, record its clean activations and choose what to recompute for these ``boxes``."""
        plan = cls()
        try:
            plan.graph_module = fx.symbolic_trace(network)
        except Exception as error:  # any tracing failure means "cannot plan"
            plan.reason = f"torch.fx cannot trace the network ({type(error).__name__}: {error})"
            return plan
        placeholders = [n for n in plan.graph_module.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            plan.reason = f"the network's forward takes {len(placeholders)} inputs, not one image batch"
            return plan
        plan.input_node = placeholders[0]
        clean = _evaluate(plan.graph_module, {plan.input_node: normalized}, keep_all=True)
        output = clean[next(n for n in plan.graph_module.graph.nodes if n.op == "output")]
        reference = network(normalized)
        if not isinstance(output, torch.Tensor) or not torch.allclose(output, reference, rtol=1e-5, atol=1e-6):
            plan.reason = "the traced graph does not reproduce the network's output"
            return plan
        plan.clean = {node: value.contiguous(memory_format=_CHANNELS_LAST)
                      if isinstance(value, torch.Tensor) and value.dim() == 4 else value
                      for node, value in clean.items()}
        plan.peak_bytes = 2 * max(v.numel() * v.element_size() for v in clean.values() if isinstance(v, torch.Tensor))
        plan._select(boxes)
        return plan

    def _shape(self, node: fx.Node) -> tuple[int, int]:
        return tuple(self.clean[node].shape[2:])

    def _select(self, boxes: list[Box]) -> None:
        """Pick the nodes to compute on windows and their window sizes; estimate the fraction of work left."""
        rows = {self.input_node: {span: span for span in {(b[0], b[1]) for b in boxes}}}
        cols = {self.input_node: {span: span for span in {(b[2], b[3]) for b in boxes}}}
        self._accept(self.input_node, rows, cols)
        total_work = remaining_work = 0.0
        for node in self.graph_module.graph.nodes:
            value = self.clean.get(node)
            if node.op in ("placeholder", "output") or not isinstance(value, torch.Tensor):
                continue
            work = float(value.numel()) * _work_per_output(self.graph_module, node)
            total_work += work
            op = self._local_op(node)
            if op is not None:
                height, width = self._shape(node)
                rows[node] = _propagate(op, 0, rows, height)
                cols[node] = _propagate(op, 1, cols, width)
                size = self._accept(node, rows, cols)
                if op.reduces or size[0] * size[1] <= INCREMENTAL_MAX_FRACTION * height * width:
                    self.ops.append(op)
                    remaining_work += work * size[0] * size[1] / (height * width)
                    continue
                del self.sizes[node], self.corners[node]
            remaining_work += work
        for op in self.ops:
            for source in op.inputs:
                self.padded[(source, op.node)] = self._padded_clean(source, op)
        self.frontier = [n for n in self.sizes if any(user not in self.sizes for user in n.users)]
        self.work_fraction = remaining_work / max(total_work, 1.0)

    def _accept(self, node: fx.Node, rows: dict[fx.Node, dict[Span, Span]],
                cols: dict[fx.Node, dict[Span, Span]]) -> tuple[int, int]:
        """Window size (the longest span) and window corners of ``node`` (windows stay inside the map)."""
        height, width = self._shape(node)
        size = (max(1, *(b - a for a, b in rows[node].values())), max(1, *(b - a for a, b in cols[node].values())))
        self.sizes[node] = size
        self.corners[node] = ({key: min(a, height - size[0]) for key, (a, _) in rows[node].items()},
                              {key: min(a, width - size[1]) for key, (a, _) in cols[node].items()})
        return size

    def _local_op(self, node: fx.Node) -> _LocalOp | None:
        """``node`` as a local operation on nodes already computed on windows, or None."""
        inputs = [n for n in node.all_input_nodes if isinstance(self.clean.get(n), torch.Tensor)]
        if not inputs or not all(n in self.sizes and self.clean[n].dim() == 4 for n in inputs):
            return None
        if self.clean[node].dim() != 4:
            return None
        op = _local_op(self.graph_module, node, inputs, self._shape(inputs[0]))
        if op is not None and op.kernel == (1, 1) and any(self._shape(n) != self._shape(node) for n in inputs):
            return None  # e.g. an element-wise sum that broadcasts over space
        return op

    def _padded_clean(self, source: fx.Node, op: _LocalOp) -> torch.Tensor:
        """``(H, W, C)``: the clean input map of ``op``, padded with its padding value so every crop fits inside."""
        out_height, out_width = self._shape(op.node)
        in_height, in_width = self._shape(source)
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        bottom = max(0, (out_height - 1) * sh - ph + kh - in_height)
        right = max(0, (out_width - 1) * sw - pw + kw - in_width)
        padded = F.pad(self.clean[source], (pw, right, ph, bottom), value=op.pad_value)
        return padded[0].permute(1, 2, 0).contiguous()

    def run(self, fill_normalized: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
        """Logits of the occluded images for ``boxes`` (a subset of the boxes the plan was built for)."""
        row_keys = [(b[0], b[1]) for b in boxes]
        col_keys = [(b[2], b[3]) for b in boxes]
        corners = {node: ([row_corners[k] for k in row_keys], [col_corners[k] for k in col_keys])
                   for node, (row_corners, col_corners) in self.corners.items()}
        values = {self.input_node: self._input_window(fill_normalized, boxes, corners[self.input_node])}
        for op in self.ops:
            crops = {source: self._input_crop(source, op, corners[op.node], values[source], corners[source])
                     for source in op.inputs}
            values[op.node] = op.compute(crops)
        environment: dict[fx.Node, object] = dict.fromkeys(self.sizes)
        for node in self.frontier:
            full = torch.empty((len(boxes), *self.clean[node].shape[1:]), memory_format=_CHANNELS_LAST,
                               device=self.clean[node].device)
            full.copy_(self.clean[node].expand_as(full))
            _paste(full, values[node], *corners[node])
            environment[node] = full
        return _evaluate(self.graph_module, environment)

    def _input_window(self, fill: torch.Tensor, boxes: list[Box], corners: tuple[list[int], list[int]]) -> torch.Tensor:
        """The occluded images inside the input node's windows."""
        height, width = self.sizes[self.input_node]
        tops, lefts = corners
        clean = _crops(self.clean[self.input_node][0].permute(1, 2, 0), tops, lefts, height, width)
        filled = _crops(fill[0].permute(1, 2, 0), tops, lefts, height, width)
        rows = torch.arange(height).view(1, height) + torch.tensor(tops).view(-1, 1)
        cols = torch.arange(width).view(1, width) + torch.tensor(lefts).view(-1, 1)
        box = torch.tensor(boxes)
        inside_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])
        inside_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])
        mask = (inside_rows[:, None, :, None] & inside_cols[:, None, None, :]).to(clean.device)
        return torch.where(mask, filled, clean)

    def _input_crop(self, source: fx.Node, op: _LocalOp, corners: tuple[list[int], list[int]],
                    source_values: torch.Tensor, source_corners: tuple[list[int], list[int]]) -> torch.Tensor:
        """What ``op`` reads of ``source``'s occluded map for its windows: the clean map with the new window pasted."""
        (size_h, size_w), (kh, kw), (sh, sw) = self.sizes[op.node], op.kernel, op.stride
        height, width = (size_h - 1) * sh + kh, (size_w - 1) * sw + kw
        tops = [t * sh for t in corners[0]]  # in the coordinates of the padded clean map
        lefts = [t * sw for t in corners[1]]
        if op.padding == (0, 0) and (height, width) == self.sizes[source] and (tops, lefts) == source_corners:
            return source_values  # e.g. a point-wise op reading exactly the window below
        crops = _crops(self.padded[(source, op.node)], tops, lefts, height, width)
        _paste(crops, source_values,
               [t + op.padding[0] - c for t, c in zip(source_corners[0], tops, strict=True)],
               [t + op.padding[1] - c for t, c in zip(source_corners[1], lefts, strict=True)])
        return crops


def _propagate(op: _LocalOp, axis: int, spans: dict[fx.Node, dict[Span, Span]], size: int) -> dict[Span, Span]:
    """Affected output span of ``op`` along ``axis`` per patch span (the hull of its inputs' spans)."""
    keys = spans[op.inputs[0]].keys()
    result = {}
    for key in keys:
        start = min(spans[n][key][0] for n in op.inputs)
        stop = max(spans[n][key][1] for n in op.inputs)
        result[key] = _affected(start, stop, op.kernel[axis], op.stride[axis], op.padding[axis], size)
    return result


def _work_per_output(graph_module: fx.GraphModule, node: fx.Node) -> float:
    """Rough multiply-adds per output element (convolutions dominate; other layers count 1)."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        if isinstance(module, nn.Conv2d):
            return module.in_channels // module.groups * math.prod(_pair(module.kernel_size))
        if isinstance(module, nn.Linear):
            return module.in_features
    return 1.0


def _evaluate(graph_module: fx.GraphModule, environment: dict[fx.Node, object], *,
              keep_all: bool = False) -> object:
    """Run the graph's nodes that ``environment`` does not already hold; return the output (or every value)."""
    values = dict(environment)
    for node in graph_module.graph.nodes:
        if node in values:
            continue
        if node.op == "output":
            result = fx.node.map_arg(node.args[0], lambda n: values[n])
            return {**values, node: result} if keep_all else result
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        if node.op == "call_module":
            values[node] = graph_module.get_submodule(node.target)(*args, **kwargs)
        elif node.op == "call_function":
            values[node] = node.target(*args, **kwargs)
        elif node.op == "call_method":
            values[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        elif node.op == "get_attr":
            values[node] = _attribute(graph_module, node.target)
        else:
            raise RuntimeError(f"Unexpected graph node {node.format_node()}.")
    raise RuntimeError("The traced graph has no output node.")


def _attribute(module: nn.Module, path: str) -> object:
    for name in path.split("."):
        module = getattr(module, name)
    return module
