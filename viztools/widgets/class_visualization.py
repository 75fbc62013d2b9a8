"""ClassVisualizer: grow the image a network finds most typical of a class, live (lecture 05).

Two recipes: the classic pixel-space ascent (Simonyan, Vedaldi & Zisserman 2014, with Yosinski et al.'s 2015 L2,
jitter and blur) or a Fourier-basis image in decorrelated colour with transformation robustness (Olah et al. 2017,
"Feature Visualization"). The explorer runs
:func:`viztools.class_visualization.class_visualization_optimization` in the background and shows the image as it
grows beside the class score curve.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Iterator

import ipywidgets
import numpy as np

from viztools._validation import check_choice, check_int
from viztools.class_visualization import class_visualization_optimization
from viztools.models import VizModel
from viztools.widgets._common import Job, hstack, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer, Frame
from viztools.widgets.charts import loss_curves
from viztools.widgets.controls import CONTROL_STYLE, ClassPicker, described

#: The recipes the explorer offers: label -> ``parametrization`` of class_visualization.
METHODS = {"pixels (classic)": "pixels", "Fourier + robust": "fourier"}


class ClassVisualizer(Explorer):
    """Pick a class and a recipe (classic pixels with L2, jitter, blur; or Fourier + decorrelated colour +
    transformation robustness); watch the visualization grow and its score rise.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        target: the class to visualize (index or name; default: the first class).
        parametrization: ``"pixels"`` (classic) or ``"fourier"`` (Olah et al. 2017).
        steps, l2, jitter, blur_every: initial settings of
            :func:`~viztools.class_visualization.class_visualization` (L2, jitter and blur belong to the classic
            recipe and are disabled for Fourier, whose robustness transforms and basis do their work).
        size: side of the optimized image in pixels (default: the model's input size).
        scale: 1.0 normal, 1.5 for a projector: panels and text grow together.
    """

    TITLE = "Class visualization"
    BLURB = ("gradient ascent on a class score: pixels with L2, jitter and blur (Simonyan et al. 2014; Yosinski et "
             "al. 2015) or a Fourier-basis image with transformation robustness (Olah et al. 2017).")

    def __init__(self, model: VizModel, target: int | str | None = None, *, parametrization: str = "pixels",
                 steps: int = 100, l2: float = 1e-3, jitter: int | None = None, blur_every: int = 10,
                 size: int | None = None, scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.size = self.model.input_size if size is None else check_int(size, "size", low=1)
        self.expected_steps = steps
        self.class_picker = ClassPicker(self.model, target=target)
        self.method_picker = ipywidgets.ToggleButtons(
            options=list(METHODS.items()),
            value=check_choice(parametrization, "parametrization", tuple(METHODS.values())),
            style={"button_width": "140px"},
        )
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        default_jitter = round(16 * self.size / 224) if jitter is None else jitter
        self.l2_slider = ipywidgets.FloatLogSlider(value=max(l2, 1e-6), base=10, min=-6, max=0, step=0.25,
                                                   description="L2", readout_format=".0e", **slider)
        self.jitter_slider = ipywidgets.IntSlider(value=default_jitter, min=0, max=max(self.size // 4, default_jitter),
                                                  description="jitter (px)", **slider)
        self.blur_slider = ipywidgets.IntSlider(value=blur_every, min=0, max=50, description="blur every",
                                                **slider)
        self.steps_slider = ipywidgets.IntSlider(value=steps, min=10, max=1000, step=10, description="steps",
                                                 **slider)
        self.method_picker.observe(lambda change: self._enable_classic_controls(), names="value")
        self._enable_classic_controls()
        self.on_compute(self.class_picker, self.method_picker, self.l2_slider, self.jitter_slider, self.blur_slider,
                        self.steps_slider)
        self.assemble([ipywidgets.VBox([self.class_picker, described("recipe", self.method_picker),
                                        self.steps_slider]),
                       ipywidgets.VBox([self.l2_slider, self.jitter_slider, self.blur_slider])], live=True)
        self._guarded(self.refresh, "Starting")

    def _enable_classic_controls(self) -> None:
        fourier = self.method_picker.value != "pixels"
        for control in (self.l2_slider, self.jitter_slider, self.blur_slider):
            control.disabled = fourier

    def compute_key(self) -> Hashable:
        method = self.method_picker.value
        classic = (self.l2_slider.value, self.jitter_slider.value, self.blur_slider.value)
        return (self.class_picker.resolve(self.class_picker.value), method, self.steps_slider.value,
                *(classic if method == "pixels" else (None, None, None)))

    def compute(self, key: Hashable, job: Job) -> Iterator[Frame]:
        target, method, steps, l2, jitter, blur_every = key
        self.expected_steps = steps
        return self.live(lambda should_stop: class_visualization_optimization(
            self.model, None, target, parametrization=method, steps=steps, l2=l2, jitter=jitter,
            blur_every=blur_every, size=self.size, should_stop=should_stop,
        ), job)

    def draw(self, frame: Frame) -> np.ndarray:
        target, method = self.shown_key[:2]
        side = self.panel
        state = "paused: best so far" if frame.paused else ("done" if frame.final else f"step {frame.step}")
        picture = titled(resize_rgb(to_rgb_uint8(frame.image), (side, side)),
                         f"{self.model.categories[target]}, {method} ({state})", size=self.font_size)
        scores = [{"class score": -record[f"class {target} score"]} for record in frame.history]
        curve = loss_curves(scores, (picture.shape[0], round(1.3 * side)), font_size=self.font_size, log=False,
                            title="class score per step")
        return hstack([picture, curve])

    def describe(self, frame: Frame) -> str:
        if frame.result is None:  # live frames: the score curve says how it goes, no extra forward pass
            return ""
        name = html.escape(frame.result.class_name)
        return f'<div style="font-size:{self.font_size}px">p({name}) = <b>{frame.result.probability:.3f}</b></div>'
