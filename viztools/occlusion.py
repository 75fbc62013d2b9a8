"""Occlusion sensitivity (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks", sec. 4.2).

Slide a patch (grey, black, the image mean or a blurred copy of the image) over the image, record the target
class probability at every position and draw the drop as a heatmap: where hiding the pixels costs probability,
the network was looking. Lecture: ``lectures/03_occlusion.ipynb``.

Patch positions: top-left corners ``0, stride, 2*stride, ...`` in each direction. With ``edges="shift"`` (the
default) the last patch is moved back to ``side - patch_size`` when the stride does not land there, so every
patch is whole and the last row and column of the image are covered. ``edges="clip"`` instead keeps stepping
until the border is reached and cuts the last patch off at the border, as Captum's ``Occlusion`` does.

Speed. ``method="batched"`` runs many occluded images per forward pass (channels-last, which CPU convolutions
prefer). ``method="incremental"`` exploits that a patch only changes the activations inside its cone of
influence: the clean activations of every layer are computed once, and for each patch only the affected window
of each local operation (convolution, pooling, element-wise operation, channel concatenation, global average
pooling) is recomputed, from a crop of the operation's input assembled from the clean map and the recomputed
window below it. Crop margins follow from each operation's kernel, stride and padding. Once a window would cover
more than ``INCREMENTAL_MAX_FRACTION`` of its map, the occluded maps are rebuilt at full size and the rest of the
network runs normally. The computation graph is recorded from one clean forward pass (a thread-local
``TorchFunctionMode``, so widgets computing in other threads are unaffected) and checked by replaying it on a
batch of two images; models whose forward pass reads activation values (data-dependent control flow), modifies them in
place, or does not replay exactly fall back to batching. Every method equals the naive one-image-at-a-time loop
up to float rounding; ``method="auto"`` picks incremental inference when it saves at least 20% of the
multiply-adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from viztools._validation import check_choice, check_float, check_image, check_int
from viztools.models import VizModel

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
#: Largest automatic batch: larger ones ran slower here (their working sets fall out of the CPU caches).
MAX_BATCH_SIZE = 32
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
    a patch covers ``[start, start + patch_size)`` clipped to the image. ``method`` names the method that ran
    (``"none"`` when no position needed evaluating: all known from a coarse pass, or patches equal to the image).
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
        should_stop: polled before the set-up and before every batch after the first; returning True raises
            :class:`OcclusionCancelled` (the widget uses it to drop stale work).
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
    fine_rows = patch_starts(height, patch_size, stride, edges)
    fine_cols = patch_starts(width, patch_size, stride, edges)

    coarse_rows = patch_starts(height, patch_size, coarse_stride, edges)
    coarse_cols = patch_starts(width, patch_size, coarse_stride, edges)
    reused = len(set(coarse_rows) & set(fine_rows)) * len(set(coarse_cols) & set(fine_cols))
    total = len(coarse_rows) * len(coarse_cols) + len(fine_rows) * len(fine_cols) - reused

    def coarse_progress(done: int, coarse_total: int) -> None:
        if progress is not None:
            progress(done, total)

    def fine_progress(done: int, fine_total: int) -> None:
        if progress is not None:
            progress(len(coarse_rows) * len(coarse_cols) + done - reused, total)

    coarse = _run_occlusion(model, pixels, target, patch_size=patch_size, stride=coarse_stride, fill=fill,
                            progress=coarse_progress, **kwargs)
    yield coarse
    known = {(r, c): float(coarse.probability[i, j])
             for i, r in enumerate(coarse.row_starts) for j, c in enumerate(coarse.col_starts)}

    yield _run_occlusion(model, pixels, coarse.target, patch_size=patch_size, stride=stride, fill=fill,
                         progress=fine_progress, known=known, **kwargs)


def plot_occlusion(
    result: OcclusionResult,
    image: torch.Tensor,
    *,
    ax: Axes | None = None,
    kind: str = "drop",
    alpha: float = 0.5,
    title: str | None = None,
) -> Figure:
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

        done = len(boxes) - len(pending)
        used_method = "none"  # when every position is known or a no-op
        if pending:
            if should_stop is not None and should_stop():
                raise OcclusionCancelled(done, len(boxes))
            evaluate, used_method, auto_batch = _choose_evaluator(model, pixels, fill_pixels, target, method,
                                                                  [boxes[i] for i in pending])
            batch_size = auto_batch if batch_size is None or used_method == "naive" else batch_size
        for first in range(0, len(pending), batch_size or 1):
            if first > 0 and should_stop is not None and should_stop():
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


def _occluded_batch(normalized: torch.Tensor, fill_normalized: torch.Tensor, boxes: list[Box],
                    memory_format: torch.memory_format = _CHANNELS_LAST) -> torch.Tensor:
    """The occluded (normalized) images; channels-last by default, the layout CPU convolutions run fastest on."""
    batch = torch.empty((len(boxes), *normalized.shape[1:]), memory_format=memory_format, device=normalized.device)
    batch.copy_(normalized.expand_as(batch))
    for i, (top, bottom, left, right) in enumerate(boxes):
        batch[i, :, top:bottom, left:right] = fill_normalized[0, :, top:bottom, left:right]
    return batch


def _reproduces(compute: Callable[[], torch.Tensor], reference: torch.Tensor) -> tuple[bool, str]:
    """Whether ``compute()`` gives ``reference`` (up to float rounding), and what went wrong if it raised."""
    try:
        result = compute()
    except (RuntimeError, ValueError, TypeError, IndexError) as error:  # e.g. .view() of a channels-last tensor
        return False, f" ({type(error).__name__}: {error})"
    tolerance = 1e-4 * (1.0 + float(reference.abs().max()))  # float rounding grows with the logits' scale
    return result.shape == reference.shape and bool((result - reference).abs().max() <= tolerance), ""


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

    if method == "naive":
        return naive, "naive", 1
    # Two test patches: the fast paths must reproduce the network on them (a batch of two catches batch sizes
    # baked into a recorded graph; channels-last input breaks networks that call .view() on activations).
    test_boxes = (boxes * 2)[:2]
    reference = network(_occluded_batch(normalized, fill_normalized, test_boxes, torch.contiguous_format))
    layout = _CHANNELS_LAST if _reproduces(
        lambda: network(_occluded_batch(normalized, fill_normalized, test_boxes)), reference)[0] else (
        torch.contiguous_format)

    def batched(chunk: list[Box]) -> torch.Tensor:
        return _target_probability(network(_occluded_batch(normalized, fill_normalized, chunk, layout)), target)

    program = _record(network, normalized)
    batched_size = _batch_size_for(2 * program.largest_bytes)
    if method == "batched":
        return batched, "batched", batched_size
    plan = _IncrementalPlan.build(program, fill_normalized, boxes, test_boxes, reference)
    if plan.reason is not None:
        if method == "incremental":
            raise ValueError(f"method='incremental' cannot handle this model: {plan.reason}. Use method='auto' "
                             "(falls back to batching) or method='batched'.")
        return batched, "batched", batched_size
    if method == "auto" and plan.work_fraction > AUTO_MAX_WORK_FRACTION:
        return batched, "batched", batched_size

    def incremental(chunk: list[Box]) -> torch.Tensor:
        return _target_probability(plan.run(fill_normalized, chunk), target)

    return incremental, "incremental", _batch_size_for(plan.bytes_per_image)


def _batch_size_for(bytes_per_image: int) -> int:
    return max(1, min(MAX_BATCH_SIZE, MEMORY_BUDGET // max(1, bytes_per_image)))


# --------------------------------------------------------------------------------------------------------------
# Recording the network's computation
# --------------------------------------------------------------------------------------------------------------
#
# The incremental method needs the network's computation graph. torch.fx's symbolic tracing patches
# torch.nn.Module.__call__ for the whole process while it runs, which breaks forward passes in other threads
# (widgets compute in background threads). So the graph is recorded instead, with a TorchFunctionMode, which is
# thread-local: one clean forward pass logs every torch call whose arguments derive from the image. Before use, a
# plan built on the recording must reproduce the network on two test patches (see _IncrementalPlan.build).

#: Tensor methods that read metadata, not values: harmless for replaying the recorded calls.
_METADATA_READS = {
    "size", "dim", "ndimension", "numel", "nelement", "__len__", "__get__", "stride", "is_contiguous",
    "element_size", "is_floating_point", "is_complex", "get_device", "storage_offset",
}


@dataclass(eq=False)
class _Call:
    """A torch call of the forward pass that reads the image (``func`` None: the image itself).

    ``args``/``kwargs`` hold :class:`_Ref` where they read earlier calls' outputs; ``value`` is the clean output.
    """

    func: Callable[..., object] | None
    args: tuple
    kwargs: dict
    inputs: list[_Call]
    value: object
    users: list[_Call] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class _Ref:
    """The output of ``call`` (element ``index`` of it, for calls returning several tensors)."""

    call: _Call
    index: int | None = None


def _map(structure: object, function: Callable[[object], object]) -> object:
    """Apply ``function`` to the leaves of nested tuples, lists and dicts."""
    if isinstance(structure, tuple):
        return tuple(_map(item, function) for item in structure)
    if isinstance(structure, list):
        return [_map(item, function) for item in structure]
    if isinstance(structure, dict):
        return {key: _map(item, function) for key, item in structure.items()}
    return function(structure)


def _leaves(structure: object) -> list[object]:
    found: list[object] = []
    _map(structure, found.append)
    return found


class _Recorder(TorchFunctionMode):
    """Records, in the current thread only, the torch calls whose arguments derive from ``image``."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = _Call(None, (), {}, [], image)
        self.calls: list[_Call] = []
        self.producers: dict[int, _Ref] = {id(image): _Ref(self.image)}
        self.problem: str | None = None

    def __torch_function__(self, func: Callable[..., object], types: tuple, args: tuple = (),
                           kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs: list[_Call] = []

        def reference(value: object) -> object:
            if isinstance(value, torch.Tensor) and id(value) in self.producers:
                ref = self.producers[id(value)]
                if ref.call not in inputs:
                    inputs.append(ref.call)
                return ref
            return value

        recorded_args, recorded_kwargs = _map(args, reference), _map(kwargs, reference)
        if not inputs:
            return output  # a computation on parameters or constants only
        name = getattr(func, "__name__", "")
        if any(output is leaf for leaf in _leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)):
            if name.endswith("_") or name.startswith("__i") or kwargs.get("inplace"):
                self._report(f"it modifies activations in place ({name})")
            return output  # e.g. .contiguous() of a contiguous tensor: the same tensor, nothing to record
        if isinstance(output, torch.Tensor):
            outputs = {None: output}
        elif isinstance(output, (tuple, list)) and output and all(isinstance(o, torch.Tensor) for o in output):
            outputs = dict(enumerate(output))
        else:
            if name not in _METADATA_READS:
                self._report(f"its forward pass reads activation values ({name}), e.g. for control flow")
            return output
        call = _Call(func, recorded_args, recorded_kwargs, inputs, output)
        for source in inputs:
            source.users.append(call)
        self.calls.append(call)
        for index, tensor in outputs.items():
            self.producers[id(tensor)] = _Ref(call, index)
        return output

    def _report(self, problem: str) -> None:
        self.problem = self.problem or problem


