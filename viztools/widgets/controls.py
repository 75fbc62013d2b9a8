"""Reusable controls of the viztools widgets: class, layer and image pickers, a top-5 table, a model header.

Each control is a small ipywidgets composite that validates what the user chose and raises a ValueError that
says what to do; the explorer that owns it shows the error in its error box (:mod:`viztools.widgets.base`).
"""

from __future__ import annotations

import html
import io
from collections.abc import Hashable
from functools import lru_cache

import ipywidgets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from viztools.data import PHOTO_NAMES, PhotoCrops, example_image_names, load_image
from viztools.glyphworld import CLASS_NAMES, make_glyphworld
from viztools.models import VizModel

#: Width of the description column of every control, so that controls line up in a column.
DESCRIPTION_WIDTH = "90px"
CONTROL_STYLE = {"description_width": DESCRIPTION_WIDTH}
#: The name the image picker gives to the user's own image (an upload, or the image the explorer was given).
UPLOADED = "(your image)"


def class_labels(categories: list[str]) -> list[str]:
    """One unique label per class: the name, with the index added where two classes share a name."""
    counts: dict[str, int] = {}
    for name in categories:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} ({index})" for index, name in enumerate(categories)]


class ClassPicker(ipywidgets.Combobox):
    """A class chooser: the top predictions for ``image`` first, any class by typing its name (or its index).

    ``index`` is the chosen class. Typing an unknown name raises the model's helpful ValueError ("Did you mean
    ...?") from :meth:`resolve`, which the owning explorer shows.
    """

    def __init__(self, model: VizModel, image: torch.Tensor | None = None, target: int | str | None = None,
                 **kwargs: object) -> None:
        self.model = model
        self.labels = class_labels(model.categories)
        self._by_label = {label: index for index, label in enumerate(self.labels)}
        self.index = model.resolve_target(target, image) if image is not None else model.class_index(target or 0)
        super().__init__(value=self.labels[self.index], ensure_option=True, placeholder="type a class name",
                         description="class", style=CONTROL_STYLE, layout=ipywidgets.Layout(width="320px"),
                         **kwargs)
        self.rank(image)

    def rank(self, image: torch.Tensor | None) -> None:
        """Offer the top predictions for ``image`` first (all classes in model order without an image)."""
        ranked = [] if image is None else self.model.top_k(image, k=min(5, len(self.labels)))
        top = [self.labels[index] for index, _, _ in ranked]
        self.options = top + [label for label in self.labels if label not in top]

    def resolve(self, text: str) -> int | None:
        """The class index for typed ``text`` (None while empty); sets ``index`` and the canonical label."""
        text = text.strip()
        if not text:
            return None
        index = self._by_label.get(text)
        if index is None:
            index = self.model.class_index(int(text) if text.isdigit() else text)
        self.index = index
        if self.value != self.labels[index]:
            self.value = self.labels[index]  # show the canonical label ("Music Note" -> "music note")
        return index


class LayerPicker(ipywidgets.Dropdown):
    """A dropdown of ``model.layers`` (or the given subset), in forward order."""

    def __init__(self, model: VizModel, value: str | None = None, *, layers: list[str] | None = None,
                 description: str = "layer", **kwargs: object) -> None:
        options = list(model.layers) if layers is None else list(layers)
        if not options:
            raise ValueError(f"Model {model.name!r} has no named layers to choose from.")
        if value is not None:
            model.layer_path(value)  # a helpful error for an unknown layer
            if value not in options:
                options.append(value)
        super().__init__(options=options, value=options[0] if value is None else value, description=description,
                         style=CONTROL_STYLE, layout=ipywidgets.Layout(width="260px"), **kwargs)


class ImagePicker(ipywidgets.HBox):
    """The course's example images in a dropdown, plus the user's own file through ``ipywidgets.FileUpload``.

    ``pixels`` is the chosen image at ``size`` (the model's input size by default), a ``(1, 3, S, S)`` tensor;
    ``key`` names it for a cache key (each upload its own) and ``pixels_for(key)`` gives it back later, so a
    background computation uses the image it was started for. An upload that is not an image raises a
    ValueError saying which files work. An explorer wires the upload button when the picker is passed to
    ``on_compute``.
    """

    def __init__(self, initial: object = "cat", *, size: int, description: str = "image") -> None:
        self.size = size
        names = example_image_names()
        self.uploads = 0  # uploads taken so far: the n-th upload's key is (UPLOADED, n)
        self._loaded: dict[Hashable, torch.Tensor] = {}
        if isinstance(initial, torch.Tensor):
            self._loaded[UPLOADED, 0] = load_image(initial, size=size)
            value = UPLOADED
            names = [UPLOADED, *names]
        else:
            value = str(initial)
            if value not in names:
                self._loaded[UPLOADED, 0] = load_image(initial, size=size)  # a path or an array: its own entry
                names = [UPLOADED, *names]
                value = UPLOADED
        self.dropdown = ipywidgets.Dropdown(options=names, value=value, description=description,
                                            style=CONTROL_STYLE, layout=ipywidgets.Layout(width="260px"))
        self.upload = ipywidgets.FileUpload(accept="image/*", multiple=False, description="upload",
                                            layout=ipywidgets.Layout(width="100px"))
        super().__init__([self.dropdown, self.upload])

    @property
    def value(self) -> str:
        """The chosen entry's name (an example image name, or ``UPLOADED``)."""
        return self.dropdown.value

    @property
    def key(self) -> Hashable:
        """The chosen image's identity for cache keys: its name, or ``(UPLOADED, n)`` for the n-th upload."""
        return (UPLOADED, self.uploads) if self.dropdown.value == UPLOADED else self.dropdown.value

    @property
    def pixels(self) -> torch.Tensor:
        """The chosen image as ``(1, 3, size, size)`` pixels in [0, 1]."""
        return self.pixels_for(self.key)

    def pixels_for(self, key: Hashable) -> torch.Tensor:
        """The pixels of the image that was chosen under ``key`` (loaded once, kept)."""
        if key not in self._loaded:
            self._loaded[key] = load_image(key, size=self.size)
        return self._loaded[key]

    def take_upload(self) -> None:
        """Read the file in the upload button and select it; a file that is not an image raises ValueError."""
        files = self.upload.value
        if not files:
            return
        upload = files[-1]
        name = upload["name"] if isinstance(upload, dict) else upload.name
        content = upload["content"] if isinstance(upload, dict) else upload.content
        pixels = decode_upload(bytes(content), name, self.size)
        self.uploads += 1
        self._loaded[UPLOADED, self.uploads] = pixels
        if UPLOADED not in self.dropdown.options:
            self.dropdown.options = [UPLOADED, *self.dropdown.options]
        if self.dropdown.value == UPLOADED:
            self.dropdown.value = None  # re-select, so observers see a change
        self.dropdown.value = UPLOADED


