"""StyleExplorer: paint a content image in the style of another, with live per-layer Gram-matrix losses (lecture 08).

Gatys, Ecker & Bethge (2016), "Image Style Transfer Using Convolutional Neural Networks": optimize the pixels so
that one layer's features match the content image and the Gram matrices of several layers match the style image.
The explorer runs :func:`viztools.style.style_transfer_optimization` in the background and shows content, style
and the current image beside every loss term per step: the content loss, one Gram-matrix (style) loss per layer,
and total variation.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Iterator

import ipywidgets
import numpy as np

from viztools.models import VizModel
from viztools.style import DEFAULT_STYLE_WEIGHT, default_layers, style_transfer_optimization
from viztools.widgets._common import BACKGROUND, Job, hstack, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer, Frame
from viztools.widgets.charts import loss_curves
from viztools.widgets.controls import CONTROL_STYLE, ImagePicker, described


class StyleExplorer(Explorer):
    """Pick content and style images, a weight per style layer, content and TV weights and the optimizer; watch
    the image change and every loss term fall.

    Args:
        model: a :class:`~viztools.models.VizModel`; its layers come from :func:`viztools.style.default_layers`.
        content, style: example image names (see ``viztools.data.example_image_names()``), paths or pixels
            (default: the cat painted in the style of the generated painting ``"starry_strokes"``).
        steps, optimizer, content_weight, tv_weight: initial settings of :func:`~viztools.style.style_transfer`.
        size: side of the images in pixels (default: the model's input size, at most 128 so that frames come at
            least once a second on ImageNet models).
        scale: 1.0 normal, 1.5 for a projector: panels and text grow together.
    """

    TITLE = "Neural style"
    BLURB = "match one layer's features to the content and Gram matrices to the style (Gatys et al. 2016)."

    def __init__(self, model: VizModel, content: object = "cat", style: object = "starry_strokes", *,
                 steps: int = 100, optimizer: str = "lbfgs", content_weight: float = 1.0, tv_weight: float = 1.0,
                 size: int | None = None, scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.size = min(self.model.input_size, 128) if size is None else size
        self.content_layer, self.style_layers = default_layers(self.model)
        self.content_picker = ImagePicker(content, size=self.size, description="content")
        self.style_picker = ImagePicker(style, size=self.size, description="style")
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        log = {"base": 10, "step": 0.25, "readout_format": ".3g", **slider}
        self.style_sliders = [
            ipywidgets.FloatLogSlider(value=DEFAULT_STYLE_WEIGHT, min=-2, max=3, description=layer, **log)
            for layer in self.style_layers
        ]
        self.content_slider = ipywidgets.FloatLogSlider(value=content_weight, min=-3, max=2,
                                                        description="content", **log)
        self.tv_slider = ipywidgets.FloatLogSlider(value=tv_weight, min=-3, max=3, description="TV", **log)
        self.optimizer_toggle = ipywidgets.ToggleButtons(options=[("L-BFGS", "lbfgs"), ("Adam", "adam")],
                                                         value=optimizer, style={"button_width": "80px"})
        self.steps_slider = ipywidgets.IntSlider(value=steps, min=10, max=max(500, steps), step=10,
                                                 description="steps", **slider)
        self.log_box = ipywidgets.Checkbox(value=True, description="log scale", indent=False)
        self.on_compute(self.content_picker, self.style_picker, *self.style_sliders, self.content_slider,
                        self.tv_slider, self.optimizer_toggle, self.steps_slider)
        self.on_display(self.log_box)
        self.assemble([ipywidgets.VBox([self.content_picker, self.style_picker, self.content_slider, self.tv_slider,
                                        described("optimizer", self.optimizer_toggle)]),
                       ipywidgets.VBox([ipywidgets.HTML(f"<b>Gram-matrix (style) weight per layer</b>; content "
                                                        f"layer: {self.content_layer}"),
                                        *self.style_sliders, self.steps_slider, self.log_box])], live=True)
        self._guarded(self.refresh, "Starting")

    def compute_key(self) -> Hashable:
        return (self.content_picker.key, self.style_picker.key, tuple(s.value for s in self.style_sliders),
                self.content_slider.value, self.tv_slider.value, self.optimizer_toggle.value, self.steps_slider.value)

    def compute(self, key: Hashable, job: Job) -> Iterator[Frame]:
        content_key, style_key, style_weights, content_weight, tv_weight, optimizer, steps = key
        content = self.content_picker.pixels_for(content_key)
        style = self.style_picker.pixels_for(style_key)
        self.expected_steps = steps
        return self.live(lambda should_stop: style_transfer_optimization(
            self.model, content, style, content_layer=self.content_layer, style_layers=self.style_layers,
            style_weights=list(style_weights), content_weight=content_weight, tv_weight=tv_weight,
            optimizer=optimizer, steps=steps, should_stop=should_stop,
        ), job)

    def draw(self, frame: Frame) -> np.ndarray:
        content_key, style_key, *_ = self.shown_key
        side, size = self.panel, self.font_size
        small = (side - size - 8) // 2  # two small panels with their titles are as tall as the large one
        column = [titled(resize_rgb(to_rgb_uint8(picker.pixels_for(key)), (small, small)), name, size=size)
                  for picker, key, name in ((self.content_picker, content_key, "content"),
                                            (self.style_picker, style_key, "style"))]
        column.insert(1, np.full((side + size + 8 - 2 * column[0].shape[0], small, 3), BACKGROUND, np.uint8))
        state = "paused: best so far" if frame.paused else ("done" if frame.final else f"step {frame.step}")
        current = titled(resize_rgb(to_rgb_uint8(frame.image), (side, side)), state, size=size)
        names = [f"content:{self.content_layer}", *(f"style:{layer}" for layer in self.style_layers),
                 "total variation"]
        curves = loss_curves(frame.history, (current.shape[0], round(1.3 * side)), font_size=size, names=names,
                             log=self.log_box.value, title="weighted losses per step")
        return hstack([np.concatenate(column), current, curves])

    def describe(self, frame: Frame) -> str:
        if not frame.history:
            return ""
        last = frame.history[-1]
        terms = " · ".join(f"{html.escape(name)} {value:.3g}" for name, value in last.items())
        return f'<div style="font-size:{self.font_size}px">step {len(frame.history)}: {terms}</div>'
