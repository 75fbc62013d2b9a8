"""SaliencyExplorer: which pixels move a class score or one unit, in one backward pass (lecture 04).

Saliency maps (Simonyan, Vedaldi & Zisserman 2014), deconvnet (Zeiler & Fergus 2014), guided backpropagation
(Springenberg et al. 2015) and the gradient of a single unit, all from :mod:`viztools.saliency`, and what
practitioners use today: Grad-CAM (Selvaraju et al. 2017), SmoothGrad (Smilkov et al. 2017) and Integrated Gradients
(Sundararajan et al. 2017). The maps are drawn beside the image; "compare all" shows every class method side by
side, and the colour scale can be held fixed so that a weak map looks weak.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import ipywidgets
import numpy as np
import torch
from PIL import Image, ImageDraw

from viztools.grad_cam import grad_cam
from viztools.hooks import get_activations, receptive_field
from viztools.integrated_gradients import integrated_gradients
from viztools.models import VizModel
from viztools.saliency import deconvnet, guided_backprop, neuron_gradient, saliency
from viztools.smooth_grad import smooth_grad
from viztools.widgets._common import Job, colorize, hstack, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer
from viztools.widgets.controls import CONTROL_STYLE, ClassPicker, ImagePicker, LayerPicker, described, predictions_html

#: The methods and, for the class score, the function computing each map.
METHODS = ("saliency", "guided backprop", "deconvnet", "Grad-CAM", "SmoothGrad", "Integrated Gradients",
           "neuron gradient")


def _grad_cam_map(model: VizModel, image: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM at the default layer (the last convolutional block), at the image's size."""
    return grad_cam(model, image, target).attribution


def _smooth_grad_map(model: VizModel, image: torch.Tensor, target: int) -> torch.Tensor:
    """SmoothGrad saliency: 16 copies with noise at 15 % of the image's range (seed 0)."""
    return smooth_grad(model, image, target, samples=16, batch_size=8).saliency


def _integrated_gradients_map(model: VizModel, image: torch.Tensor, target: int) -> torch.Tensor:
    """|Integrated Gradients| summed over the colour channels (black baseline, 20 Gauss-Legendre points)."""
    return integrated_gradients(model, image, target, steps=20).attribution.abs().sum(dim=0)


_CLASS_MAPS = {"saliency": saliency, "guided backprop": guided_backprop, "deconvnet": deconvnet,
               "Grad-CAM": _grad_cam_map, "SmoothGrad": _smooth_grad_map,
               "Integrated Gradients": _integrated_gradients_map}
#: Shorter titles where six maps share the width ("compare all").
_SHORT_TITLES = {"guided backprop": "guided BP", "Integrated Gradients": "Int. Grad."}
_RULES = {"plain": "unit: plain", "guided": "unit: guided", "deconvnet": "unit: deconvnet"}


@dataclass
class SaliencyMaps:
    """What one computation gives: the image, its maps by title (``(H, W)`` heat or ``(H, W, 3)`` signed) with
    their ``(H, W)`` magnitudes, a note on the score, the top-5 table, and the unit's receptive field (rows,
    columns) for a neuron gradient."""

    image: torch.Tensor
    maps: dict[str, np.ndarray]
    magnitudes: dict[str, np.ndarray]
    note: str
    predictions: str
    field: tuple[slice, slice] | None = None

    @classmethod
    def of(cls, image: torch.Tensor, maps: dict[str, torch.Tensor], note: str, predictions: str,
           field: tuple[slice, slice] | None = None) -> SaliencyMaps:
        """From ``(H, W)`` / ``(3, H, W)`` map tensors (laid out for drawing here, in the background)."""
        arrays = {title: (m if m.dim() == 2 else m.permute(1, 2, 0)).float().cpu().numpy()
                  for title, m in maps.items()}
        magnitudes = {title: a if a.ndim == 2 else np.abs(a).max(axis=2) for title, a in arrays.items()}
        return cls(image, arrays, magnitudes, note, predictions, field)


