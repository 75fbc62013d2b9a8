"""LayerExplorer: what one channel of a layer looks for, responds to, and fires most on (lecture 01).

A channel's filter weights (Krizhevsky et al. 2012; :mod:`viztools.filters`), its activation map on an image
(:func:`viztools.hooks.get_activations`), and the image patches of a data set that excite it most, each cropped
to the unit's receptive field (Zeiler & Fergus 2014; :func:`viztools.patches.top_activating_patches_grid`).
Everything is computed per layer in the background, so moving the channel slider only redraws.
"""

from __future__ import annotations

import dataclasses
import html
import math
import time
from collections.abc import Hashable, Iterator

import ipywidgets
import numpy as np
import torch

from viztools.filters import FilterGrid, filter_grid, resolve_conv
from viztools.hooks import ReceptiveFieldGeometry, get_activations, receptive_field_geometry
from viztools.models import VizModel
from viztools.patches import PatchesResult, top_activating_patches_grid
from viztools.widgets._common import Job, colorize, hstack, overlay, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer
from viztools.widgets.controls import CONTROL_STYLE, ImagePicker, LayerPicker, described, sample_images

VIEWS = ("channel", "all: best patches", "all: maps")
#: At most this many channels per pass over the data set, aiming at PASS_SECONDS per pass (the channel on
#: display goes first in each pass, so moving the slider re-prioritizes the remaining work).
CHUNK = 32
PASS_SECONDS = 2.0
_GREY = 200
FRAME_COLOUR = (80, 220, 255)


class _CancelledError(Exception):
    """Raised by :class:`_Stoppable` to end a superseded pass over the data set."""


class _Stoppable:
    """A view of an image set that raises :class:`_CancelledError` once ``job`` is superseded."""

    def __init__(self, images: torch.Tensor, job: Job) -> None:
        self.images, self.job = images, job

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.job.should_stop():
            raise _CancelledError
        return self.images[index]


@dataclasses.dataclass
class LayerView:
    """One layer on one image: activations ``(C, h, w)`` or ``(C,)``, the filters (None: why not), the
    receptive-field geometry (None for vector layers), and the top patches by channel (shared by the layer's
    views, filled in as they are computed)."""

    layer: str
    image: torch.Tensor
    maps: np.ndarray
    filters: FilterGrid | None
    no_filters: str
    geometry: ReceptiveFieldGeometry | None
    patches: dict[int, PatchesResult]


