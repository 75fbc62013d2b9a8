"""InversionExplorer: what an image looks like to a layer, reconstructed live from its features (lecture 06).

Mahendran & Vedaldi (2015), "Understanding Deep Image Representations by Inverting Them": find pixels whose
features at one layer match the image's, with a total-variation prior. The explorer runs
:func:`viztools.inversion.invert_features_optimization` in the background and shows the reconstruction as it
forms beside the original and the loss curves; "compare with" reconstructs from a second layer afterwards, with the
same settings, so that an early and a deep layer can be seen side by side.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import zip_longest

import ipywidgets
import numpy as np

from viztools.inversion import invert_features_optimization
from viztools.models import VizModel
from viztools.widgets._common import Job, hstack, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer, Frame
from viztools.widgets.charts import loss_curves
from viztools.widgets.controls import CONTROL_STYLE, ImagePicker, LayerPicker


@dataclass
class SecondFrame(Frame):
    """A frame of the second layer's reconstruction, carrying the first layer's finished one."""

    first: Frame | None = None


class InversionExplorer(Explorer):
    """Pick an image and a layer (and a second layer to compare); watch the image re-emerge from its features.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        image: an example image name, a pixel tensor or a path (the user may upload another).
        layer, compare: the layer to invert and, optionally, a second one reconstructed after it (default: an
            early layer; no comparison).
        steps, tv_weight, lr: settings of :func:`~viztools.inversion.invert_features`.
        size: side of the reconstructed image in pixels (default: the model's input size, at most 128 px so that
            ImageNet models show several frames per second).
        scale: 1.0 normal, 1.5 for a projector: panels and text grow together.
    """

    TITLE = "Feature inversion"
    BLURB = ("pixels whose features at a layer match the image's, with a smoothness prior "
             "(Mahendran & Vedaldi 2015).")

    def __init__(self, model: VizModel, image: object = "cat", *, layer: str | None = None,
                 compare: str | None = None, steps: int = 100, tv_weight: float = 1.0, lr: float = 0.04,
                 size: int | None = None, scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.size = min(self.model.input_size, 128) if size is None else size
        self.lr = lr
        self.image_picker = ImagePicker(image, size=self.size)
        features = [name for name in self.model.layers if not name.startswith("pool") and name != "logits"]
        self.layer_picker = LayerPicker(self.model, layer or features[min(1, len(features) - 1)])
        deep = features[round(0.7 * (len(features) - 1))]
        self.compare_box = ipywidgets.Checkbox(value=compare is not None, description="compare with",
                                               indent=False, layout=ipywidgets.Layout(width="110px"))
        self.second_picker = LayerPicker(self.model, compare or deep, description="")
        self.second_picker.layout.width = "160px"
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        self.steps_slider = ipywidgets.IntSlider(value=steps, min=10, max=1000, step=10, description="steps",
                                                 **slider)
        self.tv_slider = ipywidgets.FloatLogSlider(value=max(tv_weight, 1e-3), base=10, min=-3, max=2, step=0.25,
                                                   description="TV weight", readout_format=".2g", **slider)
        self.log_box = ipywidgets.Checkbox(value=True, description="log scale (losses)", indent=False)
        self.compare_box.observe(lambda change: self._enable(), names="value")
        self.on_compute(self.image_picker, self.layer_picker, self.compare_box, self.second_picker,
                        self.steps_slider, self.tv_slider)
        self.on_display(self.log_box)
        self.side.layout.display = "none"  # no side panel: the loss curves are part of the picture
        self.assemble([ipywidgets.VBox([self.image_picker, self.layer_picker,
                                        ipywidgets.HBox([self.compare_box, self.second_picker])]),
                       ipywidgets.VBox([self.steps_slider, self.tv_slider, self.log_box])], live=True)
        self._enable()
        self._guarded(self.refresh, "Starting")

    def compute_key(self) -> Hashable:
        second = self.second_picker.value if self.compare_box.value else None
        return (self.image_picker.key, self.layer_picker.value, second, self.steps_slider.value,
                self.tv_slider.value)

    def compute(self, key: Hashable, job: Job) -> Iterator[Frame]:
        image_key, layer, second, steps, tv_weight = key
        pixels = self.image_picker.pixels_for(image_key)
        self.expected_steps = steps

        def run(inverted: str, frame: Callable[..., Frame]) -> Iterator[Frame]:
            return self.live(lambda should_stop: invert_features_optimization(
                self.model, pixels, layer=inverted, steps=steps, lr=self.lr, tv_weight=tv_weight,
                should_stop=should_stop), job, frame=frame)

        first = None
        for first in run(layer, Frame):
            yield first
        if second is not None and first is not None and first.final:
            yield from run(second, partial(SecondFrame, first=first))

    def draw(self, frame: Frame) -> np.ndarray:
        image_key, layer, second, _, _ = self.shown_key
        side = round(self.panel * (0.75 if second else 1.0))
        original = self.image_picker.pixels_for(image_key)
        first, later = (frame.first, frame) if isinstance(frame, SecondFrame) else (frame, None)
        panels = [titled(resize_rgb(to_rgb_uint8(original), (side, side)), "original", size=self.font_size),
                  self._panel(first, layer, side)]
        curves = [_named(first.history, layer, None if second is None else layer)]
        if second is not None:
            if later is None:
                grey = np.full((side, side, 3), 128, dtype=np.uint8)
                panels.append(titled(grey, f"from {second} (next)", size=self.font_size))
            else:
                panels.append(self._panel(later, second, side))
                curves.append(_named(later.history, second, second if second != layer else f"{second} (2)"))
        history = [{name: value for part in parts for name, value in part.items()}
                   for parts in zip_longest(*curves, fillvalue={})]
        names = [name for curve in curves for name in (curve[0] if curve else {})]
        chart = loss_curves(history, (panels[0].shape[0], round(1.3 * side)), font_size=self.font_size,
                            title="feature match, TV", names=names, log=self.log_box.value)
        return hstack([*panels, chart])

    def describe(self, frame: Frame) -> str:
        finished = [f.result for f in (getattr(frame, "first", None), frame) if f is not None and f.final]
        text = "; ".join(f"from {html.escape(r.layer)}: RMS pixel error <b>{r.error:.3f}</b> (best at step "
                         f"{r.best_step} of {r.steps}, {r.stop_reason})" for r in finished)
        return f'<div style="font-size:{self.font_size}px">{text or "reconstructing ..."}</div>'

    def _panel(self, frame: Frame, layer: str, side: int) -> np.ndarray:
        state = "paused: best" if frame.paused else ("done" if frame.final else f"step {frame.step}")
        picture = resize_rgb(to_rgb_uint8(frame.image), (side, side))
        return titled(picture, f"from {layer} ({state})", size=self.font_size)

    def _enable(self) -> None:
        self.second_picker.disabled = not self.compare_box.value


def _named(history: list[dict[str, float]], layer: str, label: str | None) -> list[dict[str, float]]:
    """The feature-match and TV terms of ``history`` (an inversion of ``layer``), short enough for the legend:
    "feature match" and "total variation", or ``label`` and "``label`` TV" when two layers share the chart."""
    names = ("feature match", "total variation") if label is None else (label, f"{label} TV")
    return [{names[0]: record.get(f"feature match {layer}", np.nan), names[1]: record.get("total variation", np.nan)}
            for record in history]