@dataclass
class _Program:
    """The recorded forward pass: the image, the calls in order, and the network's output."""

    image: _Call
    calls: list[_Call]
    output: _Ref | None
    problem: str | None
    largest_bytes: int
    last_use: dict[_Call, int] = field(init=False)

    def __post_init__(self) -> None:
        self.last_use = {self.image: -1}
        for position, call in enumerate(self.calls):
            self.last_use.setdefault(call, position)
            for source in call.inputs:
                self.last_use[source] = position
        if self.output is not None:
            self.last_use[self.output.call] = len(self.calls)

    def replay(self, values: dict[_Call, object]) -> torch.Tensor:
        """Run the calls ``values`` does not hold yet (freeing each value after its last use); return the output."""
        values = dict(values)
        for position, call in enumerate(self.calls):
            if call not in values:
                args = _map(call.args, lambda v: _resolve(v, values))
                kwargs = _map(call.kwargs, lambda v: _resolve(v, values))
                values[call] = call.func(*args, **kwargs)
            for source in call.inputs:
                if self.last_use[source] == position:
                    values.pop(source, None)
        return _resolve(self.output, values)


def _resolve(value: object, values: dict[_Call, object]) -> object:
    if isinstance(value, _Ref):
        result = values[value.call]
        return result if value.index is None else result[value.index]
    return value