class LayerExplorer(Explorer):
    """Pick a layer and a channel: its filter, its activation map on an image, its top patches from a data set.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        layer, channel: the initial unit (default: the first layer, channel 0).
        image: an example image name, a pixel tensor or a path (default: a GlyphWorld star for GlyphNet,
            else "cat").
        images: size of the data set searched for top patches (GlyphWorld for GlyphNet, photo crops else).
        k: patches per channel.
        scale: 1.0 normal, 1.5 for a projector: panels and text grow together.
    """

    TITLE = "Layer explorer"
    BLURB = "filters, activation maps and top activating patches (Zeiler & Fergus 2014)."

    def __init__(self, model: VizModel, layer: str | None = None, channel: int = 0, *, image: object = None,
                 images: int | None = None, k: int = 9, scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        glyphs = self.model.name == "glyphnet"
        self.count = images or (200 if glyphs else 48)
        self.k = k
        if image is None:
            image = sample_images(self.model, 10)[0][6:7] if glyphs else "cat"
        self.image_picker = ImagePicker(image, size=self.model.input_size)
        blank = torch.zeros(1, 3, self.model.input_size, self.model.input_size, device=self.model.device)
        outputs = get_activations(self.model, blank, list(self.model.layers))
        self.channels = {name: out.shape[1] for name, out in outputs.items()}
        self.layer_picker = LayerPicker(self.model, layer)
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        self.channel_slider = ipywidgets.IntSlider(value=channel, min=0, description="channel",
                                                   max=self.channels[self.layer_picker.value] - 1, **slider)
        self.view_picker = ipywidgets.ToggleButtons(options=VIEWS, value=VIEWS[0], style={"button_width": "130px"})
        self.hold_box = ipywidgets.Checkbox(value=False, description="hold colour scale (layer max)", indent=False)
        self._patches: dict[str, dict[int, PatchesResult]] = {}
        self._per_layer: dict[str, tuple] = {}
        self.layer_picker.observe(lambda change: self._new_layer(), names="value")  # before the refresh
        self.on_compute(self.layer_picker, self.image_picker)
        self.on_display(self.channel_slider, self.view_picker, self.hold_box)
        self.assemble([ipywidgets.VBox([self.layer_picker, self.channel_slider, self.image_picker]),
                       ipywidgets.VBox([described("view", self.view_picker), self.hold_box])])
        self._guarded(self.refresh, "Starting")

    def compute_key(self) -> Hashable:
        return self.layer_picker.value, self.image_picker.key

    def compute(self, key: Hashable, job: Job) -> Iterator[LayerView]:
        layer, image_key = key
        pixels = self.image_picker.pixels_for(image_key)
        maps = get_activations(self.model, pixels, [layer])[layer][0].float().cpu().numpy()
        if layer not in self._per_layer:
            self._per_layer[layer] = (*_filters(self.model, layer), _geometry(self.model, layer))
        done = self._patches.setdefault(layer, {})
        view = LayerView(layer, pixels, maps, *self._per_layer[layer], done)
        count = len(maps)
        data = _Stoppable(sample_images(self.model, self.count)[0], job)
        size = 1  # channels per pass over the data set: grows until a pass takes about PASS_SECONDS
        while len(done) < count:
            yield view
            job.publish(lambda: self.progress.update(len(done), count, f"top patches: {len(done)} of {count}"))
            first = min(self.channel_slider.value, count - 1)  # the channel on display first
            chunk = [c for c in [*range(first, count), *range(first)] if c not in done][:size]
            started = time.perf_counter()
            try:
                found = top_activating_patches_grid(self.model, data, layer=layer, channels=chunk, k=self.k)
            except _CancelledError:
                return
            with self._runner.lock:
                done.update(zip(chunk, found, strict=True))
            size = max(1, min(CHUNK, round(size * PASS_SECONDS / (time.perf_counter() - started))))
        yield view

    def draw(self, view: LayerView) -> np.ndarray:
        channel = min(self.channel_slider.value, len(view.maps) - 1)
        if self.view_picker.value == VIEWS[1]:
            tiles = [self._patch_tile(view.patches.get(c), 0) for c in range(len(view.maps))]
            return self._grid(tiles, channel, "best patch of every channel")
        if self.view_picker.value == VIEWS[2]:
            tiles = [self._map_tile(view, c) for c in range(len(view.maps))]
            return self._grid(tiles, channel, "activation map of every channel")
        side, half = self.panel, self.panel // 2
        on_image = (f"channel {channel} on the image" if view.geometry is not None
                    else f"channel {channel}: {view.maps[channel]:.2f}")
        panels = [titled(self._filter_panel(view, channel, half), self._filter_title(view, channel),
                         size=self.font_size),
                  titled(self._map_panel(view, channel, side), on_image, size=self.font_size)]
        result = view.patches.get(channel)
        columns = math.ceil(math.sqrt(self.k))
        tile = (side - 4 * (columns - 1)) // columns
        tiles = [self._patch_tile(result, i, tile) for i in range(self.k)]
        title = "top patches" if result is not None else "top patches: computing ..."
        panels.append(titled(_mosaic(tiles, columns, tile, 4), title, size=self.font_size))
        return hstack(panels)

    def describe(self, view: LayerView) -> str:
        channel = min(self.channel_slider.value, len(view.maps) - 1)
        values = view.maps[channel]
        parts = [f"<b>{html.escape(view.layer)}</b> channel {channel} of {len(view.maps)}"]
        if view.filters is None:
            parts.append(f"no filters: {html.escape(view.no_filters)}")
        else:
            out, inputs, kh, kw = view.filters.weight_shape
            shown = "RGB" if view.filters.mode == "rgb" else f"first {len(view.filters.input_channels)} inputs"
            parts.append(f"filters of {view.filters.conv_path}: {out} x {inputs} x {kh} x {kw} ({shown})"
                         + ("; this channel comes from another branch" if _filter_index(view, channel) < 0 else ""))
        parts.append(f"on the image: max {values.max():.2f}")
        if view.geometry is not None:
            parts.append(f"receptive field {view.geometry.size} px (box on the image)")
        result = view.patches.get(channel)
        if result is not None:
            best = ", ".join(f"{v:.2f}" for v in result.values.tolist()[:5])
            dead = " (it never fires on these images: a dead unit)" if result.values[0] <= 0 else ""
            parts.append(f"top patches of {self.count} images: {best}, ...{dead}")
        return f'<div style="font-size:{self.font_size}px">{"; ".join(parts)}</div>'

    # -- panels ---------------------------------------------------------------------------------------------

    def _limit(self, view: LayerView, channel: int) -> float:
        values = view.maps if self.hold_box.value else view.maps[channel]
        return float(values.max()) if values.max() > 0 else 1.0

    def _map_panel(self, view: LayerView, channel: int, side: int) -> np.ndarray:
        picture = resize_rgb(to_rgb_uint8(view.image), (side, side))
        if view.geometry is None:
            return picture
        values = view.maps[channel]
        picture = overlay(picture, values, cmap="inferno", vmin=0.0, vmax=self._limit(view, channel), alpha=0.7)
        row, col = np.unravel_index(int(values.argmax()), values.shape)
        rows, cols = view.geometry.box(int(row), int(col), view.image.shape[-1])
        factor = side / view.image.shape[-1]
        return _frame(picture, (round(rows.start * factor), round(cols.start * factor),
                                round(rows.stop * factor), round(cols.stop * factor)), max(1, round(2 * self.scale)))

    def _map_tile(self, view: LayerView, channel: int) -> np.ndarray:
        values = view.maps[channel]
        values = values[None, None] if values.ndim == 0 else values
        return colorize(values, cmap="inferno", vmin=0.0, vmax=self._limit(view, channel))

    def _filter_panel(self, view: LayerView, channel: int, side: int) -> np.ndarray:
        panel = np.full((side, side, 3), 255, np.uint8)
        if view.filters is None:
            return panel
        index = _filter_index(view, channel)
        if index < 0:
            return panel
        tiles = view.filters.tiles[index]
        if view.filters.mode == "rgb":
            return resize_rgb(to_rgb_uint8(tiles), (side, side), smooth=False)
        columns = math.ceil(math.sqrt(len(tiles)))
        tile = (side - 4 * (columns - 1)) // columns
        return _mosaic([resize_rgb(to_rgb_uint8(t), (tile, tile), smooth=False) for t in tiles], columns, tile, 4)

    def _filter_title(self, view: LayerView, channel: int) -> str:
        if view.filters is None:
            return "no filter"
        return "filter" if _filter_index(view, channel) >= 0 else "other branch"

    def _patch_tile(self, result: PatchesResult | None, index: int, side: int | None = None) -> np.ndarray:
        side = side or 32
        if result is None or index >= len(result.patches):
            return np.full((side, side, 3), _GREY, np.uint8)
        full = max(max(p.shape[1:]) for p in result.patches)  # clipped border patches keep their scale
        patch = result.patches[index]
        size = (max(1, round(patch.shape[1] * side / full)), max(1, round(patch.shape[2] * side / full)))
        canvas = np.full((side, side, 3), 255, np.uint8)
        canvas[: size[0], : size[1]] = resize_rgb(to_rgb_uint8(patch), size, smooth=size[0] < 2 * patch.shape[1])
        return canvas

    def _grid(self, tiles: list[np.ndarray], chosen: int, title: str) -> np.ndarray:
        columns = math.ceil(math.sqrt(len(tiles)))
        gap = 2
        side = max(4, (round(2.4 * self.panel) - gap * (columns - 1)) // columns)
        framed = [resize_rgb(tile, (side, side), smooth=False) for tile in tiles]
        framed[chosen] = _frame(framed[chosen].copy(), (0, 0, side, side), max(1, side // 12))
        return titled(_mosaic(framed, columns, side, gap), f"{title} (channel {chosen} framed)", size=self.font_size)

    def _new_layer(self) -> None:
        channels = self.channels[self.layer_picker.value]
        self.channel_slider.value = min(self.channel_slider.value, channels - 1)
        self.channel_slider.max = channels - 1


def _filters(model: VizModel, layer: str) -> tuple[FilterGrid | None, str]:
    """All filters of the conv that produces ``layer`` (grey: the first 8 input channels), or why there are none."""
    try:
        conv = resolve_conv(model, layer)[1]
    except ValueError as error:
        return None, str(error).split(";")[0]
    inputs = None if conv.in_channels == 3 else list(range(min(8, conv.in_channels)))
    return filter_grid(model, layer=layer, channels=list(range(conv.out_channels)), input_channels=inputs), ""


def _filter_index(view: LayerView, channel: int) -> int:
    """The filter of ``channel`` in ``view.filters``; negative when another branch makes it (a Fire block's 1x1
    expand half, which comes before the 3x3 half whose filters are shown)."""
    return channel - (len(view.maps) - len(view.filters.channels))


def _geometry(model: VizModel, layer: str) -> ReceptiveFieldGeometry | None:
    try:
        return receptive_field_geometry(model, layer)
    except ValueError:
        return None


def _frame(picture: np.ndarray, box: tuple[int, int, int, int], width: int) -> np.ndarray:
    """Draw the outline of ``box = (top, left, bottom, right)`` (bottom, right exclusive) into ``picture``."""
    top, left, bottom, right = box
    for line in (np.s_[top : top + width, left:right], np.s_[max(bottom - width, top) : bottom, left:right],
                 np.s_[top:bottom, left : left + width], np.s_[top:bottom, max(right - width, left) : right]):
        picture[line] = FRAME_COLOUR
    return picture


def _mosaic(tiles: list[np.ndarray], columns: int, side: int, gap: int) -> np.ndarray:
    """Equal ``side`` x ``side`` tiles in rows of ``columns``, ``gap`` px of white between them."""
    rows = math.ceil(len(tiles) / columns)
    canvas = np.full((rows * (side + gap) - gap, columns * (side + gap) - gap, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * (side + gap), (index % columns) * (side + gap)
        canvas[top : top + side, left : left + side] = tile
    return canvas