class SaliencyExplorer(Explorer):
    """Pick an image, a class (or a unit) and a method; see the map beside the image, or all three rules at once.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        image: an example image name, a pixel tensor or a path (the user may upload another).
        target: the class to explain (index or name; default: the top prediction).
        method: one of :data:`METHODS`; ``layer`` and ``channel`` choose the unit of "neuron gradient"
            (default: the deepest spatial layer and its most active channel on ``image``).
        compare: show every class method side by side (for "neuron gradient": the three ReLU rules).
        percentile: maps saturate at this percentile of their magnitude.
        scale: 1.0 normal, 1.5 for a projector: panels and text grow together.
    """

    TITLE = "Saliency"
    BLURB = ("the gradient of a score with respect to the pixels: saliency (Simonyan et al. 2014), deconvnet "
             "(Zeiler & Fergus 2014), guided backprop (Springenberg et al. 2015); Grad-CAM (Selvaraju et al. 2017), "
             "SmoothGrad (Smilkov et al. 2017), Integrated Gradients (Sundararajan et al. 2017).")

    def __init__(self, model: VizModel, image: object = "cat", target: int | str | None = None, *,
                 method: str = "saliency", layer: str | None = None, channel: int | None = None,
                 compare: bool = False, percentile: float = 99.0, scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.image_picker = ImagePicker(image, size=self.model.input_size)
        pixels = self.image_picker.pixels
        self.class_picker = ClassPicker(self.model, pixels, target)
        self.method_picker = ipywidgets.ToggleButtons(options=METHODS, value=method, style={"button_width": "140px"})
        outputs = get_activations(self.model, pixels, list(self.model.layers))
        self.channels = {name: out.shape[1] for name, out in outputs.items() if out.dim() in (2, 4)}
        # default unit: the deepest feature map (spatial, not a pooling, not one channel per class)
        deep = [name for name, out in outputs.items() if out.dim() == 4 and out.shape[-1] > 1
                and not name.startswith("pool") and out.shape[1] != len(self.model.categories)]
        if layer is not None and layer not in self.channels:
            raise ValueError(f"layer must be one of {', '.join(self.channels)} for a neuron gradient; got {layer!r}.")
        self.layer_picker = LayerPicker(self.model, layer or deep[-1], layers=list(self.channels))
        if channel is None:
            channel = int(outputs[self.layer_picker.value][0].flatten(1).amax(dim=1).argmax())
        slider = {"continuous_update": False, "style": CONTROL_STYLE, "layout": ipywidgets.Layout(width="320px")}
        self.channel_slider = ipywidgets.IntSlider(value=channel, min=0, description="unit (channel)",
                                                   max=self.channels[self.layer_picker.value] - 1, **slider)
        self.compare_box = ipywidgets.Checkbox(value=compare, description="compare all", indent=False)
        self.hold_box = ipywidgets.Checkbox(value=False, description="hold colour scale", indent=False)
        self.clip_slider = ipywidgets.FloatSlider(value=percentile, min=90.0, max=100.0, step=0.1,
                                                  description="clip at pct", readout_format=".1f", **slider)
        self._held: dict[str, float] = {}
        self._scales: dict[str, float] = {}
        self.image_picker.dropdown.observe(lambda change: self._guarded(self._new_image, "Ranking"), names="value")
        self.layer_picker.observe(lambda change: self._new_layer(), names="value")
        self.method_picker.observe(lambda change: self._enable(), names="value")
        for control in (self.hold_box, self.clip_slider):
            control.observe(lambda change: self._held.clear(), names="value")  # before the redraw below
        self.on_compute(self.image_picker, self.class_picker, self.method_picker, self.layer_picker,
                        self.channel_slider, self.compare_box)
        self.on_display(self.hold_box, self.clip_slider)
        self.assemble([ipywidgets.VBox([self.image_picker, self.class_picker, described("method", self.method_picker)]),
                       ipywidgets.VBox([self.layer_picker, self.channel_slider, self.clip_slider,
                                        ipywidgets.HBox([self.compare_box, self.hold_box])])])
        self._enable()
        self._guarded(self.refresh, "Starting")

    def compute_key(self) -> Hashable:
        neuron = self.method_picker.value == "neuron gradient"
        target = None if neuron else self.class_picker.resolve(self.class_picker.value)
        unit = (self.layer_picker.value, self.channel_slider.value) if neuron else None
        return self.image_picker.key, target, self.method_picker.value, unit, self.compare_box.value

    def compute(self, key: Hashable, job: Job) -> Iterator[SaliencyMaps]:
        image_key, target, method, unit, compare = key
        pixels = self.image_picker.pixels_for(image_key)
        predictions = predictions_html(self.model, pixels, highlight=target, font_size=self.font_size)
        if unit is None:
            names = list(_CLASS_MAPS) if compare else [method]
            maps = {name: _CLASS_MAPS[name](self.model, pixels, target) for name in names}
            score = float(self.model(pixels)[0, target])
            note = f"explaining <b>{html.escape(self.model.categories[target])}</b> (score {score:.2f})"
            yield SaliencyMaps.of(pixels, maps, note, predictions)
            return
        layer, channel = unit
        units = {rule: neuron_gradient(self.model, pixels, layer=layer, channel=channel, rule=rule)
                 for rule in (_RULES if compare else ["plain"])}
        first = units["plain"]
        activations = get_activations(self.model, pixels, [layer])[layer][0]
        busiest = int(activations.flatten(1).amax(dim=1).argmax())
        field = None if first.position is None else receptive_field(self.model, layer, first.position,
                                                                     size=pixels.shape[-1])
        where = "" if first.position is None else f" at {first.position}"
        note = (f"unit <b>{layer}</b> channel {channel}{where}: activation {first.activation:.2f} "
                f"(most active channel here: {busiest})")
        yield SaliencyMaps.of(pixels, {_RULES[rule]: u.gradient for rule, u in units.items()}, note, predictions,
                              field)

    def draw(self, result: SaliencyMaps) -> np.ndarray:
        maps = len(result.maps)
        side = round(self.panel * (1.0 if maps == 1 else 0.62 if maps <= 3 else 0.45))
        height, width = result.image.shape[-2:]
        smooth = side < 2 * max(height, width)
        panels = [titled(resize_rgb(to_rgb_uint8(result.image), (side, side), smooth=smooth), "image",
                         size=self.font_size)]
        self._scales = {}
        for title, values in result.maps.items():
            limit = self._limit(title, result.magnitudes[title])
            if values.ndim == 2:
                picture = colorize(values, cmap="inferno", vmin=0.0, vmax=limit)
            else:
                picture = to_rgb_uint8(0.5 + (0.5 / limit) * values)
            label = _SHORT_TITLES.get(title, title) if maps > 3 else title
            panels.append(titled(resize_rgb(picture, (side, side), smooth=smooth), label, size=self.font_size))
        if result.field is not None:
            panels = [_draw_field(panel, result.field, side / width, round(2 * self.scale)) for panel in panels]
        return hstack(panels)

    def describe(self, result: SaliencyMaps) -> str:
        self.side.value = result.predictions
        held = " (held)" if self.hold_box.value else ""
        scales = ", ".join(f"{title} {limit:.2g}" if limit else f"{title} (all zero)"
                           for title, limit in self._scales.items())
        field = "" if result.field is None else (f"; receptive field {result.field[0].stop - result.field[0].start}"
                                                 f" x {result.field[1].stop - result.field[1].start} px (gold box)")
        return (f'<div style="font-size:{self.font_size}px">{result.note}{field}<br>full colour at |gradient| = '
                f"{scales}{held}</div>")

    def _limit(self, title: str, magnitude: np.ndarray) -> float:
        """The value where ``title``'s colours saturate: the clip percentile, or the held value (1 for an
        all-zero map, which then shows no colour)."""
        limit = self._held.get(title) if self.hold_box.value else None
        if limit is None:
            limit = float(np.percentile(magnitude, self.clip_slider.value)) or float(magnitude.max())
            if self.hold_box.value and limit > 0:
                self._held[title] = limit
        self._scales[title] = limit
        return limit or 1.0

    def _new_image(self) -> None:
        """Offer the new image's top classes and explain its top one (the runner is idle first: its hooks would
        fire in this forward pass)."""
        if self.image_picker.value is None:
            return
        self._runner.cancel()
        self._runner.wait(30.0)
        self.class_picker.rank(self.image_picker.pixels)
        self.class_picker.value = self.class_picker.options[0]

    def _new_layer(self) -> None:
        channels = self.channels[self.layer_picker.value]
        self.channel_slider.value = min(self.channel_slider.value, channels - 1)
        self.channel_slider.max = channels - 1

    def _enable(self) -> None:
        neuron = self.method_picker.value == "neuron gradient"
        self.layer_picker.disabled = self.channel_slider.disabled = not neuron
        self.class_picker.disabled = neuron


def _draw_field(panel: np.ndarray, field: tuple[slice, slice], zoom: float, line: int) -> np.ndarray:
    """``panel`` (a titled square) with the receptive field ``(rows, cols)`` as a gold box."""
    picture = Image.fromarray(panel)
    top = panel.shape[0] - panel.shape[1]  # the title strip
    rows, cols = field
    box = (cols.start * zoom, top + rows.start * zoom, cols.stop * zoom - 1, top + rows.stop * zoom - 1)
    ImageDraw.Draw(picture).rectangle(box, outline=(255, 200, 0), width=line)
    return np.asarray(picture)
