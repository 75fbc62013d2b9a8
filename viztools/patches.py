"""Maximally activating image patches: what makes one unit of a trained CNN fire (lecture "01_patches_and_filters").

For a channel of a layer, stream a data set through the network, keep the k images in which the channel's
strongest unit fires most, and crop each to that unit's receptive field, as in Zeiler & Fergus, "Visualizing and
Understanding Convolutional Networks" (2014) and Girshick et al., "Rich feature hierarchies" (2014, pool5 units).
Memory stays bounded: each batch's activations are reduced to one value per (image, channel) and dropped, and a
running top-k is merged per batch, so the data set and its activations are never held at once.

Images can come from a pixel tensor ``(N, 3, H, W)``, a map-style data set such as
:class:`viztools.glyphworld.GlyphWorld`, a folder of image files, or :class:`viztools.data.PhotoCrops` (random
crops of the example photographs); :class:`viztools.data.ImageSource` reads them all.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from viztools._validation import check_int, check_model
from viztools.data import ImageSource
from viztools.hooks import (
    get_activations,
    layer_output_shape,
    receptive_field,
    receptive_field_geometry,
)
from viztools.models import VizModel
from viztools.plotting import show_images

# --------------------------------------------------------------------------------------------------------------
# Top activating patches
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PatchesResult:
    """The top-k images of one channel (or one unit) and the patches its strongest unit sees.

    Attributes:
        layer: the layer as given; channel: the channel.
        position: the requested unit ``(row, col)``, or None when each image's strongest position was used.
        values: ``(k,)`` activations, descending.
        image_indices: ``(k,)`` indices into the image collection (one patch per image).
        positions: the unit ``(row, col)`` in the layer's map for each patch; None entries for layers
            without spatial positions (e.g. fully connected), whose "patch" is the whole image.
        boxes: input ``(rows, cols)`` slices of each unit's receptive field, clipped to the image.
        patches: the cropped pixels ``(3, h, w)``; border units give smaller (clipped) patches.
    """

    layer: str
    channel: int
    position: tuple[int, int] | None
    values: torch.Tensor
    image_indices: torch.Tensor
    positions: list[tuple[int, int] | None]
    boxes: list[tuple[slice, slice]]
    patches: list[torch.Tensor]


_field_caches: weakref.WeakKeyDictionary[VizModel, dict] = weakref.WeakKeyDictionary()


def _clipped_field(
    model: VizModel, layer: str, position: tuple[int, int], height: int, width: int
) -> tuple[slice, slice]:
    """Receptive field of one unit for a ``height`` x ``width`` image, cached per (model, layer, position, size).

    :func:`viztools.hooks.receptive_field` works on a square; the field of unit ``(row, col)`` is anchored at the
    top-left, so a non-square image uses the square of its longer side and clips the box to the image.
    """
    cache = _field_caches.setdefault(model, {})
    key = (model.layer_path(layer), position, height, width)
    if key not in cache:
        size = max(height, width)
        fields = _field_rule(model, layer, size)
        rows, cols = fields(position) if fields is not None else receptive_field(model, layer, position, size=size)
        cache[key] = (slice(rows.start, min(rows.stop, height)), slice(cols.start, min(cols.stop, width)))
    return cache[key]


def _field_rule(model: VizModel, layer: str, size: int) -> Callable[[tuple[int, int]], tuple[slice, slice]] | None:
    """Every unit's field from the layer's geometry in one multiplication, instead of one probe pass per unit.

    The geometry (:func:`viztools.hooks.receptive_field_geometry`) is clipped to the pixels the last unit still
    sees (a stride that does not divide the image leaves its last rows unseen), and used only where it
    reproduces the exact probe at the four corners and the centre of a ``size`` image; else None (probe each
    unit). Cached per layer and size.
    """
    cache = _field_caches.setdefault(model, {})
    key = ("rule", model.layer_path(layer), size)
    if key not in cache:
        cache[key] = None
        try:
            geometry = receptive_field_geometry(model, layer)
        except ValueError:
            return None
        _, rows, cols = layer_output_shape(model, layer, size)
        last_rows, last_cols = receptive_field(model, layer, (rows - 1, cols - 1), size=size)

        def fields(unit: tuple[int, int]) -> tuple[slice, slice]:
            unclipped_rows, unclipped_cols = geometry.box(*unit, size)
            return (slice(unclipped_rows.start, min(unclipped_rows.stop, last_rows.stop)),
                    slice(unclipped_cols.start, min(unclipped_cols.stop, last_cols.stop)))

        corners = {(0, 0), (rows - 1, 0), (0, cols - 1), (rows - 1, cols - 1), (rows // 2, cols // 2)}
        if all(fields(unit) == receptive_field(model, layer, unit, size=size) for unit in corners):
            cache[key] = fields
    return cache[key]


def _check_position(position: object) -> tuple[int, int] | None:
    if position is None:
        return None
    if not isinstance(position, (tuple, list)) or len(position) != 2:
        raise ValueError(f"position must be a (row, col) pair or None; got {position!r}.")
    return check_int(position[0], "position row", low=0), check_int(position[1], "position col", low=0)


def _channel_values(
    activations: torch.Tensor, channels: list[int], position: tuple[int, int] | None, layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: the value of the chosen (or strongest) unit and its flat position, both ``(B, m)``."""
    if activations.dim() not in (2, 4):
        raise ValueError(
            f"Layer {layer!r} outputs shape {tuple(activations.shape)}; top patches need (N, C, H, W) or (N, C)."
        )
    count = activations.shape[1]
    for channel in channels:
        check_int(channel, f"channel of layer {layer!r} (it has {count} channels)", low=0, high=count - 1)
    selected = activations[:, channels]
    if selected.dim() == 2:
        if position is not None:
            raise ValueError(f"Layer {layer!r} has no spatial positions (shape {tuple(activations.shape)}); use "
                             "position=None.")
        return selected, torch.zeros_like(selected, dtype=torch.long)
    height, width = selected.shape[2:]
    if position is None:
        return selected.flatten(2).max(dim=2)
    row, col = position
    if row >= height or col >= width:
        raise ValueError(f"position {position} is outside layer {layer!r}'s {height}x{width} map; "
                         f"use rows 0..{height - 1} and cols 0..{width - 1}.")
    values = selected[:, :, row, col]
    return values, torch.full_like(values, row * width + col, dtype=torch.long)


