"""AdversarialExplorer: fool the network with a change nobody can see (lecture 09).

Fooling images (Szegedy et al. 2014; the CS231n exercise: normalized-gradient steps on a target class until it
wins), FGSM (Goodfellow, Shlens & Szegedy 2015: one step of epsilon along the gradient's sign) and iterative FGSM
(Kurakin, Goodfellow & Bengio 2017). The explorer shows the original, the adversarial image, their difference
magnified, and the top-5 predictions before and after; fooling images grow live, step by step.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Iterator

import ipywidgets
import numpy as np

from viztools.adversarial import (
    FoolingResult,
    fgsm,
    fooling_image_optimization,
    iterative_fgsm,
    magnified_difference,
)
from viztools.models import VizModel
from viztools.widgets._common import Job, hstack, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer, Frame
from viztools.widgets.controls import CONTROL_STYLE, ClassPicker, ImagePicker, described, predictions_html

METHODS = ("fooling image", "FGSM", "iterative FGSM")


class AdversarialExplorer(Explorer):
    """Choose an image, a method, a target class and an epsilon (in grey levels); see what fools the network.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        image: an example image name, a path, an array or a pixel tensor (resized to the model's input size).
        target: the class to aim at (targeted methods; default: the least likely class of the image).
        method: one of :data:`METHODS`.
        epsilon: the L-inf budget of FGSM / iterative FGSM in grey levels (1 = 1/255).
        scale: 1.0 normal, 1.5 for a projector.
    """

    TITLE = "Adversarial examples"
    BLURB = "a small change flips the prediction (Szegedy et al. 2014; Goodfellow et al. 2015; Kurakin et al. 2017)."

    def __init__(self, model: VizModel, image: object = "cat", target: int | str | None = None, *,
                 method: str = "fooling image", epsilon: float = 2.0, max_steps: int = 100,
                 scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.image_picker = ImagePicker(image, size=self.model.input_size)
        pixels = self.image_picker.pixels
        least_likely = int(self.model.predict(pixels)[0].argmin())
        self.class_picker = ClassPicker(self.model, pixels, least_likely if target is None else target)
        self.class_picker.description = "target"
        self.method_picker = ipywidgets.ToggleButtons(options=list(METHODS), value=method,
                                                      style={"button_width": "120px"})
        self.targeted_box = ipywidgets.Checkbox(value=False, description="FGSM towards the target",
                                                indent=False)
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        self.epsilon_slider = ipywidgets.FloatSlider(value=epsilon, min=0.25, max=32.0, step=0.25,
                                                     description="epsilon /255", **slider)
        self.magnify_slider = ipywidgets.IntSlider(value=10, min=1, max=100, description="magnify x", **slider)
        self.max_steps = max_steps
        self._side_shows: object | None = None
        self.on_compute(self.image_picker, self.class_picker, self.method_picker, self.targeted_box,
                        self.epsilon_slider)
        self.on_display(self.magnify_slider)
        self.assemble([ipywidgets.VBox([self.image_picker, self.class_picker, self.epsilon_slider]),
                       ipywidgets.VBox([described("method", self.method_picker), self.targeted_box,
                                        self.magnify_slider])], live=True)
        self._guarded(self.refresh, "Starting")

    def compute_key(self) -> Hashable:
        method = self.method_picker.value
        budget = (None, None) if method == "fooling image" else (self.targeted_box.value, self.epsilon_slider.value)
        return (self.image_picker.key, self.class_picker.resolve(self.class_picker.value), method, *budget)

    def compute(self, key: Hashable, job: Job) -> Iterator[FoolingResult | Frame]:
        image_key, target, method, targeted, epsilon_levels = key
        pixels = self._original = self.image_picker.pixels_for(image_key)
        self.class_picker.rank(pixels)
        if method == "fooling image":
            self.expected_steps = self.max_steps
            yield from self.live(lambda should_stop: fooling_image_optimization(
                self.model, pixels, target, max_steps=self.max_steps, should_stop=should_stop), job)
            return
        attack = fgsm if method == "FGSM" else iterative_fgsm
        yield attack(self.model, pixels, target if targeted else None, epsilon=epsilon_levels / 255,
                     targeted=targeted)

    def draw(self, shown: FoolingResult | Frame) -> np.ndarray:
        original = self._original_of(shown)
        adversarial = shown.image
        side, size = self.panel, self.font_size
        scale = self.magnify_slider.value
        panels = [
            titled(resize_rgb(to_rgb_uint8(original), (side, side)), "original", size=size),
            titled(resize_rgb(to_rgb_uint8(adversarial), (side, side)), self._adversarial_title(shown), size=size),
            titled(resize_rgb(to_rgb_uint8(magnified_difference(original, adversarial, scale=scale)), (side, side),
                              smooth=False), f"difference x{scale}", size=size),
        ]
        return hstack(panels)

    def describe(self, shown: FoolingResult | Frame) -> str:
        if shown is not self._side_shows:  # the tables need two forward passes: not on display-only redraws
            self._side_shows = shown
            target = self.shown_key[1]
            original = self._original_of(shown)
            self.side.value = (
                predictions_html(self.model, original, highlight=target, title="before", font_size=self.font_size)
                + predictions_html(self.model, shown.image, highlight=target, title="after", font_size=self.font_size)
            )
        result = shown.result if isinstance(shown, Frame) else shown
        if result is None:
            return f'<div style="font-size:{self.font_size}px">step {shown.step} ...</div>'
        return f'<div style="font-size:{self.font_size}px">{html.escape(result.summary())}</div>'

    def _original_of(self, shown: FoolingResult | Frame) -> object:
        result = shown.result if isinstance(shown, Frame) else shown
        return self._original if result is None else result.original

    def _adversarial_title(self, shown: FoolingResult | Frame) -> str:
        if isinstance(shown, Frame) and shown.result is None:
            return f"step {shown.step}"
        result = shown.result if isinstance(shown, Frame) else shown
        return f"{'fooled' if result.success else 'not fooled'}: {result.prediction_name}"
