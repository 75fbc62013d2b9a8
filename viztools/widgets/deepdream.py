"""DeepDreamExplorer: amplify what a layer sees in an image and watch the dream grow, octave by octave (lecture 07).

Mordvintsev, Olah & Tyka (2015), "Inceptionism": gradient ascent on ``0.5 * sum(a^2)`` of a layer's activations,
with jitter and octaves (coarse to fine scales). The explorer runs
:func:`viztools.deepdream.deepdream_optimization` in the background and shows the original beside the dream as it
grows (each octave's image drawn at panel size), with the dream objective per step.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Iterator

import ipywidgets
import numpy as np
import torch

from viztools.deepdream import deepdream_optimization, octave_sizes
from viztools.hooks import forward_activations
from viztools.models import VizModel
from viztools.widgets._common import Job, hstack, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer, Frame
from viztools.widgets.charts import loss_curves
from viztools.widgets.controls import CONTROL_STYLE, ImagePicker, LayerPicker, described

#: Each octave is this many times larger than the previous (deepdream's default).
OCTAVE_SCALE = 1.4
#: What the dream panel shows: the dream itself, or what it added to the original (grey = unchanged).
VIEWS = ("dream", "added detail")


def dreamable_layers(model: VizModel) -> list[str]:
    """The layers of ``model`` with spatial feature maps (pooling layers left out): they take any image size."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, model.input_size, model.input_size, device=model.device)
        activations = forward_activations(model, probe, list(model.layers))
    spatial = [name for name, value in activations.items() if value.dim() == 4 and min(value.shape[-2:]) > 1]
    return [name for name in spatial if not name.startswith("pool")] or spatial


class DeepDreamExplorer(Explorer):
    """Pick an image, a layer, octaves and the step size; watch the dream grow beside the original.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        image: an example image name (see ``viztools.data.example_image_names()``), a path or pixels.
        layer: the layer to dream at (default: the middle one of the layers with feature maps).
        octaves, lr, steps: initial settings of :func:`~viztools.deepdream.deepdream` (``steps`` per octave).
        size: side of the image in pixels (default: the model's input size, at least 128).
        scale: 1.0 normal, 1.5 for a projector: panels and text grow together.
    """

    TITLE = "DeepDream"
    BLURB = "amplify what a layer sees: gradient ascent on ½‖a‖², coarse to fine octaves (Mordvintsev et al. 2015)."

    def __init__(self, model: VizModel, image: object = "cat", layer: str | None = None, *, octaves: int = 3,
                 lr: float = 0.01, steps: int = 10, size: int | None = None, scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.size = max(self.model.input_size, 128) if size is None else size
        layers = dreamable_layers(self.model)
        self.image_picker = ImagePicker(image, size=self.size)
        self.layer_picker = LayerPicker(self.model, layer or layers[len(layers) // 2], layers=layers)
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        self.octaves_slider = ipywidgets.IntSlider(value=octaves, min=1, max=max(6, octaves), description="octaves",
                                                   **slider)
        self.lr_slider = ipywidgets.FloatLogSlider(value=lr, base=10, min=-3, max=-0.5, step=0.125,
                                                   description="step size", readout_format=".3f", **slider)
        self.steps_slider = ipywidgets.IntSlider(value=steps, min=1, max=max(50, steps),
                                                 description="steps/octave", **slider)
        self.view_toggle = ipywidgets.ToggleButtons(options=VIEWS, value="dream", style={"button_width": "100px"})
        self._described: tuple[object, str] = (None, "")
        self.on_compute(self.image_picker, self.layer_picker, self.octaves_slider, self.lr_slider, self.steps_slider)
        self.on_display(self.view_toggle)
        self.assemble([ipywidgets.VBox([self.image_picker, self.layer_picker, described("show", self.view_toggle)]),
                       ipywidgets.VBox([self.octaves_slider, self.lr_slider, self.steps_slider])], live=True)
        self._guarded(self.refresh, "Starting")

    def compute_key(self) -> Hashable:
        return (self.image_picker.key, self.layer_picker.value, self.octaves_slider.value, self.lr_slider.value,
                self.steps_slider.value)

    def compute(self, key: Hashable, job: Job) -> Iterator[Frame]:
        image_key, layer, octaves, lr, steps = key
        pixels = self.image_picker.pixels_for(image_key)
        self.expected_steps = steps
        return self.live(lambda should_stop: deepdream_optimization(
            self.model, pixels, layer=layer, steps=steps, lr=lr, octaves=octaves, octave_scale=OCTAVE_SCALE,
            should_stop=should_stop,
        ), job)

    def draw(self, frame: Frame) -> np.ndarray:
        image_key, layer, octaves, _, steps = self.shown_key
        side, size = self.panel, self.font_size
        original = resize_rgb(to_rgb_uint8(self.image_picker.pixels_for(image_key)), (side, side))
        dream = resize_rgb(to_rgb_uint8(frame.image), (side, side))
        if self.view_toggle.value == "added detail":
            dream = np.clip(128.0 + dream.astype(np.float32) - original, 0, 255).astype(np.uint8)
        # the octave of each step, from the step count (paused and final frames report stage 0)
        sizes = octave_sizes(self.size, self.size, octaves, OCTAVE_SCALE)
        names = [f"{height} px" for height, _ in sizes]
        records = [{names[min(step // steps, len(names) - 1)]: -sum(record.values())}
                   for step, record in enumerate(frame.history)]
        octave = min(max(len(records) - 1, 0) // steps, len(names) - 1)
        state = "paused" if frame.paused else ("done" if frame.final else f"step {frame.step}")
        panels = [titled(original, "original", size=size),
                  titled(dream, f"{layer} · octave {octave + 1}/{len(names)} · {state}", size=size)]
        panels.append(loss_curves(records, (panels[0].shape[0], round(1.3 * side)), font_size=size, names=names,
                                  title="½‖a‖² per step (octaves by size)"))
        return hstack(panels)

    def describe(self, frame: Frame) -> str:
        if not frame.final:
            return ""
        if self._described[0] is not frame:  # two forward passes: once per result, not on every redraw
            layer = self.shown_key[1]
            with torch.no_grad():
                before, after = (float(forward_activations(self.model, pixels, [layer])[layer].pow(2).sum())
                                 for pixels in (frame.result.original, frame.image))
            growth = after / max(before, 1e-12)
            self._described = (frame, f'<div style="font-size:{self.font_size}px">½‖a‖² at '
                                      f"<b>{html.escape(layer)}</b> grew <b>{growth:.1f}-fold</b> "
                                      f"in {frame.result.steps} steps</div>")
        return self._described[1]