def _running_top_k(
    source: ImageSource,
    model: VizModel,
    layer: str,
    channels: list[int],
    k: int,
    position: tuple[int, int] | None,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...], tuple[int, int]]:
    """Stream the images; return top values, image indices, flat positions (each ``(m, k)``), map and image shape.

    Ties keep the earlier image (a stable sort over candidates kept in image order).
    """
    top_values = top_images = top_positions = None
    map_shape: tuple[int, ...] = ()
    image_shape = (0, 0)
    for start, pixels, _ in source.batches(batch_size):
        if start and tuple(pixels.shape[2:]) != image_shape:
            raise ValueError(f"All images must have the same size; image {start} is {tuple(pixels.shape[2:])}, "
                             f"earlier ones {image_shape}. Resize them (viztools.load_image(..., size=...)).")
        activations = get_activations(model, pixels, [layer])[layer]
        map_shape, image_shape = tuple(activations.shape[2:]), tuple(pixels.shape[2:])
        values, flat_positions = _channel_values(activations, channels, position, layer)
        del activations  # only (B, m) numbers survive a batch
        images = torch.arange(start, start + len(pixels), device=values.device).expand(len(channels), -1)
        if top_values is None:
            candidates = values.T, images, flat_positions.T
        else:
            candidates = (torch.cat([top_values, values.T], 1), torch.cat([top_images, images], 1),
                          torch.cat([top_positions, flat_positions.T], 1))
        order = torch.sort(candidates[0], dim=1, descending=True, stable=True).indices[:, :k]
        top_values, top_images, top_positions = (c.gather(1, order) for c in candidates)
    return top_values, top_images, top_positions, map_shape, image_shape


