"""Maximally activating image patches: what makes one unit of a trained CNN fire (lecture "01_patches_and_filters").

For a channel of a layer, stream a data set through the network, keep the k images in which the channel's
strongest unit fires most, and crop each to that unit's receptive field, as in Zeiler & Fergus, "Visualizing and
Understanding Convolutional Networks" (2014) and Girshick et al., "Rich feature hierarchies" (2014, pool5 units).
Memory stays bounded: each batch's activations are reduced to one value per (image, channel) and dropped, and a
running top-k is merged per batch, so the data set and its activations are never held at once.

Images can come from a pixel tensor ``(N, 3, H, W)``, a map-style data set such as
:class:`viztools.glyphworld.GlyphWorld`, a folder of image files, or :class:`PhotoCrops` (random crops of the
example photographs).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from viztools._validation import check_int
from viztools.hooks import get_activations, receptive_field
from viztools.models import VizModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Example photographs (names from :mod:`viztools.data`) that :class:`PhotoCrops` samples from.
PHOTO_NAMES: tuple[str, ...] = ("cat", "coffee", "astronaut", "rocket", "camera", "china", "flower", "grace_hopper")


# --------------------------------------------------------------------------------------------------------------
# Image sources
# --------------------------------------------------------------------------------------------------------------


@cache
def _photo(name: str) -> np.ndarray:
    from viztools.data import example_image

    return example_image(name)


class PhotoCrops(torch.utils.data.Dataset):
    """Random square crops of the example photographs, resized to ``size``, generated on access.

    Crop ``i`` depends only on ``(seed, i)``: a photo from ``photos``, a side between a third of the photo's
    shorter side and all of it, a random position. Items are pixel tensors ``(3, size, size)`` in [0, 1].
    """

    def __init__(self, n: int, size: int = 224, seed: int = 0, *, photos: Sequence[str] = PHOTO_NAMES) -> None:
        from viztools.data import EXAMPLE_IMAGES

        self.n = check_int(n, "n", low=0)
        self.size = check_int(size, "size", low=1)
        self.seed = check_int(seed, "seed", low=0)
        unknown = [name for name in photos if name not in EXAMPLE_IMAGES]
        if not photos or unknown:
            raise ValueError(
                f"photos must be a non-empty list of example image names; unknown: {unknown}. "
                f"Choose from: {', '.join(EXAMPLE_IMAGES)}."
            )
        self.photos = tuple(photos)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.n:
            raise IndexError(f"PhotoCrops index {index} out of range for {self.n} crops.")
        rng = np.random.default_rng([self.seed, index])
        photo = _photo(self.photos[int(rng.integers(len(self.photos)))])
        height, width = photo.shape[:2]
        shorter = min(height, width)
        side = int(rng.integers(max(1, shorter // 3), shorter + 1))
        top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crop = crop.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class ImageSource:
    """A sized collection of pixel images, read in batches (used by the data-set-level tools).

    ``images`` is a pixel tensor ``(N, 3, H, W)`` in [0, 1]; a map-style data set (anything with ``len`` and
    integer indexing, e.g. :class:`~viztools.glyphworld.GlyphWorld` or :class:`PhotoCrops`) whose items are pixel
    tensors ``(3, H, W)`` or ``(pixels, label)`` pairs; or a folder of image files (PNG, JPEG, ...; sorted by
    name, each loaded with :func:`viztools.data.load_image` at ``size``, which is then required).
    """

    def __init__(self, images: object, *, size: int | None = None) -> None:
        self._tensor: torch.Tensor | None = None
        self._dataset: object | None = None
        self._files: list[Path] | None = None
        self.size = size
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images.unsqueeze(0)
            if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
                raise ValueError(
                    f"images must be a float pixel tensor of shape (N, 3, H, W); got {tuple(images.shape)} "
                    f"({images.dtype}). Use viztools.make_glyphworld(n) or viztools.load_image(...) to make one."
                )
            self._tensor = images.detach()
        elif isinstance(images, (str, os.PathLike)):
            folder = Path(images).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"No folder {str(folder)!r}. Pass an existing folder of image files.")
            if size is None:
                raise ValueError("Reading a folder of images needs a size (the model's input size).")
            self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self._files:
                raise ValueError(f"Folder {str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
        elif hasattr(images, "__len__") and hasattr(images, "__getitem__"):
            self._dataset = images
        else:
            raise TypeError(
                f"Cannot read images from {type(images).__name__}. Pass a pixel tensor (N, 3, H, W), a data set "
                "such as viztools.GlyphWorld(n) or PhotoCrops(n), or a folder of image files."
            )
        if len(self) == 0:
            raise ValueError("The image collection is empty; pass at least one image.")

    def __len__(self) -> int:
        if self._tensor is not None:
            return self._tensor.shape[0]
        if self._files is not None:
            return len(self._files)
        return len(self._dataset)

    def item(self, index: int) -> tuple[torch.Tensor, int | None]:
        """Image ``index`` as ``(pixels (3, H, W), label or None)``."""
        from viztools.data import load_image

        if self._tensor is not None:
            return self._tensor[index], None
        if self._files is not None:
            return load_image(self._files[index], size=self.size)[0], None
        item = self._dataset[index]
        label = None
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ValueError(
                    f"Data set items must be pixels or (pixels, label); item {index} has {len(item)} parts."
                )
            item, label = item
            label = int(label)
        if not isinstance(item, torch.Tensor) or item.dim() != 3 or item.shape[0] != 3:
            shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(f"Data set item {index} must be a pixel tensor (3, H, W); got {shape}.")
        return item, label

    def image(self, index: int) -> torch.Tensor:
        """Pixels ``(3, H, W)`` of image ``index``."""
        return self.item(index)[0]

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(start, pixels (B, 3, H, W), labels (B,) or None)`` over the whole collection, in order."""
        batch_size = check_int(batch_size, "batch_size", low=1)
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            if self._tensor is not None:
                pixels, labels = self._tensor[start:stop].float(), None
            else:
                items = [self.item(i) for i in range(start, stop)]
                shapes = {tuple(pixels.shape) for pixels, _ in items}
                if len(shapes) > 1:
                    raise ValueError(f"All images must have the same size; images {start}..{stop - 1} have {shapes}.")
                pixels = torch.stack([pixels for pixels, _ in items]).float()
                found = [label for _, label in items]
                labels = None if None in found else torch.tensor(found)
            if pixels.numel() and (pixels.min() < 0 or pixels.max() > 1):
                raise ValueError(
                    f"Images {start}..{stop - 1} are not pixels in [0, 1] (range [{float(pixels.min()):.3g}, "
                    f"{float(pixels.max()):.3g}]). Pass unnormalized pixels; the model normalizes them itself."
                )
            yield start, pixels, labels


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
        rows, cols = receptive_field(model, layer, position, size=max(height, width))
        cache[key] = (slice(rows.start, min(rows.stop, height)), slice(cols.start, min(cols.stop, width)))
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
        images = torch.arange(start, start + len(pixels)).expand(len(channels), -1)
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
    layer: str,
    channels: Sequence[int],
    *,
    k: int = 9,
    position: tuple[int, int] | None = None,
    batch_size: int = 128,
) -> list[PatchesResult]:
    """Top-k patches for several channels of one layer in a single pass over the images (the lecture's grid).

    See :func:`top_activating_patches`; returns one :class:`PatchesResult` per channel, in the given order.
    """
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
    layer: str,
    channel: int,
    *,
    k: int = 9,
    position: tuple[int, int] | None = None,
    batch_size: int = 128,
) -> PatchesResult:
    """The k image patches that excite ``channel`` of ``layer`` most (Zeiler & Fergus 2014; Girshick et al. 2014).

    Each image contributes at most one patch: the channel's strongest unit in that image, or the unit at
    ``position = (row, col)`` when given. The patch is that unit's exact receptive field
    (:func:`viztools.hooks.receptive_field`), clipped to the image. ``images``: a pixel tensor, a data set
    (``GlyphWorld(n)``, :class:`PhotoCrops`) or a folder (see :class:`ImageSource`). Images are streamed in
    batches of ``batch_size``; peak memory is about one batch of the layer's activations.
    """
    return top_activating_patches_grid(model, images, layer, [channel], k=k, position=position,
                                       batch_size=batch_size)[0]


