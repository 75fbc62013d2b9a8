"""Occlusion sensitivity (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks", sec. 4.2).

Slide a patch (grey, black, the image mean or a blurred copy of the image) over the image, record the target
class probability at every position and draw the drop as a heatmap: where hiding the pixels costs probability,
the network was looking. Lecture: ``lectures/03_occlusion.ipynb``.

Patch positions: top-left corners ``0, stride, 2*stride, ...`` in each direction. With ``edges="shift"`` (the
default) the last patch is moved back to ``side - patch_size`` when the stride does not land there, so every
patch is whole and the last row and column of the image are covered. ``edges="clip"`` instead keeps stepping
until the border is reached and cuts the last patch off at the border, as Captum's ``Occlusion`` does.

Speed. ``method="naive"`` runs one occluded image per forward pass (the reference). ``method="batched"`` runs many
per forward pass (channels-last, which CPU convolutions prefer). ``method="incremental"`` recomputes only each
patch's cone of influence with the exact incremental-inference engine of :mod:`viztools.incremental`; networks it
cannot serve fall back to batching. Every method equals the naive loop up to float rounding; ``method="auto"``
picks incremental inference when it saves at least 20% of the multiply-adds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from viztools._validation import check_choice, check_float, check_image, check_int, check_model, check_stop_callback
from viztools.data import gaussian_blur, to_numpy_image
from viztools.incremental import IncrementalInference
from viztools.models import VizModel

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FILLS = ("grey", "black", "mean", "blur")
METHODS = ("auto", "incremental", "batched", "naive")
KINDS = ("drop", "probability")
EDGES = ("shift", "clip")

#: ``method="auto"`` uses incremental inference when it leaves at most this fraction of the multiply-adds.
AUTO_MAX_WORK_FRACTION = 0.8
#: Activation memory (bytes) one batch of occluded images may use when ``batch_size`` is None.
MEMORY_BUDGET = 256 * 2**20
#: Largest automatic batch: larger ones ran slower here (their working sets fall out of the CPU caches).
MAX_BATCH_SIZE = 32

Box = tuple[int, int, int, int]  # top, bottom, left, right (exclusive ends)
Evaluator = Callable[[list[Box]], torch.Tensor]


@dataclass(frozen=True)
class OcclusionProgress:
    """What ``should_stop`` is called with: ``done`` of ``total`` patch positions evaluated so far."""

    done: int
    total: int


StopCallback = Callable[[OcclusionProgress], bool | None]


class OcclusionCancelled(RuntimeError):  # noqa: N818 - the name the widgets and exercises use
    """Raised when ``should_stop(progress)`` returned True; ``done`` of ``total`` patch positions were evaluated."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"Occlusion cancelled by should_stop() after {done} of {total} patch positions.")
        self.done = done
        self.total = total


def patch_geometry(patch_size: int | None, stride: int | None, height: int, width: int) -> tuple[int, int]:
    """``(patch_size, stride)`` in pixels for a ``height x width`` image: None picks the default, others are checked.

    The one check of these two options (every occlusion entry point and the widget use it).
    """
    side = min(check_int(height, "height", low=1), check_int(width, "width", low=1))
    if patch_size is None:
        patch_size = default_patch_size(side)
    patch_size = check_int(patch_size, "patch_size", low=1, high=side)  # the message names the range: [1, side]
    stride = default_stride(side) if stride is None else check_int(stride, "stride", low=1)
    return patch_size, stride