def _record(network: nn.Module, normalized: torch.Tensor) -> _Program:
    """Record the clean forward pass of ``network`` on ``normalized`` (thread-safe)."""
    recorder = _Recorder(normalized)
    with recorder:
        output = network(normalized)
    tensors = [c.value for c in recorder.calls if isinstance(c.value, torch.Tensor)] + [normalized]
    largest = max(t.numel() * t.element_size() for t in tensors)
    reference = recorder.producers.get(id(output)) if isinstance(output, torch.Tensor) else None
    problem = recorder.problem
    if reference is None and problem is None:
        problem = "its output is not a tensor computed from the image"
    return _Program(recorder.image, recorder.calls, reference, problem, largest)


# --------------------------------------------------------------------------------------------------------------
# Incremental inference
# --------------------------------------------------------------------------------------------------------------

_POINTWISE = {
    F.relu, torch.relu, torch.Tensor.relu, torch.sigmoid, torch.Tensor.sigmoid, torch.tanh, torch.Tensor.tanh,
    F.leaky_relu, F.gelu, F.silu, F.elu, F.selu, F.celu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid,
    F.softplus, F.mish, torch.add, torch.mul, torch.sub, torch.Tensor.add, torch.Tensor.mul, torch.Tensor.sub,
    torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.Tensor.__sub__, torch.Tensor.__truediv__,
}
_CONCATENATIONS = {torch.cat, torch.concat}
#: Positional parameter names of the calls whose arguments matter.
_PARAMETERS = {
    torch.conv2d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    F.max_pool2d: ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    torch.max_pool2d: ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    F.avg_pool2d: ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    F.adaptive_avg_pool2d: ("input", "output_size"),
    torch.Tensor.mean: ("input", "dim", "keepdim"),
    F.dropout: ("input", "p", "training", "inplace"),
    F.dropout2d: ("input", "p", "training", "inplace"),
    F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    torch.cat: ("tensors", "dim"),
    torch.concat: ("tensors", "dim"),
}
_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "groups": 1, "bias": None, "ceil_mode": False,
             "return_indices": False, "count_include_pad": True, "divisor_override": None, "dim": 0,
             "keepdim": False}