def top_activating_patches_grid(
    model: VizModel,
    images: object,
    *,
    layer: str,
    channels: Sequence[int],
    k: int = 9,
    position: tuple[int, int] | None = None,
    batch_size: int = 128,
) -> list[PatchesResult]:
    """Top-k patches for several channels of one layer in a single pass over the images (the lecture's grid).

    See :func:`top_activating_patches`; returns one :class:`PatchesResult` per channel, in the given order.
    """
    model = check_model(model)
    if isinstance(channels, int) or not isinstance(channels, Sequence) or not channels:
        raise ValueError(f"channels must be a non-empty list of channel indices; got {channels!r}.")
    channels = [check_int(c, "channel", low=0) for c in channels]
    position = _check_position(position)
    model.layer_path(layer)  # unknown layer: fail before reading any image
    source = ImageSource(images, size=model.input_size)
    k = check_int(k, f"k (at most the number of images, {len(source)})", low=1, high=len(source))
    values, image_indices, flat_positions, map_shape, (height, width) = _running_top_k(
        source, model, layer, channels, k, position, batch_size
    )
    pixels_of: dict[int, torch.Tensor] = {}
    results = []
    for row, channel in enumerate(channels):
        positions: list[tuple[int, int] | None] = []
        boxes, patches = [], []
        for index, flat in zip(image_indices[row].tolist(), flat_positions[row].tolist(), strict=True):
            if map_shape:
                unit = divmod(flat, map_shape[1])
                box = _clipped_field(model, layer, unit, height, width)
            else:
                unit, box = None, (slice(0, height), slice(0, width))
            if index not in pixels_of:
                pixels_of[index] = source.image(index).float()
            positions.append(unit)
            boxes.append(box)
            patches.append(pixels_of[index][:, box[0], box[1]].clone())
        results.append(PatchesResult(layer, channel, position, values[row].clone(), image_indices[row].clone(),
                                     positions, boxes, patches))
    return results


def top_activating_patches(
    model: VizModel,
    images: object,
    *,
    layer: str,
    channel: int,
    k: int = 9,
    position: tuple[int, int] | None = None,
    batch_size: int = 128,
) -> PatchesResult:
    """The k image patches that excite ``channel`` of ``layer`` most (Zeiler & Fergus 2014; Girshick et al. 2014).

    Each image contributes at most one patch: the channel's strongest unit in that image, or the unit at
    ``position = (row, col)`` when given. The patch is that unit's exact receptive field
    (:func:`viztools.hooks.receptive_field`), clipped to the image. ``images``: a pixel tensor, a data set
    (``GlyphWorld(n)``, :class:`~viztools.data.PhotoCrops`) or a folder (see :class:`~viztools.data.ImageSource`).
    Images are streamed in
    batches of ``batch_size``; peak memory is about one batch of the layer's activations.
    """
    return top_activating_patches_grid(model, images, layer=layer, channels=[channel], k=k, position=position,
                                       batch_size=batch_size)[0]


# --------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------


def plot_patches(result: PatchesResult, *, columns: int | None = None, ax: Axes | None = None) -> Figure:
    """Draw the top-k patches of one channel as a grid, each titled with its activation and image index.

    Patches are drawn at one scale, so a border unit's clipped patch looks smaller.
    """
    k = len(result.patches)
    columns = math.ceil(math.sqrt(k)) if columns is None else check_int(columns, "columns", low=1)
    titles = [f"{value:.2f} #{int(index)}" for value, index in zip(result.values.tolist(), result.image_indices,
                                                                     strict=True)]
    unit = "strongest unit" if result.position is None else f"unit {result.position}"
    return show_images(result.patches, titles, columns, ax=ax, panel_size=1.4, fontsize=10, same_scale=True,
                       suptitle=f"{result.layer}, channel {result.channel}: top {k} patches ({unit})")


def plot_patches_grid(results: Sequence[PatchesResult], *, ax: Axes | None = None) -> Figure:
    """Draw several channels' top patches: one row per channel, best patch on the left (the lecture's slide).

    Each row is labelled with its channel and best activation: a channel whose best is 0 never fired on these
    images (a "dead" ReLU), and its "patches" are just each image's first position. Each patch is titled with
    its activation.
    """
    if not results:
        raise ValueError("results is empty; pass the list returned by top_activating_patches_grid(...).")
    k = max(len(result.patches) for result in results)
    if any(len(result.patches) != k for result in results):
        raise ValueError("Every result must hold the same number of patches (one call of top_activating_patches_grid).")
    return show_images(
        [patch for result in results for patch in result.patches],
        [f"{value:.2f}" for result in results for value in result.values.tolist()],
        k,
        ax=ax,
        panel_size=1.2,
        fontsize=10,
        same_scale=True,
        row_labels=[f"channel {result.channel}\nbest {float(result.values[0]):.2f}" for result in results],
        suptitle=f"{results[0].layer}: top {k} patches per channel, best on the left",
    )