# --------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------


def _patch_mosaic(rows: list[list[torch.Tensor]], padding: int = 1) -> tuple[np.ndarray, int]:
    """Patches laid out in a grid of equal square cells (patch centred, white around); returns mosaic and cell side."""
    cell = max(max(p.shape[1], p.shape[2]) for row in rows for p in row)
    columns = max(len(row) for row in rows)
    step = cell + padding
    mosaic = np.ones((len(rows) * step - padding, columns * step - padding, 3), dtype=np.float32)
    for r, row in enumerate(rows):
        for c, patch in enumerate(row):
            height, width = patch.shape[1:]
            top = r * step + (cell - height) // 2
            left = c * step + (cell - width) // 2
            mosaic[top : top + height, left : left + width] = patch.clamp(0, 1).permute(1, 2, 0).numpy()
    return mosaic, cell


def plot_patches(result: PatchesResult, *, columns: int | None = None, ax: plt.Axes | None = None) -> Figure:
    """Draw the top-k patches of one channel as a grid, each labelled with its activation and image index."""
    k = len(result.patches)
    columns = math.ceil(math.sqrt(k)) if columns is None else check_int(columns, "columns", low=1)
    rows = [result.patches[i : i + columns] for i in range(0, k, columns)]
    mosaic, cell = _patch_mosaic(rows)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.4 * min(columns, k) + 0.4, 1.4 * len(rows) + 0.6))
    ax.imshow(mosaic, interpolation="nearest")
    for i, value in enumerate(result.values.tolist()):
        row, col = divmod(i, columns)
        ax.text(col * (cell + 1), row * (cell + 1), f"{value:.2f} #{int(result.image_indices[i])}",
                fontsize=7, va="top", ha="left", color="white",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    unit = "strongest unit" if result.position is None else f"unit {result.position}"
    ax.set_title(f"{result.layer}, channel {result.channel}: top {k} patches ({unit})", fontsize=10)
    ax.set_axis_off()
    return ax.figure


def plot_patches_grid(results: Sequence[PatchesResult], *, ax: plt.Axes | None = None) -> Figure:
    """Draw several channels' top patches: one row per channel, best patch on the left (the lecture's slide).

    Each row is labelled with its best activation: a channel whose best is 0 never fired on these images (a
    "dead" ReLU), and its "patches" are just each image's first position.
    """
    if not results:
        raise ValueError("results is empty; pass the list returned by top_activating_patches_grid(...).")
    mosaic, cell = _patch_mosaic([result.patches for result in results])
    k = max(len(result.patches) for result in results)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 * k + 1.0, 1.0 * len(results) + 0.6))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([r * (cell + 1) + (cell - 1) / 2 for r in range(len(results))],
                  [f"channel {result.channel}\nbest {float(result.values[0]):.2f}" for result in results], fontsize=8)
    ax.set_xticks([c * (cell + 1) + (cell - 1) / 2 for c in range(k)], [str(c + 1) for c in range(k)], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("rank")
    ax.set_title(f"{results[0].layer}: top {k} patches per channel", fontsize=10)
    return ax.figure
