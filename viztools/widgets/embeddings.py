"""EmbeddingExplorer: a t-SNE map of a layer's features; hover a point to see its image and its neighbours
(lecture 02).

Features of one layer for a data set are embedded in 2-D with t-SNE (van der Maaten & Hinton 2008), as in
Karpathy's map of CNN codes (:func:`viztools.embeddings.tsne_embedding`). The map is one plotly ``FigureWidget``
updated in place; hovering or clicking a point shows that image and its nearest neighbours in feature space, so
"features" and "raw pixels" can be compared on the same image.
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import ipywidgets
import numpy as np
import plotly.graph_objects as go
import torch
from sklearn.neighbors import NearestNeighbors
from torch import nn

from viztools.embeddings import (
    Embedding,
    chance_label_agreement,
    knn_label_agreement,
    layer_features,
    tsne_embedding,
)
from viztools.hooks import get_activations
from viztools.models import VizModel
from viztools.widgets._common import Job, hstack, resize_rgb, titled, to_rgb_uint8
from viztools.widgets.base import Explorer
from viztools.widgets.controls import CONTROL_STYLE, LayerPicker, described, sample_images

SOURCES = ("features", "raw pixels")
#: Neighbours shown beside the chosen image.
NEIGHBOURS = 6
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")


@dataclass
class TsneMap:
    """A t-SNE map, each point's nearest neighbours in feature space ``(n, NEIGHBOURS)``, the agreement of
    map neighbourhoods with the labels, what was embedded (``"fc1 features"``, ``"raw pixels"``) and what the
    labels are (``"class"``, or ``"photograph"`` for photo crops)."""

    embedding: Embedding
    neighbours: np.ndarray
    agreement: float
    what: str
    by: str


class EmbeddingExplorer(Explorer):
    """A t-SNE map of a layer's features (or raw pixels) coloured by class; hover or click a point to see its
    image and its nearest neighbours in feature space.

    Args:
        model: a :class:`~viztools.models.VizModel`.
        layer: the layer whose features are mapped (default: the deepest layer that is not the class scores).
        perplexity: t-SNE's neighbourhood size.
        images: how many images to map (GlyphWorld for GlyphNet, crops of the example photos else).
        scale: 1.0 normal, 1.5 for a projector: the map, panels and text grow together.
    """

    TITLE = "t-SNE map"
    BLURB = "images placed by the similarity of their features (van der Maaten & Hinton 2008; Karpathy)."

    def __init__(self, model: VizModel, layer: str | None = None, *, perplexity: float = 30.0,
                 images: int | None = None, scale: float = 1.0) -> None:
        super().__init__(model, scale=scale)
        self.count = images or (300 if self.model.name == "glyphnet" else 120)
        self.selected = 0
        if layer is None:  # the deepest layer that is not one channel per class
            blank = torch.zeros(1, 3, self.model.input_size, self.model.input_size, device=self.model.device)
            outputs = get_activations(self.model, blank, list(self.model.layers))
            layer = [name for name, out in outputs.items() if out.shape[1] != len(self.model.categories)][-1]
        self.layer_picker = LayerPicker(self.model, layer)
        self.perplexity_slider = ipywidgets.FloatSlider(
            value=perplexity, min=2.0, max=50.0, step=1.0, description="perplexity", continuous_update=False,
            style=CONTROL_STYLE, layout=ipywidgets.Layout(width="320px"))
        self.source_picker = ipywidgets.ToggleButtons(options=SOURCES, value=SOURCES[0],
                                                      style={"button_width": "100px"})
        self.figure = go.FigureWidget(layout={
            "width": round(1.9 * self.panel), "height": round(1.75 * self.panel), "font": {"size": self.font_size},
            "margin": {"l": 10, "r": 10, "t": round(30 * self.scale), "b": 10}, "hovermode": "closest",
            "xaxis": {"visible": False}, "yaxis": {"visible": False}, "template": "simple_white",
            "legend": {"font": {"size": self.font_size - 2}, "itemsizing": "constant"},
            "modebar": {"remove": ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "toImage"]}})
        for colour in _COLOURS:
            self.figure.add_scatter(x=[], y=[], mode="markers", marker={"color": colour, "size": round(7 * self.scale)},
                                    visible=False, hovertemplate="#%{customdata}<extra>%{fullData.name}</extra>")
        self.figure.add_scatter(x=[], y=[], mode="markers", name="chosen and neighbours", hoverinfo="skip",
                                marker={"symbol": "circle-open", "size": round(14 * self.scale), "color": "black",
                                        "line": {"width": 2}})
        for trace in self.figure.data[:-1]:
            trace.on_click(self._picked)
            trace.on_hover(self._picked)
        self._pixels_model = _pixels_model(self.model)
        self._plotted: TsneMap | None = None
        self._features: dict[tuple[str, str], tuple] = {}
        self.on_compute(self.layer_picker, self.perplexity_slider, self.source_picker)
        main = ipywidgets.HBox([self.figure, self.picture], layout=ipywidgets.Layout(flex_flow="row wrap",
                                                                                      align_items="center"))
        self.assemble([ipywidgets.VBox([self.layer_picker, self.perplexity_slider]),
                       described("embed", self.source_picker)], main=main)
        self._guarded(self.refresh, "Starting")

    def compute_key(self) -> Hashable:
        return self.layer_picker.value, self.perplexity_slider.value, self.source_picker.value

    def compute(self, key: Hashable, job: Job) -> Iterator[TsneMap]:
        layer, perplexity, source = key
        pixels, labels, names = sample_images(self.model, self.count)
        raw = source == SOURCES[1]
        embedded_model, embedded_layer = (self._pixels_model, "pixels") if raw else (self.model, layer)
        pooling = "flatten" if raw else "average"
        what = "raw pixels" if raw else f"{layer} features"
        # A PCA preview in a second or so (t-SNE takes several): the map appears, then refines. The features do
        # not depend on the perplexity: kept per layer, so a perplexity change previews at once.
        if (embedded_layer, pooling) not in self._features:
            self._features[embedded_layer, pooling] = layer_features(
                embedded_model, pixels, layer=embedded_layer, pooling=pooling, thumbnail_size=64)
        features, _, thumbnails = self._features[embedded_layer, pooling]
        preview = Embedding(embedded_layer, pooling, _pca_2d(features), features, labels.numpy(), names, thumbnails)
        yield self._tsne_map(preview, f"{what}, PCA preview (t-SNE running ...)")
        if job.should_stop():
            return
        embedding = tsne_embedding(embedded_model, pixels, layer=embedded_layer, labels=labels, class_names=names,
                                   pooling=pooling, perplexity=min(perplexity, len(pixels) - 1), thumbnail_size=64)
        yield self._tsne_map(embedding, what)

    def is_final(self, result: TsneMap, key: Hashable) -> bool:
        return not result.what.endswith("(t-SNE running ...)")

    def _tsne_map(self, embedding: Embedding, what: str) -> TsneMap:
        neighbours = NearestNeighbors(n_neighbors=NEIGHBOURS).fit(embedding.features).kneighbors(
            return_distance=False)
        agreement = knn_label_agreement(embedding.coordinates, embedding.labels)
        by = "class" if self.model.name == "glyphnet" else "photograph"
        return TsneMap(embedding, neighbours, agreement, what, by)

    def draw(self, result: TsneMap) -> np.ndarray:
        if result is not self._plotted:
            self._plot(result)
        embedding, index = result.embedding, self.selected
        side = round(0.8 * self.panel)
        small = (side - 2 * 4) // 3 - 4  # three framed neighbours per row
        chosen = titled(resize_rgb(to_rgb_uint8(embedding.images[index]), (side, side)),
                        f"#{index} {embedding.class_names[embedding.labels[index]]}", size=self.font_size)
        tiles = [_framed(resize_rgb(to_rgb_uint8(embedding.images[n]), (small, small)),
                         (40, 160, 40) if embedding.labels[n] == embedding.labels[index] else (210, 40, 40))
                 for n in result.neighbours[index]]
        rows = [hstack(tiles[i : i + 3], gap=4) for i in range(0, len(tiles), 3)]
        grid = np.concatenate([np.pad(row, ((4, 0), (0, 0), (0, 0)), constant_values=255) for row in rows])
        return np.concatenate([chosen, titled(grid, "nearest neighbours", size=self.font_size)])

    def describe(self, result: TsneMap) -> str:
        labels = result.embedding.labels
        same = int((labels[result.neighbours[self.selected]] == labels[self.selected]).sum())
        return (f'<div style="font-size:{self.font_size}px">t-SNE of {html.escape(result.what)} '
                f"({len(labels)} images): map neighbourhoods agree with the {result.by} {result.agreement:.2f} "
                f"(chance {chance_label_agreement(labels):.2f}). Image #{self.selected}: {same} of {NEIGHBOURS} "
                f"nearest neighbours share its {result.by} (green). Hover or click a point.</div>")

    def select(self, index: int) -> None:
        """Show image ``index`` and its neighbours (what hovering or clicking its point does)."""
        with self._runner.lock:
            if self.shown is None or not 0 <= index < len(self.shown.neighbours):
                return
            self.selected = int(index)
            self._highlight(self.shown)
        self.redraw()

    def _picked(self, trace: go.Scatter, points: object, state: object) -> None:
        if points.point_inds:
            self._guarded(lambda: self.select(int(trace.customdata[points.point_inds[0]])), "Choosing a point")

    def _plot(self, result: TsneMap) -> None:
        embedding = result.embedding
        x, y = embedding.coordinates[:, 0], embedding.coordinates[:, 1]
        with self.figure.batch_update():
            for label, trace in enumerate(self.figure.data[:-1]):
                chosen = np.flatnonzero(embedding.labels == label)
                trace.update(x=x[chosen], y=y[chosen], customdata=chosen, visible=len(chosen) > 0,
                             name=embedding.class_names[label] if label < len(embedding.class_names) else "")
            self._highlight(result)
        self._plotted = result

    def _highlight(self, result: TsneMap) -> None:
        chosen = [self.selected, *result.neighbours[self.selected]]
        self.figure.data[-1].update(x=result.embedding.coordinates[chosen, 0],
                                    y=result.embedding.coordinates[chosen, 1])


def _pca_2d(features: np.ndarray) -> np.ndarray:
    """The first two principal components of ``features`` (rows: images)."""
    centred = features - features.mean(axis=0, keepdims=True)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:2].T


def _framed(tile: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    framed = np.empty((tile.shape[0] + 4, tile.shape[1] + 4, 3), np.uint8)
    framed[:] = colour
    framed[2:-2, 2:-2] = tile
    return framed


def _pixels_model(model: VizModel) -> VizModel:
    """A model whose one layer ``"pixels"`` is the input itself (no normalization): t-SNE of raw pixels."""
    return VizModel(name=f"{model.name} (raw pixels)", network=nn.Sequential(nn.Identity()),
                    categories=model.categories, input_size=model.input_size, mean=(0.0, 0.0, 0.0),
                    std=(1.0, 1.0, 1.0), layers={"pixels": "0"})
