"""OcclusionExplorer: slide a grey square over the image and watch the class probability (lecture 03).

Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks", section 4.2: does the network
look at the object or at its context? Cover one region at a time and record the probability of the class. The
explorer is a thin composer over :func:`viztools.occlusion.occlusion_coarse_to_fine` on the
:class:`~viztools.widgets.base.Explorer` base: a coarse map first, then the full one, cached per ``(target, patch
size, stride, fill)``; opacity, probability / drop and the held colour scale only redraw.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import ipywidgets
import numpy as np
import torch
import traitlets
from PIL import Image, ImageDraw

from viztools._validation import check_choice, check_float, check_image, check_int
from viztools.models import VizModel
from viztools.occlusion import FILLS, OcclusionProgress, OcclusionResult, occlusion_coarse_to_fine, patch_geometry
from viztools.widgets._common import Job, colorbar, hstack, overlay, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer
from viztools.widgets.controls import CONTROL_STYLE, ClassPicker, described, predictions_html

KINDS = ("drop", "probability")
#: Colormap and title of each kind of heatmap.
_KIND_STYLE = {
    "drop": ("RdBu_r", "drop in p({name}) with the patch"),
    "probability": ("viridis", "p({name}) with the patch here"),
}


class OcclusionExplorer(Explorer):
    """Interactive occlusion sensitivity (Zeiler & Fergus 2014) for one image: sliders, heatmap, top-5.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        image: a pixel tensor ``(1, 3, H, W)`` in [0, 1], or anything ``model.preprocess`` accepts
            (an example name such as ``"cat"``, a path, an array).
        target: class index or name to explain; None for the top prediction.
        patch_size, stride: initial occluder side and step in pixels (default: ``default_patch_size`` and
            ``default_stride`` of ``viztools.occlusion``: 12 and 4 px at 64 px, 32 and 8 px at 224 px).
        fill: what the patch shows: one of ``viztools.occlusion.FILLS``.
        kind: ``"drop"`` (baseline minus occluded probability: red = the patch hurts) or ``"probability"``.
        alpha: opacity of the heatmap over the image.
        display_size: side of each drawn panel in pixels at scale 1.
        batch_size: forwarded to :func:`viztools.occlusion.occlusion`.
        scale: 1.0 normal, 1.5 for a projector: panels and text grow together.

    Attributes:
        result: the :class:`~viztools.occlusion.OcclusionResult` on display (a coarse one while refining).
    """

    TITLE = "Occlusion sensitivity"
    BLURB = ("a patch slides over the image; where it lowers the class probability, the network was looking "
             "(Zeiler & Fergus 2014).")
    result = traitlets.Any(None, allow_none=True, help="the OcclusionResult on display (not synced)")

    def __init__(self, model: VizModel, image: object, *, target: int | str | None = None,
                 patch_size: int | None = None, stride: int | None = None, fill: str = "grey", kind: str = "drop",
                 alpha: float = 0.5, display_size: int = 256, batch_size: int | None = None,
                 scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.image = (check_image(image, "image", pixels=True, model=self.model) if isinstance(image, torch.Tensor)
                      else self.model.preprocess(image))
        height, width = self.image.shape[2:]
        patch_size, stride = patch_geometry(patch_size, stride, height, width)
        check_choice(fill, "fill", FILLS)
        check_choice(kind, "kind", KINDS)
        alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
        side = round(check_int(display_size, "display_size", low=32) * self.scale)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", low=1)
        self.panel_shape = (round(height * side / max(height, width)), round(width * side / max(height, width)))
        self._image_panel = resize_rgb(to_rgb_uint8(self.image), self.panel_shape, smooth=side < 2 * max(height, width))

        self.class_picker = ClassPicker(self.model, self.image, target)
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        smallest = min(height, width)
        self.patch_slider = ipywidgets.IntSlider(value=patch_size, min=1, max=max(smallest // 2, patch_size),
                                                 description="patch size", **slider)
        self.stride_slider = ipywidgets.IntSlider(value=stride, min=1, max=max(smallest // 2, stride),
                                                  description="stride", **slider)
        self.alpha_slider = ipywidgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                                   readout_format=".2f", **slider)
        self.fill_picker = ipywidgets.Dropdown(options=list(FILLS), value=fill, description="fill",
                                               style=CONTROL_STYLE, layout=ipywidgets.Layout(width="220px"))
        self.kind_toggle = ipywidgets.ToggleButtons(
            options=list(KINDS), value=kind, style={"button_width": "100px"},
            tooltips=["baseline minus occluded probability", "probability with the patch at each place"])
        self.hold_scale = ipywidgets.Checkbox(value=False, description="hold colour scale", indent=False,
                                              tooltip="keep the drop's colour scale when settings change")
        self._held_extent: float | None = None
        self.summary.add_class("viztools-summary")
        self.on_compute(self.class_picker, self.patch_slider, self.stride_slider, self.fill_picker)
        self.on_display(self.alpha_slider, self.kind_toggle, self.hold_scale)
        self.assemble([ipywidgets.VBox([self.patch_slider, self.stride_slider, self.alpha_slider]),
                       ipywidgets.VBox([self.class_picker, self.fill_picker, described("show", self.kind_toggle),
                                        self.hold_scale])])
        self.add_class("viztools-occlusion")
        self._guarded(self.refresh, "Starting the occlusion map")

    @property
    def target(self) -> int:
        """Index of the class being explained."""
        return self.class_picker.index

    # -- compute --------------------------------------------------------------------------------------------

    def compute_key(self) -> Hashable:
        return (self.class_picker.resolve(self.class_picker.value), self.patch_slider.value,
                self.stride_slider.value, self.fill_picker.value)

    def compute(self, key: Hashable, job: Job) -> Iterator[_PreparedMap]:
        target, patch_size, stride, fill = key
        job.publish(lambda: self.progress.start(f"computing: patch {patch_size} px, stride {stride} px ..."))

        def should_stop(progress: OcclusionProgress) -> bool:
            job.publish(lambda: self.progress.update(progress.done, progress.total))
            return job.should_stop()

        self.side.value = predictions_html(self.model, self.image, highlight=target, font_size=self.font_size,
                                           title="Top-5 predictions (no occlusion)")
        for result in occlusion_coarse_to_fine(self.model, self.image, target, patch_size=patch_size, stride=stride,
                                               fill=fill, batch_size=self.batch_size, should_stop=should_stop):
            yield self._prepare(result)  # the slow part of drawing, done here in the background

    def is_final(self, prepared: _PreparedMap, key: Hashable) -> bool:
        return prepared.result.stride == key[2]

    def _prepare(self, result: OcclusionResult) -> _PreparedMap:
        """Everything the drawing needs from a result that does not depend on display settings."""
        return _PreparedMap(
            result=result,
            heatmaps={kind: _as_numpy(result.heatmap(kind)) for kind in KINDS},
            drop_extent=max(float(np.abs(_as_numpy(result.drop)).max()), 1e-3),  # the scale plot_occlusion uses
            worst_box=self._worst_patch_box(result),
        )

    def _show(self, prepared: _PreparedMap, *, final: bool, key: Hashable | None = None) -> None:
        super()._show(prepared, final=final, key=key)
        self.result = prepared.result

    # -- draw -----------------------------------------------------------------------------------------------

    def draw(self, prepared: _PreparedMap) -> np.ndarray:
        """Image with the most damaging patch | heatmap overlay | colour bar."""
        kind = self.kind_toggle.value
        cmap, title = _KIND_STYLE[kind]
        if not self.hold_scale.value or self._held_extent is None:
            self._held_extent = prepared.drop_extent
        extent = self._held_extent
        vmin, vmax = (-extent, extent) if kind == "drop" else (0.0, 1.0)
        size = self.font_size
        left = _draw_box(self._image_panel, prepared.worst_box)
        right = _draw_box(overlay(self._image_panel, prepared.heatmaps[kind], cmap=cmap, vmin=vmin, vmax=vmax,
                                  alpha=self.alpha_slider.value), prepared.worst_box)
        suffix = "" if self.final else " (coarse preview)"
        name = self.model.categories[prepared.result.target]
        left = titled(left, "box: most damaging patch", size=size)
        right = titled(right, title.format(name=name) + suffix, size=size)
        bar = colorbar(right.shape[0], cmap=cmap, vmin=vmin, vmax=vmax, label="drop" if kind == "drop" else "p",
                       font_size=max(size - 2, 10))
        return hstack([left, right, bar])

    def describe(self, prepared: _PreparedMap) -> str:
        result = prepared.result
        name = html.escape(self.model.categories[result.target])
        lowest = float(result.probability.min())
        rows, cols = tuple(result.probability.shape)
        state = "full map" if self.final else "coarse preview, refining ..."
        return (
            f'<div style="font-size:{self.font_size}px">p({name}) = <b>{result.baseline:.3f}</b> without occlusion; '
            f"lowest with the patch: <b>{lowest:.3f}</b> (largest drop {result.baseline - lowest:+.3f}). "
            f"{rows * cols} patch positions ({rows} x {cols}) of a patch {result.patch_size} px, stride "
            f"{result.stride} px, fill '{html.escape(result.fill)}': {state}.</div>"
        )

    def _worst_patch_box(self, result: OcclusionResult) -> tuple[float, float, float, float]:
        """Display-space box ``(left, top, right, bottom)`` of the patch position with the lowest probability."""
        probability = _as_numpy(result.probability)
        row, col = np.unravel_index(int(np.argmin(probability)), probability.shape)
        height, width = self.image.shape[2:]
        top, left = result.row_starts[row], result.col_starts[col]
        bottom, right = min(top + result.patch_size, height), min(left + result.patch_size, width)
        scale_y, scale_x = self.panel_shape[0] / height, self.panel_shape[1] / width
        return left * scale_x, top * scale_y, right * scale_x - 1, bottom * scale_y - 1


@dataclass
class _PreparedMap:
    """An occlusion result with its heatmaps and colour scale, ready to draw with any display settings."""

    result: OcclusionResult
    heatmaps: dict[str, np.ndarray]
    drop_extent: float
    worst_box: tuple[float, float, float, float]


def _draw_box(panel: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """``panel`` with a two-tone rectangle (visible on light and dark images)."""
    picture = Image.fromarray(panel)
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = box
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0), width=3)
    draw.rectangle((left + 1, top + 1, right - 1, bottom - 1), outline=(255, 255, 255), width=1)
    return np.asarray(picture)


def _as_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().float().numpy()
    return np.asarray(values, dtype=np.float32)
