"""OcclusionExplorer: slide a grey square over the image and watch the class probability (lecture 03).

Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks", section 4.2: does the network
look at the object or at its context? Cover one region at a time and record the probability of the class. The
widget is a thin composer over :func:`viztools.occlusion.occlusion_coarse_to_fine`: computations run in the
background (a coarse map first, then the full one), a newer setting supersedes stale work, finished maps are
cached per ``(target, patch size, stride, fill)``, and display-only settings (opacity, probability / drop) redraw
from the cache.
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets
import numpy as np
import torch
import traitlets
from PIL import Image, ImageDraw

from viztools._validation import check_choice, check_float, check_image, check_int, check_model
from viztools.models import VizModel
from viztools.occlusion import (
    FILLS,
    OcclusionProgress,
    OcclusionResult,
    occlusion_coarse_to_fine,
    patch_geometry,
)
from viztools.widgets._common import (
    BackgroundRunner,
    ErrorBox,
    Job,
    ProgressBar,
    colorbar,
    hstack,
    overlay,
    png_bytes,
    resize_rgb,
    titled,
    to_rgb_uint8,
)

KINDS = ("drop", "probability")
#: Colormap and title of each kind of heatmap.
_KIND_STYLE = {
    "drop": ("RdBu_r", "drop in p({name}) with the patch"),
    "probability": ("viridis", "p({name}) with the patch here"),
}
_CACHE_SIZE = 64
_CONTROL_STYLE = {"description_width": "90px"}


class OcclusionExplorer(ipywidgets.VBox):
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
        display_size: side of each drawn panel in pixels.
        batch_size: forwarded to :func:`viztools.occlusion.occlusion`.

    Attributes:
        result: the :class:`~viztools.occlusion.OcclusionResult` on display (a coarse one while refining).
        last_error: the last error shown in the widget, or None.
    """

    result = traitlets.Any(None, allow_none=True, help="the OcclusionResult on display (not synced)")

    def __init__(
        self,
        model: VizModel,
        image: object,
        *,
        target: int | str | None = None,
        patch_size: int | None = None,
        stride: int | None = None,
        fill: str = "grey",
        kind: str = "drop",
        alpha: float = 0.5,
        display_size: int = 256,
        batch_size: int | None = None,
    ) -> None:
        self.model = check_model(model)
        self.image = (check_image(image, "image", pixels=True, model=model) if isinstance(image, torch.Tensor)
                      else model.preprocess(image))
        height, width = self.image.shape[2:]
        side = min(height, width)
        patch_size, stride = patch_geometry(patch_size, stride, height, width)
        check_choice(fill, "fill", FILLS)
        check_choice(kind, "kind", KINDS)
        alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
        self.display_size = check_int(display_size, "display_size", low=32)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", low=1)

        self._cache: OrderedDict[tuple[int, int, int, str], _PreparedMap] = OrderedDict()
        self._shown: _PreparedMap | None = None
        self._final = False
        self._requested: tuple[int, int, int, str] | None = None
        self.top_predictions = model.top_k(self.image, k=min(5, len(model.categories)))
        self._labels = _class_labels(model.categories)
        self._label_to_index = {label: index for index, label in enumerate(self._labels)}
        target_index = model.resolve_target(target, self.image)
        self._image_panel = resize_rgb(
            to_rgb_uint8(self.image), self._panel_size(), smooth=self.display_size < 2 * max(height, width)
        )

        self.errors = ErrorBox()
        self._runner = BackgroundRunner(self._show_error, name="viztools-occlusion")
        self.progress = ProgressBar()
        self.header = ipywidgets.HTML(self._header_html())
        self.picture = ipywidgets.Image(format="png", layout=ipywidgets.Layout(max_width="100%"))
        self.predictions = ipywidgets.HTML(layout=ipywidgets.Layout(min_width="230px"))
        self.summary = ipywidgets.HTML()
        self.summary.add_class("viztools-summary")

        slider = {"continuous_update": False, "style": _CONTROL_STYLE, "layout": ipywidgets.Layout(width="340px")}
        self.patch_slider = ipywidgets.IntSlider(
            value=patch_size, min=1, max=max(side // 2, patch_size), description="patch size", **slider
        )
        self.stride_slider = ipywidgets.IntSlider(
            value=stride, min=1, max=max(side // 2, stride), description="stride", **slider
        )
        self.alpha_slider = ipywidgets.FloatSlider(
            value=alpha, min=0.0, max=1.0, step=0.05, description="opacity", readout_format=".2f", **slider
        )
        self.fill_picker = ipywidgets.Dropdown(
            options=list(FILLS), value=fill, description="fill", style=_CONTROL_STYLE,
            layout=ipywidgets.Layout(width="220px"),
        )
        self.kind_toggle = ipywidgets.ToggleButtons(
            options=[("drop", "drop"), ("probability", "probability")], value=kind, style={"button_width": "100px"},
            tooltips=["baseline minus occluded probability", "probability with the patch at each place"],
        )
        top_labels = [self._labels[index] for index, _, _ in self.top_predictions]
        self.class_picker = ipywidgets.Combobox(
            value=self._labels[target_index],
            options=top_labels + [label for label in self._labels if label not in top_labels],
            ensure_option=True,
            placeholder="type a class name",
            description="class",
            style=_CONTROL_STYLE,
            layout=ipywidgets.Layout(width="340px"),
        )
        self._target = target_index

        for control in (self.patch_slider, self.stride_slider, self.fill_picker):
            control.observe(self._on_compute_setting, names="value")
        self.class_picker.observe(self._on_class, names="value")
        for control in (self.alpha_slider, self.kind_toggle):
            control.observe(self._on_display_setting, names="value")

        controls = ipywidgets.HBox(
            [
                ipywidgets.VBox([self.patch_slider, self.stride_slider, self.alpha_slider]),
                ipywidgets.VBox([self.class_picker, self.fill_picker, _described("show", self.kind_toggle)]),
            ]
        )
        super().__init__(
            [
                self.header,
                ipywidgets.HBox([self.picture, self.predictions], layout=ipywidgets.Layout(align_items="center")),
                self.summary,
                controls,
                self.progress,
                self.errors,
            ]
        )
        self.add_class("viztools-occlusion")
        self._render_predictions()
        with self.errors.capture("Starting the occlusion map"):
            self._request()

    # ----------------------------------------------------------------------------------------------------------
    # Public API
    # ----------------------------------------------------------------------------------------------------------

    @property
    def target(self) -> int:
        """Index of the class being explained."""
        return self._target

    @property
    def last_error(self) -> BaseException | None:
        """The last error shown in the widget (None if none happened)."""
        return self.errors.last_error

    @property
    def final(self) -> bool:
        """True when the result on display is the full-resolution map for the current settings."""
        return self._final

    @property
    def busy(self) -> bool:
        """True while a computation runs in the background."""
        return self._runner.busy

    def wait(self, timeout: float | None = 120.0) -> OcclusionExplorer:
        """Block until background work is done (for notebooks and tests); raise TimeoutError after ``timeout`` s."""
        if not self._runner.wait(timeout):
            raise TimeoutError(f"The occlusion map was not finished after {timeout} s.")
        return self

    def png(self) -> bytes:
        """The PNG bytes on display (image, heatmap overlay and colour bar)."""
        return self.picture.value

    def close(self) -> None:
        """Stop background work and close the widget and its children."""
        runner = getattr(self, "_runner", None)  # absent when __init__ raised on a bad argument
        if runner is not None:
            runner.cancel()
        for child in _descendants(self):
            child.close()
        super().close()

    # ----------------------------------------------------------------------------------------------------------
    # Event handlers
    # ----------------------------------------------------------------------------------------------------------

    def _key(self) -> tuple[int, int, int, str]:
        return (self._target, self.patch_slider.value, self.stride_slider.value, self.fill_picker.value)

    def _on_compute_setting(self, change: dict) -> None:
        with self.errors.capture("Updating the occlusion map"):
            self._request()

    def _on_display_setting(self, change: dict) -> None:
        with self.errors.capture("Redrawing"), self._runner.lock:
            self._draw()

    def _on_class(self, change: dict) -> None:
        with self.errors.capture("Choosing the class"):
            text = change["new"].strip()
            if not text:
                return
            index = self._label_to_index.get(text)
            if index is None:
                index = self.model.class_index(int(text) if text.isdigit() else text)
            if self.class_picker.value != self._labels[index]:
                self.class_picker.value = self._labels[index]  # re-enters this handler with the canonical label
                return
            self._target = index
            self._render_predictions()
            self._request()

    # ----------------------------------------------------------------------------------------------------------
    # Computation
    # ----------------------------------------------------------------------------------------------------------

    def _request(self) -> None:
        """Show the cached map for the current settings, or start computing it (superseding older work)."""
        key = self._key()
        cached = self._cache.get(key)
        if cached is not None:
            self._runner.cancel()
            self._requested = key
            with self._runner.lock:
                self._cache.move_to_end(key)
                self.errors.clear()
                self._show(cached, final=True)
                self.progress.finish("shown from cache")
            return
        if key == self._requested and self._runner.busy:
            return  # the same settings are being computed already
        self._requested = key
        self._runner.submit(lambda job: self._compute(key, job))

    def _compute(self, key: tuple[int, int, int, str], job: Job) -> None:
        target, patch_size, stride, fill = key

        def start() -> None:
            self.errors.clear()
            self.progress.start(f"computing: patch {patch_size} px, stride {stride} px ...")

        if not job.publish(start):
            return
        results = occlusion_coarse_to_fine(
            self.model, self.image, target, patch_size=patch_size, stride=stride, fill=fill,
            batch_size=self.batch_size, should_stop=self._stop_callback(job),
        )
        for result in results:
            prepared = self._prepare(result)  # the slow part of drawing, done here in the background
            final = result.stride == stride
            if final and not job.should_stop():
                self._remember(key, prepared)
            job.publish(lambda prepared=prepared, final=final: self._show(prepared, final=final))
        job.publish(lambda: self.progress.finish(f"done: {self._positions_text()}"))

    def _stop_callback(self, job: Job) -> Callable[[OcclusionProgress], bool]:
        """The technique's ``should_stop``: shows the progress, and stops once a newer setting superseded the job."""

        def should_stop(progress: OcclusionProgress) -> bool:
            job.publish(lambda: self.progress.update(progress.done, progress.total))
            return job.should_stop()

        return should_stop

    def _remember(self, key: tuple[int, int, int, str], prepared: _PreparedMap) -> None:
        with self._runner.lock:
            self._cache[key] = prepared
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _show_error(self, error: BaseException) -> None:
        self.errors.show(error, "Computing the occlusion map")
        self.progress.finish("failed (see the message below)", failed=True)

    # ----------------------------------------------------------------------------------------------------------
    # Drawing
    # ----------------------------------------------------------------------------------------------------------

    def _prepare(self, result: OcclusionResult) -> _PreparedMap:
        """Everything the drawing needs from a result that does not depend on display settings."""
        return _PreparedMap(
            result=result,
            heatmaps={kind: _as_numpy(result.heatmap(kind)) for kind in KINDS},
            drop_extent=max(float(np.abs(_as_numpy(result.drop)).max()), 1e-3),  # the scale plot_occlusion uses
            worst_box=self._worst_patch_box(result),
        )

    def _show(self, prepared: _PreparedMap, *, final: bool) -> None:
        self._final = final
        self._shown = prepared
        self.result = prepared.result
        self._draw()

    def _panel_size(self) -> tuple[int, int]:
        height, width = self.image.shape[2:]
        scale = self.display_size / max(height, width)
        return round(height * scale), round(width * scale)

    def _draw(self) -> None:
        """Compose image | overlay | colour bar as one PNG (numpy + PIL only, a few ms)."""
        prepared = self._shown
        if prepared is None:
            return
        result = prepared.result
        kind = self.kind_toggle.value
        cmap, title = _KIND_STYLE[kind]
        values = prepared.heatmaps[kind]
        vmin, vmax = (-prepared.drop_extent, prepared.drop_extent) if kind == "drop" else (0.0, 1.0)
        name = self.model.categories[result.target]
        worst = prepared.worst_box
        left = _draw_box(self._image_panel, worst)
        right = _draw_box(
            overlay(self._image_panel, values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=self.alpha_slider.value), worst
        )
        suffix = "" if self._final else " (coarse preview)"
        bar = colorbar(right.shape[0], cmap=cmap, vmin=vmin, vmax=vmax, label="drop" if kind == "drop" else "p")
        composite = hstack(
            [titled(left, "image; box: most damaging patch"), titled(right, title.format(name=name) + suffix), bar]
        )
        self.picture.value = png_bytes(composite)
        self.summary.value = self._summary_html(result)

    def _worst_patch_box(self, result: OcclusionResult) -> tuple[float, float, float, float]:
        """Display-space box ``(left, top, right, bottom)`` of the patch position with the lowest probability."""
        probability = _as_numpy(result.probability)
        row, col = np.unravel_index(int(np.argmin(probability)), probability.shape)
        height, width = self.image.shape[2:]
        top, left = result.row_starts[row], result.col_starts[col]
        bottom, right = min(top + result.patch_size, height), min(left + result.patch_size, width)
        scale_y, scale_x = self._panel_size()[0] / height, self._panel_size()[1] / width
        return left * scale_x, top * scale_y, right * scale_x - 1, bottom * scale_y - 1

    def _positions_text(self) -> str:
        result = self.result
        if result is None:
            return ""
        rows, cols = tuple(result.probability.shape)
        return f"{rows * cols} patch positions ({rows} x {cols})"

    def _summary_html(self, result: OcclusionResult) -> str:
        name = html.escape(self.model.categories[result.target])
        lowest = float(result.probability.min())
        state = "full map" if self._final else "coarse preview, refining ..."
        return (
            f'<div style="font-size:13px">p({name}) = <b>{result.baseline:.3f}</b> without occlusion; lowest with '
            f"the patch: <b>{lowest:.3f}</b> (largest drop {result.baseline - lowest:+.3f}). "
            f"{self._positions_text()} of a patch {result.patch_size} px, stride {result.stride} px, "
            f"fill '{html.escape(result.fill)}': {state}.</div>"
        )

    def _header_html(self) -> str:
        note = self.model.note
        note_html = f'<div style="color:#8a6d3b;font-size:12px">{html.escape(note)}</div>' if note else ""
        return (
            '<div style="font-size:15px"><b>Occlusion sensitivity</b> (Zeiler &amp; Fergus 2014): a patch slides '
            "over the image; where it lowers the class probability, the network was looking. "
            f'<span style="color:#777">Model: {html.escape(self.model.name)}</span></div>{note_html}'
        )

    def _render_predictions(self) -> None:
        rows = []
        for rank, (index, name, probability) in enumerate(self.top_predictions, start=1):
            weight = "bold" if index == self._target else "normal"
            bar = f'<div style="background:#4c78a8;height:10px;width:{max(1, round(probability * 100))}px"></div>'
            rows.append(
                f'<tr style="font-weight:{weight}"><td>{rank}.</td><td>{html.escape(name)}</td>'
                f'<td style="width:104px">{bar}</td><td style="text-align:right">{probability:.3f}</td></tr>'
            )
        if self._target not in [index for index, _, _ in self.top_predictions]:
            probability = float(self.model.predict(self.image)[0, self._target])
            rows.append(
                f'<tr style="font-weight:bold"><td>#</td><td>{html.escape(self.model.categories[self._target])}</td>'
                f'<td></td><td style="text-align:right">{probability:.3f}</td></tr>'
            )
        self.predictions.value = (
            '<div style="font-size:13px;padding-left:12px"><b>Top-5 predictions</b> (no occlusion)'
            f'<table style="border-spacing:6px 2px">{"".join(rows)}</table>'
            '<span style="color:#777">bold: the class explained</span></div>'
        )


@dataclass
class _PreparedMap:
    """An occlusion result with its heatmaps and colour scale, ready to draw with any display settings."""

    result: OcclusionResult
    heatmaps: dict[str, np.ndarray]
    drop_extent: float
    worst_box: tuple[float, float, float, float]


def _class_labels(categories: list[str]) -> list[str]:
    """One unique label per class: the name, with the index added where two classes share a name."""
    counts: dict[str, int] = {}
    for name in categories:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} ({index})" for index, name in enumerate(categories)]


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


def _described(description: str, control: ipywidgets.Widget) -> ipywidgets.HBox:
    """``control`` with a description aligned like the other controls' (ToggleButtons put theirs above)."""
    label = ipywidgets.HTML(
        f'<div style="text-align:right;padding-right:8px">{html.escape(description)}</div>',
        layout=ipywidgets.Layout(width=_CONTROL_STYLE["description_width"]),
    )
    return ipywidgets.HBox([label, control], layout=ipywidgets.Layout(align_items="center"))


def _descendants(widget: ipywidgets.Widget) -> list[ipywidgets.Widget]:
    found = []
    for child in getattr(widget, "children", ()):
        found.extend([*_descendants(child), child])
    return found