_TRAINING_DEFAULT = {F.dropout: True, F.dropout2d: True, F.batch_norm: False}


def _bind(call: _Call) -> dict[str, object]:
    """The call's arguments by parameter name (with the defaults that matter here)."""
    names = _PARAMETERS[call.func]
    bound = {**_DEFAULTS, **dict(zip(names, call.args, strict=False)), **call.kwargs}
    if call.func is torch.Tensor.mean and "dim" not in call.kwargs and len(call.args) < 2:
        bound["dim"] = None
    return bound


@dataclass
class _LocalOp:
    """A call computed on crops: output position g reads input positions ``[g*s - p, g*s - p + k)``.

    ``compute`` takes the input crops (padding already in them) keyed by input call. ``reduces`` marks global
    average pooling (``compute`` None): the plan updates the clean sums with the window instead, and its 1x1
    output is always worth computing that way.
    """

    node: _Call
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float
    compute: Callable[[dict[_Call, torch.Tensor]], torch.Tensor] | None
    reduces: bool = False

    @property
    def inputs(self) -> list[_Call]:
        return self.node.inputs


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (int(value[0]), int(value[1]))


def _local_op(node: _Call, input_size: tuple[int, int]) -> _LocalOp | None:
    """Describe ``node`` as a local operation, or None when it is not one (flatten, linear, reshapes...)."""

    def substituted(crops: dict[_Call, torch.Tensor]) -> tuple[tuple, dict]:
        def put(value: object) -> object:
            if isinstance(value, _Ref):
                return crops[value.call] if value.index is None else crops[value.call][value.index]
            return value

        return _map(node.args, put), _map(node.kwargs, put)

    def with_crops(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
        args, kwargs = substituted(crops)
        return node.func(*args, **kwargs)

    def first_crop(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
        return crops[node.inputs[0]]

    if any(isinstance(leaf, _Ref) and leaf.index is not None for leaf in _leaves((node.args, node.kwargs))):
        return None  # reads one output of a call with several
    pointwise = ((1, 1), (1, 1), (0, 0), 0.0)
    if node.func in _POINTWISE:
        constants = [leaf for leaf in _leaves((node.args, node.kwargs)) if isinstance(leaf, torch.Tensor)]
        if any(c.dim() >= 2 and c.shape[-2:] != (1, 1) for c in constants):
            return None  # e.g. adding a constant map that varies over space
        return _LocalOp(node, *pointwise, with_crops)
    if node.func not in _PARAMETERS:
        return None
    bound = _bind(node)
    if len(node.inputs) != 1 and node.func not in _CONCATENATIONS:
        return None
    if node.func in _CONCATENATIONS:
        return _LocalOp(node, *pointwise, with_crops) if bound["dim"] in (1, -3) else None
    if node.func in _TRAINING_DEFAULT:
        training = bound.get("training", _TRAINING_DEFAULT[node.func])
        return None if training else _LocalOp(node, *pointwise, with_crops)
    if not isinstance(bound["input"], _Ref):
        return None
    if node.func is torch.conv2d:
        weight, bias, stride, dilation, groups = (bound[k] for k in ("weight", "bias", "stride", "dilation", "groups"))
        if isinstance(weight, _Ref) or isinstance(bias, _Ref):
            return None
        kernel = _dilated(weight.shape[2:], dilation)
        padding = bound["padding"]
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(k // 2 if k % 2 else (k - 1) // 2 for k in kernel)
        padding = _pair(padding)

        def convolve(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
            return torch.conv2d(first_crop(crops), weight, bias, stride, 0, dilation, groups)

        return _LocalOp(node, kernel, _pair(stride), padding, 0.0, convolve)
    if node.func in (F.max_pool2d, torch.max_pool2d) and not bound["return_indices"]:
        kernel_size, dilation = bound["kernel_size"], bound["dilation"]
        stride = bound["stride"] if bound["stride"] not in (None, (), []) else kernel_size

        def max_pool(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
            return F.max_pool2d(first_crop(crops), kernel_size, stride, 0, dilation)

        return _LocalOp(node, _dilated(kernel_size, dilation), _pair(stride), _pair(bound["padding"]),
                        float("-inf"), max_pool)
    if node.func is F.avg_pool2d and not bound["ceil_mode"] and (
            bound["count_include_pad"] or _pair(bound["padding"]) == (0, 0)):
        kernel_size, divisor = bound["kernel_size"], bound["divisor_override"]
        stride = bound["stride"] if bound["stride"] not in (None, (), []) else kernel_size

        def average_pool(crops: dict[_Call, torch.Tensor]) -> torch.Tensor:
            return F.avg_pool2d(first_crop(crops), kernel_size, stride, 0, divisor_override=divisor)

        return _LocalOp(node, _pair(kernel_size), _pair(stride), _pair(bound["padding"]), 0.0, average_pool)
    global_mean = (node.func is F.adaptive_avg_pool2d and bound["output_size"] in (1, (1, 1), [1, 1])) or (
        node.func is torch.Tensor.mean and bound["keepdim"] and bound["dim"] is not None
        and sorted(d % 4 for d in _pair(bound["dim"])) == [2, 3])
    if global_mean:
        return _LocalOp(node, input_size, (1, 1), (0, 0), 0.0, None, reduces=True)
    return None


def _dilated(kernel_size: int | Sequence[int], dilation: int | Sequence[int]) -> tuple[int, int]:
    """The span of a dilated kernel, per axis."""
    return tuple(d * (k - 1) + 1 for d, k in zip(_pair(dilation), _pair(kernel_size), strict=True))


def _affected(start: int, stop: int, kernel: int, stride: int, padding: int, size: int) -> tuple[int, int]:
    """Output positions ``[a, b)`` whose input window ``[g*s - p, g*s - p + k)`` meets input rows ``[start, stop)``."""
    first = max(0, -(-(start + padding - kernel + 1) // stride))
    last = min(size, (stop - 1 + padding) // stride + 1)
    return first, max(first, last)


def _grid_index(tops: torch.Tensor, lefts: torch.Tensor, height: int, width: int, map_width: int) -> torch.Tensor:
    """``(B, height, width)`` flat indices ``row * map_width + col`` of windows with per-element corners."""
    rows = tops.view(-1, 1, 1) + torch.arange(height, device=tops.device).view(1, -1, 1)
    cols = lefts.view(-1, 1, 1) + torch.arange(width, device=tops.device).view(1, 1, -1)
    return rows * map_width + cols


def _gather(flat_map: torch.Tensor, map_width: int, tops: torch.Tensor, lefts: torch.Tensor, height: int,
            width: int) -> torch.Tensor:
    """``(B, height, width, C)`` windows of a map stored as ``(rows * map_width, C)``, at per-element corners."""
    index = _grid_index(tops, lefts, height, width, map_width).reshape(-1)
    return flat_map.index_select(0, index).view(len(tops), height, width, -1)


def _scatter(target: torch.Tensor, windows: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """Write ``windows[i]`` (``(B, C, h, w)``) into ``target[i]`` (``(B, H, W, C)``) at ``(rows[i], cols[i])``.

    The parts of a window that fall outside the target are dropped.
    """
    batch, height, width, channels = target.shape
    size_h, size_w = windows.shape[2:]
    target_rows = rows.view(-1, 1) + torch.arange(size_h, device=rows.device).view(1, -1)  # (B, h)
    target_cols = cols.view(-1, 1) + torch.arange(size_w, device=cols.device).view(1, -1)  # (B, w)
    batch_offset = torch.arange(batch, device=rows.device).view(-1, 1, 1) * (height * width)
    index = (batch_offset + target_rows[:, :, None] * width + target_cols[:, None, :]).reshape(-1)
    values = windows.permute(0, 2, 3, 1).reshape(-1, channels)
    inside_rows = (target_rows >= 0) & (target_rows < height)
    inside_cols = (target_cols >= 0) & (target_cols < width)
    inside = (inside_rows[:, :, None] & inside_cols[:, None, :]).reshape(-1)
    if not bool(inside.all()):
        index, values = index[inside], values[inside]
    target.view(-1, channels).index_copy_(0, index, values)


def _flat(feature_map: torch.Tensor) -> torch.Tensor:
    """A single ``(1, C, H, W)`` map as ``(H * W, C)`` rows (contiguous)."""
    return feature_map[0].permute(1, 2, 0).reshape(-1, feature_map.shape[1]).contiguous()


Span = tuple[int, int]  # positions [a, b) along one axis


class _IncrementalPlan:
    """Which recorded calls are recomputed on windows, the windows' sizes and corners, and the clean maps.

    Spans are separable: the rows a call recomputes depend only on the patch's rows. So the plan tabulates, per
    call, the window corner for every distinct patch row span (and column span) of the boxes it was built for.
    """

    def __init__(self, program: _Program) -> None:
        self.program = program
        self.reason: str | None = program.problem
        self.clean: dict[_Call, object] = {}
        self.ops: list[_LocalOp] = []
        self.sizes: dict[_Call, tuple[int, int]] = {}
        self.corners: dict[_Call, tuple[dict[Span, int], dict[Span, int]]] = {}
        self.frontier: list[_Call] = []
        self.padded: dict[tuple[_Call, _Call], tuple[torch.Tensor, int]] = {}
        self.sums: dict[_Call, tuple[torch.Tensor, torch.Tensor]] = {}  # global pooling: clean sums, summed areas
        self.work_fraction = 1.0
        self.bytes_per_image = 0
        self.layout = _CHANNELS_LAST  # of the full-size maps handed to the rest of the network

    @classmethod
    def build(cls, program: _Program, fill_normalized: torch.Tensor, boxes: list[Box], test_boxes: list[Box],
              reference: torch.Tensor) -> _IncrementalPlan:
        """Choose what to recompute for ``boxes``, then check the plan against the network.

        ``reference`` holds the network's logits for ``test_boxes`` (some of ``boxes``).
        """
        plan = cls(program)
        if plan.reason is not None:
            return plan
        plan.clean = {call: call.value.contiguous(memory_format=_CHANNELS_LAST)
                      if isinstance(call.value, torch.Tensor) and call.value.dim() == 4 else call.value
                      for call in [program.image, *program.calls]}
        plan._select(boxes)
        problem = ""
        for layout in (_CHANNELS_LAST, torch.contiguous_format):
            plan.layout = layout
            reproduced, problem = _reproduces(lambda: plan.run(fill_normalized, test_boxes), reference)
            if reproduced:
                return plan
        plan.reason = f"recomputing windows did not reproduce the network on two test patches{problem}"
        return plan

    def _shape(self, node: _Call) -> tuple[int, int]:
        return tuple(self.clean[node].shape[2:])

    def _select(self, boxes: list[Box]) -> None:
        """Pick the calls to compute on windows and their window sizes; estimate the fraction of work left."""
        image = self.program.image
        rows = {image: {span: span for span in {(b[0], b[1]) for b in boxes}}}
        cols = {image: {span: span for span in {(b[2], b[3]) for b in boxes}}}
        self._accept(image, rows, cols)
        total_work = remaining_work = 0.0
        full_bytes = window_bytes = 0
        for node in self.program.calls:
            value = self.clean[node]
            if not isinstance(value, torch.Tensor):
                continue
            work = float(value.numel()) * _work_per_output(node)
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
                    if not op.reduces:
                        crop_h, crop_w = ((n - 1) * s + k for n, s, k in zip(size, op.stride, op.kernel, strict=True))
                        window_bytes = max(window_bytes, value.element_size() * value.shape[1] * crop_h * crop_w)
                    continue
                del self.sizes[node], self.corners[node]
            remaining_work += work
            full_bytes = max(full_bytes, value.numel() * value.element_size())
        for op in self.ops:
            if op.reduces:  # summed-area table of the clean map: window sums in four look-ups
                clean = self.clean[op.inputs[0]][0].double()
                table = F.pad(clean.cumsum(1).cumsum(2), (1, 0, 1, 0))
                self.sums[op.node] = (clean.sum(dim=(1, 2)), table)
            for source in op.inputs:
                if not op.reduces:
                    self.padded[(source, op.node)] = self._padded_clean(source, op)
        output = self.program.output.call
        self.frontier = [n for n in self.sizes if n is output or any(user not in self.sizes for user in n.users)]
        full_bytes = max([full_bytes] + [self.clean[n].numel() * self.clean[n].element_size() for n in self.frontier])
        self.work_fraction = remaining_work / max(total_work, 1.0)
        self.bytes_per_image = 2 * max(full_bytes, window_bytes)

    def _accept(self, node: _Call, rows: dict[_Call, dict[Span, Span]],
                cols: dict[_Call, dict[Span, Span]]) -> tuple[int, int]:
        """Window size (the longest span) and window corners of ``node`` (windows stay inside the map)."""
        height, width = self._shape(node)
        size = (max(1, *(b - a for a, b in rows[node].values())), max(1, *(b - a for a, b in cols[node].values())))
        self.sizes[node] = size
        self.corners[node] = ({key: min(a, height - size[0]) for key, (a, _) in rows[node].items()},
                              {key: min(a, width - size[1]) for key, (a, _) in cols[node].items()})
        return size

    def _local_op(self, node: _Call) -> _LocalOp | None:
        """``node`` as a local operation on calls already computed on windows, or None."""
        if not node.inputs or not all(n in self.sizes and self.clean[n].dim() == 4 for n in node.inputs):
            return None
        if self.clean[node].dim() != 4:
            return None
        op = _local_op(node, self._shape(node.inputs[0]))
        if op is not None and op.kernel == (1, 1) and any(self._shape(n) != self._shape(node) for n in node.inputs):
            return None  # e.g. an element-wise sum that broadcasts over space
        return op

    def _padded_clean(self, source: _Call, op: _LocalOp) -> tuple[torch.Tensor, int]:
        """The clean input map of ``op`` padded with its padding value so every crop fits inside: flat, and width."""
        out_height, out_width = self._shape(op.node)
        in_height, in_width = self._shape(source)
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        bottom = max(0, (out_height - 1) * sh - ph + kh - in_height)
        right = max(0, (out_width - 1) * sw - pw + kw - in_width)
        padded = F.pad(self.clean[source], (pw, right, ph, bottom), value=op.pad_value)
        return _flat(padded), padded.shape[3]

    def run(self, fill_normalized: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
        """Logits of the occluded images for ``boxes`` (a subset of the boxes the plan was built for)."""
        row_keys = [(b[0], b[1]) for b in boxes]
        col_keys = [(b[2], b[3]) for b in boxes]
        corners = {node: (torch.tensor([row_corners[k] for k in row_keys]),
                          torch.tensor([col_corners[k] for k in col_keys]))
                   for node, (row_corners, col_corners) in self.corners.items()}
        image = self.program.image
        values = {image: self._input_window(fill_normalized, boxes, corners[image])}
        for op in self.ops:
            if op.reduces:
                source = op.inputs[0]
                values[op.node] = self._window_mean(op, values[source], corners[source])
                continue
            crops = {source: self._input_crop(source, op, corners[op.node], values[source], corners[source])
                     for source in op.inputs}
            values[op.node] = op.compute(crops)
        environment: dict[_Call, object] = dict.fromkeys(self.sizes)
        for node in self.frontier:
            clean = self.clean[node]
            full = _flat(clean).repeat(len(boxes), 1).view(len(boxes), *clean.shape[2:], clean.shape[1])
            _scatter(full, values[node], *corners[node])
            environment[node] = full.permute(0, 3, 1, 2).contiguous(memory_format=self.layout)
        return self.program.replay(environment)

    def _window_mean(self, op: _LocalOp, windows: torch.Tensor, corners: tuple[torch.Tensor, torch.Tensor]
                     ) -> torch.Tensor:
        """Global average of the occluded maps: the clean sum, minus the clean windows' sums, plus the windows'."""
        total, table = self.sums[op.node]
        tops, lefts = corners
        height, width = windows.shape[2:]
        bottoms, rights = tops + height, lefts + width
        clean_windows = (table[:, bottoms, rights] - table[:, tops, rights] - table[:, bottoms, lefts]
                         + table[:, tops, lefts]).T  # (B, C)
        sums = total - clean_windows + windows.sum(dim=(2, 3), dtype=torch.float64)
        return (sums / (op.kernel[0] * op.kernel[1])).to(windows.dtype)[:, :, None, None]

    def _input_window(self, fill: torch.Tensor, boxes: list[Box],
                      corners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The occluded images inside the image's windows."""
        image = self.program.image
        height, width = self.sizes[image]
        tops, lefts = corners
        clean = self.clean[image]
        map_width = clean.shape[3]
        clean_windows = _gather(_flat(clean), map_width, tops, lefts, height, width)
        fill_windows = _gather(_flat(fill), map_width, tops, lefts, height, width)
        rows = torch.arange(height).view(1, height) + tops.view(-1, 1)
        cols = torch.arange(width).view(1, width) + lefts.view(-1, 1)
        box = torch.tensor(boxes)
        inside_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])
        inside_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])
        inside = (inside_rows[:, :, None, None] & inside_cols[:, None, :, None]).to(clean.device)
        return torch.where(inside, fill_windows, clean_windows).permute(0, 3, 1, 2)

    def _input_crop(self, source: _Call, op: _LocalOp, corners: tuple[torch.Tensor, torch.Tensor],
                    source_values: torch.Tensor, source_corners: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """What ``op`` reads of ``source``'s occluded map for its windows: the clean map with the new window pasted."""
        (size_h, size_w), (kh, kw), (sh, sw) = self.sizes[op.node], op.kernel, op.stride
        height, width = (size_h - 1) * sh + kh, (size_w - 1) * sw + kw
        tops, lefts = corners[0] * sh, corners[1] * sw  # in the coordinates of the padded clean map
        if op.padding == (0, 0) and (height, width) == self.sizes[source] and torch.equal(
                tops, source_corners[0]) and torch.equal(lefts, source_corners[1]):
            return source_values  # e.g. a point-wise op reading exactly the window below
        padded, padded_width = self.padded[(source, op.node)]
        crops = _gather(padded, padded_width, tops, lefts, height, width)
        _scatter(crops, source_values, source_corners[0] + op.padding[0] - tops,
                 source_corners[1] + op.padding[1] - lefts)
        return crops.permute(0, 3, 1, 2)


def _propagate(op: _LocalOp, axis: int, spans: dict[_Call, dict[Span, Span]], size: int) -> dict[Span, Span]:
    """Affected output span of ``op`` along ``axis`` per patch span (the hull of its inputs' spans)."""
    keys = spans[op.inputs[0]].keys()
    result = {}
    for key in keys:
        start = min(spans[n][key][0] for n in op.inputs)
        stop = max(spans[n][key][1] for n in op.inputs)
        result[key] = _affected(start, stop, op.kernel[axis], op.stride[axis], op.padding[axis], size)
    return result


def _work_per_output(node: _Call) -> float:
    """Rough multiply-adds per output element (convolutions and linear layers dominate; others count 1)."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if node.func is torch.conv2d and isinstance(weight, torch.Tensor):
        return float(weight[0].numel())
    if node.func is F.linear and isinstance(weight, torch.Tensor):
        return float(weight.shape[1])
    return 1.0