def patch_starts(side: int, patch_size: int, stride: int, edges: str = "shift") -> tuple[int, ...]:
    """Top-left coordinates of the patches along one side (see the module docstring for ``edges``)."""
    patch_size, stride = patch_geometry(patch_size, stride, side, side)
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
    ``image`` is the ``(1, 3, H, W)`` pixel image the map was computed on (what :func:`plot_occlusion` draws).
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
    image: torch.Tensor | None = field(default=None, repr=False, compare=False)

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
    pixels = torch.arange(side, device="cpu")
    begin = torch.tensor(starts, device="cpu").unsqueeze(1)
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
    should_stop: StopCallback | None = None,
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
            a Gaussian-blurred copy of the image, :func:`viztools.data.gaussian_blur` with sigma ``blur_sigma``,
            default ``patch_size / 4``).
        batch_size: occluded images per forward pass; None sizes batches to ``MEMORY_BUDGET``.
        method: ``"incremental"`` (recompute only the patch's cone of influence, :mod:`viztools.incremental`),
            ``"batched"``, ``"naive"`` (one image per forward pass, the reference) or ``"auto"`` (incremental where
            it saves work).
        should_stop: called as ``should_stop(OcclusionProgress(done, total))`` (patch positions) before the set-up
            and after every batch; returning True raises :class:`OcclusionCancelled` (None counts as False, so
            ``print`` shows progress).
        edges: ``"shift"`` or ``"clip"``: where the last patch of a row or column goes (module docstring).
    """
    model = check_model(model)
    pixels = check_image(image, "image", pixels=True, model=model)
    options = _check_options(pixels, patch_size, stride, fill, batch_size, method, edges, blur_sigma)
    return _run_occlusion(model, pixels, target, options, check_stop_callback(should_stop))


def occlusion_coarse_to_fine(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None = None,
    *,
    patch_size: int | None = None,
    stride: int | None = None,
    fill: str = "grey",
    coarse_stride: int | None = None,
    batch_size: int | None = None,
    method: str = "auto",
    should_stop: StopCallback | None = None,
    edges: str = "shift",
    blur_sigma: float | None = None,
) -> Iterator[OcclusionResult]:
    """Yield a quick coarse occlusion map, then the full-resolution one (for responsive widgets).

    The coarse pass uses ``coarse_stride`` (default: the smallest multiple of ``stride`` that is at least
    ``patch_size``, i.e. patches that barely overlap); the fine pass reuses every coarse position it shares.
    ``should_stop`` gets patch positions counted over both passes. The other options are those of
    :func:`occlusion`; all arguments are checked when the function is called.
    """
    model = check_model(model)
    pixels = check_image(image, "image", pixels=True, model=model)
    fine = _check_options(pixels, patch_size, stride, fill, batch_size, method, edges, blur_sigma)
    if coarse_stride is None:
        coarse_stride = fine.stride * math.ceil(fine.patch_size / fine.stride)
    coarse = dataclasses.replace(fine, stride=check_int(coarse_stride, "coarse_stride", low=1))
    target = model.resolve_target(target, pixels)
    return _coarse_to_fine(model, pixels, target, coarse, fine, check_stop_callback(should_stop))


def plot_occlusion(
    result: OcclusionResult,
    image: torch.Tensor | None = None,
    *,
    ax: Axes | None = None,
    kind: str = "drop",
    alpha: float = 0.5,
    title: str | None = None,
    limit: float | None = None,
    colorbar: bool = True,
) -> Figure:
    """Overlay ``result.heatmap(kind)`` on the image (default: ``result.image``) with a colour bar.

    ``"drop"`` uses a diverging map centred on 0 (red: occluding there lowers the target probability) over
    ``[-limit, limit]`` (default: this map's largest absolute drop; pass one ``limit`` to several maps to compare
    them on one scale), ``"probability"`` a sequential map over [0, 1]. ``colorbar=False`` leaves the colour bar
    out (draw one for several maps with ``figure.colorbar(ax.images[-1], ax=axes)``). Draws on ``ax`` and returns
    its figure, or makes a new :class:`matplotlib.figure.Figure` (not registered with pyplot) when ``ax`` is None.
    """
    from matplotlib.figure import Figure

    check_choice(kind, "kind", KINDS)
    alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
    if limit is not None:
        limit = check_float(limit, "limit", low=0.0, low_inclusive=False)
    if image is None:
        image = result.image
        if image is None:
            raise ValueError("This occlusion result does not carry its image; pass it: plot_occlusion(result, image).")
    pixels = check_image(image)
    if tuple(pixels.shape[2:]) != tuple(result.image_size):
        raise ValueError(
            f"image is {tuple(pixels.shape[2:])} but the occlusion result was computed for {result.image_size}; "
            "pass the image the result was computed on."
        )
    if ax is None:
        ax = Figure(figsize=(5, 4)).add_subplot()
    figure = ax.figure
    heat = result.heatmap(kind).numpy()
    ax.imshow(to_numpy_image(pixels))
    if kind == "drop":
        limit = limit if limit is not None else float(abs(result.drop).max()) or 1.0
        overlay = ax.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=alpha)
        label = "drop in target probability"
    else:
        overlay = ax.imshow(heat, cmap="viridis", vmin=0.0, vmax=1.0, alpha=alpha)
        label = "target probability"
    if colorbar:
        figure.colorbar(overlay, ax=ax, label=label)
    ax.set_axis_off()
    ax.set_title(title if title is not None else
                 f"Occlusion: class {result.target}, p = {result.baseline:.2f}\n"
                 f"{result.fill} patch {result.patch_size} px, stride {result.stride} px")
    return figure


# --------------------------------------------------------------------------------------------------------------
# Driver shared by all methods
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    """The checked options of one occlusion map."""

    patch_size: int
    stride: int
    fill: str
    batch_size: int | None
    method: str
    edges: str
    blur_sigma: float


def _check_options(pixels: torch.Tensor, patch_size: int | None, stride: int | None, fill: str,
                   batch_size: int | None, method: str, edges: str, blur_sigma: float | None) -> _Options:
    patch_size, stride = patch_geometry(patch_size, stride, *pixels.shape[2:])
    if blur_sigma is None:
        blur_sigma = max(patch_size / 4, 0.5)
    return _Options(
        patch_size=patch_size,
        stride=stride,
        fill=check_choice(fill, "fill", FILLS),
        batch_size=None if batch_size is None else check_int(batch_size, "batch_size", low=1),
        method=check_choice(method, "method", METHODS),
        edges=check_choice(edges, "edges", EDGES),
        blur_sigma=check_float(blur_sigma, "blur_sigma", low=0.0, low_inclusive=False),
    )


def _coarse_to_fine(model: VizModel, pixels: torch.Tensor, target: int, coarse: _Options,
                    fine: _Options, should_stop: StopCallback | None) -> Iterator[OcclusionResult]:
    height, width = pixels.shape[2:]
    coarse_rows = patch_starts(height, coarse.patch_size, coarse.stride, coarse.edges)
    coarse_cols = patch_starts(width, coarse.patch_size, coarse.stride, coarse.edges)
    fine_rows = patch_starts(height, fine.patch_size, fine.stride, fine.edges)
    fine_cols = patch_starts(width, fine.patch_size, fine.stride, fine.edges)
    coarse_count = len(coarse_rows) * len(coarse_cols)
    reused = len(set(coarse_rows) & set(fine_rows)) * len(set(coarse_cols) & set(fine_cols))
    total = coarse_count + len(fine_rows) * len(fine_cols) - reused

    first = _run_occlusion(model, pixels, target, coarse, should_stop, total=total)
    yield first
    known = {(r, c): float(first.probability[i, j])
             for i, r in enumerate(first.row_starts) for j, c in enumerate(first.col_starts)}
    yield _run_occlusion(model, pixels, target, fine, should_stop, known=known,
                         offset=coarse_count - reused, total=total)


def _run_occlusion(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None,
    options: _Options,
    should_stop: StopCallback | None,
    *,
    known: dict[tuple[int, int], float] | None = None,
    offset: int = 0,
    total: int | None = None,
) -> OcclusionResult:
    """One map. ``known``: probabilities of positions already evaluated; ``should_stop`` sees ``offset + done``
    of ``total`` positions (default: this map's), so that two passes count as one job."""
    pixels = image.to(device=_device(model.network), dtype=torch.float32)
    height, width = pixels.shape[2:]
    target = model.resolve_target(target, pixels)
    patch_size = options.patch_size
    row_starts = patch_starts(height, patch_size, options.stride, options.edges)
    col_starts = patch_starts(width, patch_size, options.stride, options.edges)
    fill_pixels = _fill_pixels(pixels, options.fill, options.blur_sigma)
    boxes = [(r, min(r + patch_size, height), c, min(c + patch_size, width)) for r in row_starts for c in col_starts]
    total = len(boxes) if total is None else total

    def poll(done: int) -> None:
        if should_stop is not None and should_stop(OcclusionProgress(offset + done, total)):
            raise OcclusionCancelled(offset + done, total)

    with torch.inference_mode():
        baseline = float(_target_probability(model(pixels), target)[0])
        values = torch.full((len(boxes),), float("nan"), device="cpu")  # the map, filled batch by batch
        pending = []
        for index, (top, bottom, left, right) in enumerate(boxes):
            if known is not None and (top, left) in known:
                values[index] = known[(top, left)]
            elif torch.equal(pixels[..., top:bottom, left:right], fill_pixels[..., top:bottom, left:right]):
                values[index] = baseline  # the patch changes nothing: the occluded image is the clean image
            else:
                pending.append(index)

        done = len(boxes) - len(pending)
        poll(done)
        used_method = "none"  # when every position is known or a no-op
        if pending:
            evaluate, used_method, batch_size = _choose_evaluator(model, pixels, fill_pixels, target, options.method,
                                                                  [boxes[i] for i in pending])
            if options.batch_size is not None and used_method != "naive":
                batch_size = options.batch_size
            for first in range(0, len(pending), batch_size):
                chunk = pending[first:first + batch_size]
                values[chunk] = evaluate([boxes[i] for i in chunk]).float().cpu()
                done += len(chunk)
                poll(done)

    return OcclusionResult(
        probability=values.view(len(row_starts), len(col_starts)),
        baseline=baseline,
        target=target,
        patch_size=patch_size,
        stride=options.stride,
        fill=options.fill,
        image_size=(height, width),
        row_starts=row_starts,
        col_starts=col_starts,
        method=used_method,
        image=image.detach().cpu(),
    )


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


def _occluded_batch(normalized: torch.Tensor, fill_normalized: torch.Tensor, boxes: list[Box],
                    memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """The occluded (normalized) images; channels-last by default, the layout CPU convolutions run fastest on."""
    batch = torch.empty((len(boxes), *normalized.shape[1:]), memory_format=memory_format, device=normalized.device)
    batch.copy_(normalized.expand_as(batch))
    for i, (top, bottom, left, right) in enumerate(boxes):
        batch[i, :, top:bottom, left:right] = fill_normalized[0, :, top:bottom, left:right]
    return batch


def _batch_layout(network: nn.Module, normalized: torch.Tensor, fill_normalized: torch.Tensor,
                  boxes: list[Box]) -> torch.memory_format:
    """Channels-last unless it changes the network's output on two test patches (e.g. a ``.view()`` breaks)."""
    test_boxes = (boxes * 2)[:2]
    reference = network(_occluded_batch(normalized, fill_normalized, test_boxes, torch.contiguous_format))
    try:
        logits = network(_occluded_batch(normalized, fill_normalized, test_boxes))
    except (RuntimeError, ValueError, TypeError, IndexError):  # e.g. .view() of a channels-last activation
        return torch.contiguous_format
    tolerance = 1e-4 * (1.0 + float(reference.abs().max()))  # float rounding grows with the logits' scale
    same = logits.shape == reference.shape and bool((logits - reference).abs().max() <= tolerance)
    return torch.channels_last if same else torch.contiguous_format


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
    layout = _batch_layout(network, normalized, fill_normalized, boxes)

    def batched(chunk: list[Box]) -> torch.Tensor:
        return _target_probability(network(_occluded_batch(normalized, fill_normalized, chunk, layout)), target)

    engine = IncrementalInference(network, normalized, fill_normalized, boxes)  # its recording also sizes batches
    batched_size = _batch_size_for(engine.forward_bytes_per_image)
    if method == "incremental" and engine.reason is not None:
        raise ValueError(f"method='incremental' cannot handle this model: {engine.reason}. Use method='auto' "
                         "(falls back to batching) or method='batched'.")
    if method == "batched" or engine.reason is not None or (
            method == "auto" and engine.work_fraction > AUTO_MAX_WORK_FRACTION):
        return batched, "batched", batched_size

    def incremental(chunk: list[Box]) -> torch.Tensor:
        return _target_probability(engine(chunk), target)

    return incremental, "incremental", _batch_size_for(engine.bytes_per_image)


def _batch_size_for(bytes_per_image: int) -> int:
    return max(1, min(MAX_BATCH_SIZE, MEMORY_BUDGET // max(1, bytes_per_image)))