def decode_upload(content: bytes, name: str, size: int) -> torch.Tensor:
    """An uploaded file's bytes -> ``(1, 3, size, size)`` pixels; a clear ValueError when it is not an image."""
    try:
        with Image.open(io.BytesIO(content)) as opened:
            array = np.asarray(opened.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"The uploaded file {name!r} is not an image viztools can read ({type(error).__name__}). "
            "Upload a PNG or JPEG photo."
        ) from error
    return load_image(array, size=size)


def predictions_html(model: VizModel, image: torch.Tensor, *, highlight: int | None = None, k: int = 5,
                     title: str = "Top-5 predictions", font_size: int = 13) -> str:
    """A small HTML table of the ``k`` most probable classes with bars (``highlight`` in bold, added if absent)."""
    top = model.top_k(image, k=min(k, len(model.categories)))
    rows = []
    for rank, (index, name, probability) in enumerate(top, start=1):
        rows.append(_prediction_row(str(rank), name, probability, bold=index == highlight))
    if highlight is not None and highlight not in [index for index, _, _ in top]:
        probability = float(model.predict(image)[0, highlight])
        rows.append(_prediction_row("#", model.categories[highlight], probability, bold=True))
    return (
        f'<div style="font-size:{font_size}px"><b>{html.escape(title)}</b>'
        f'<table style="border-spacing:6px 2px">{"".join(rows)}</table></div>'
    )


def _prediction_row(rank: str, name: str, probability: float, *, bold: bool) -> str:
    bar = f'<div style="background:#4c78a8;height:10px;width:{max(1, round(probability * 80))}px"></div>'
    return (
        f'<tr style="font-weight:{"bold" if bold else "normal"}"><td>{rank}.</td><td>{html.escape(name)}</td>'
        f'<td style="width:84px">{bar}</td><td style="text-align:right">{probability:.3f}</td></tr>'
    )


def header_html(title: str, blurb: str, model: VizModel, *, font_size: int = 15) -> str:
    """The explorer's header: its title, one line on the idea and paper, the model, and the model's note."""
    note = model.note
    note_html = f'<div style="color:#8a6d3b;font-size:{font_size - 3}px">{html.escape(note)}</div>' if note else ""
    return (
        f'<div style="font-size:{font_size}px"><b>{html.escape(title)}</b>: {html.escape(blurb)} '
        f'<span style="color:#777">Model: {html.escape(model.name)}</span></div>{note_html}'
    )


def described(description: str, control: ipywidgets.Widget) -> ipywidgets.HBox:
    """``control`` with a description aligned like the other controls' (ToggleButtons put theirs above)."""
    label = ipywidgets.HTML(
        f'<div style="text-align:right;padding-right:8px">{html.escape(description)}</div>',
        layout=ipywidgets.Layout(width=DESCRIPTION_WIDTH),
    )
    return ipywidgets.HBox([label, control], layout=ipywidgets.Layout(align_items="center"))


def sample_images(model: VizModel, count: int, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A labelled image set for views over a data set (top patches, t-SNE): ``(pixels, labels, class names)``.

    GlyphNet gets ``count`` GlyphWorld images (seed 1: not used in training), other models about ``count`` crops
    of the example photographs at their input size, labelled by photograph (as in lecture 02). Cached, so
    explorers share one set: do not modify the tensors.
    """
    pixels, labels, names = _sample_images(model.name == "glyphnet", model.input_size, count, seed)
    return pixels, labels, list(names)


@lru_cache(maxsize=4)
def _sample_images(glyphs: bool, size: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    if glyphs:
        pixels, labels = make_glyphworld(count, seed)
        return pixels, labels, CLASS_NAMES
    per_photo = max(1, round(count / len(PHOTO_NAMES)))
    crops = [torch.stack(list(PhotoCrops(per_photo, size=size, seed=seed, photos=[name]))) for name in PHOTO_NAMES]
    return torch.cat(crops), torch.arange(len(PHOTO_NAMES)).repeat_interleave(per_photo), PHOTO_NAMES
