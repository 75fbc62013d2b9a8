"""t-SNE maps of a layer's features: which images does the network consider similar? (lecture "02_tsne").

Features of one layer for a data set are reduced with PCA and embedded in 2-D with t-SNE (van der Maaten &
Hinton, "Visualizing Data using t-SNE", 2008), as in Karpathy's t-SNE of CNN codes (the 4096-d fc7 features of
ImageNet images). The "t-SNE grid" snaps the images onto a regular grid by solving a linear assignment problem
(scipy's ``linear_sum_assignment``), so the map can be shown as a tidy mosaic of thumbnails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from viztools._validation import check_choice, check_float, check_int, check_model
from viztools.data import ImageSource, to_numpy_image
from viztools.hooks import get_activations
from viztools.models import VizModel
from viztools.plotting import figure_and_axes

POOLINGS = ("average", "flatten")


@dataclass
class Embedding:
    """A 2-D t-SNE map of one layer's features.

    Attributes:
        layer: the layer as given; pooling: how spatial maps became vectors (``"average"`` or ``"flatten"``).
        coordinates: ``(n, 2)`` t-SNE positions.
        features: ``(n, d)`` the layer's features (after pooling, before PCA).
        labels: ``(n,)`` class indices, or None when the images carry none.
        class_names: names for the label values (None without labels).
        images: ``(n, 3, t, t)`` thumbnails of the images, in [0, 1].
    """

    layer: str
    pooling: str
    coordinates: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    images: torch.Tensor


def layer_features(
    model: VizModel,
    images: object,
    *,
    layer: str,
    pooling: str = "average",
    batch_size: int = 128,
    thumbnail_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor | None]:
    """One feature vector per image: ``(features (n, d), labels (n,) or None, thumbnails or None)``.

    Spatial outputs ``(C, H, W)`` are global-average-pooled to ``C`` values (``pooling="average"``) or flattened
    to ``C*H*W`` (``"flatten"``); vector outputs are used as they are. ``images`` is anything
    :class:`viztools.data.ImageSource` reads; labels come from data sets that yield ``(pixels, label)``.
    With ``thumbnail_size``, images larger than that are also shrunk to it and returned (else None).
    """
    model = check_model(model)
    pooling = check_choice(pooling, "pooling", POOLINGS)
    model.layer_path(layer)
    if thumbnail_size is not None:
        thumbnail_size = check_int(thumbnail_size, "thumbnail_size", low=1)
    source = ImageSource(images, size=model.input_size)
    features, labels, thumbnails = [], [], []
    for _, pixels, batch_labels in source.batches(batch_size):
        output = get_activations(model, pixels, [layer])[layer]
        if output.dim() == 4 and pooling == "average":
            output = output.mean(dim=(2, 3))
        features.append(output.flatten(1).float().cpu().numpy().copy())
        labels.append(batch_labels)
        if thumbnail_size is not None:
            if max(pixels.shape[2:]) > thumbnail_size:
                pixels = F.interpolate(pixels, size=(thumbnail_size, thumbnail_size), mode="bilinear",
                                       antialias=True, align_corners=False).clamp(0, 1)
            thumbnails.append(pixels)
    found = None if any(batch is None for batch in labels) else torch.cat(labels).numpy()
    return np.concatenate(features), found, torch.cat(thumbnails) if thumbnail_size is not None else None


def tsne_embedding(
    model: VizModel,
    images: object,
    *,
    layer: str,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    pooling: str = "average",
    pca_dims: int | None = 50,
    perplexity: float = 30.0,
    seed: int | None = 0,
    batch_size: int = 128,
    thumbnail_size: int = 64,
    threads: int | None = 1,
) -> Embedding:
    """t-SNE map of ``layer``'s features for a data set (van der Maaten & Hinton 2008; Karpathy's CNN codes).

    Features (see :func:`layer_features`) are reduced with PCA to ``pca_dims`` dimensions (None: no PCA) and
    embedded with scikit-learn's t-SNE (PCA initialisation, ``random_state=seed``), so a run is repeatable
    (``seed=None``: fresh randomness, as everywhere in viztools).
    ``labels`` override labels carried by the data set; ``class_names`` default to the model's categories.
    ``threads`` caps the OpenMP/BLAS threads of PCA and t-SNE (None: all cores). The default 1 is deliberate:
    t-SNE's OpenMP threads spin while waiting, and on a busy or shared machine that made a 500-image map ten
    times slower (78 s vs 7 s here); the result is the same either way.
    """
    model = check_model(model)
    perplexity = check_float(perplexity, "perplexity", low=0, low_inclusive=False)
    seed = None if seed is None else check_int(seed, "seed", low=0)
    if threads is not None:
        threads = check_int(threads, "threads", low=1)
    if pca_dims is not None:
        pca_dims = check_int(pca_dims, "pca_dims", low=2)
    features, found_labels, thumbnails = layer_features(model, images, layer=layer, pooling=pooling,
                                                        batch_size=batch_size, thumbnail_size=thumbnail_size)
    count = len(features)
    if perplexity >= count:
        raise ValueError(f"perplexity must be smaller than the number of images ({count}); got {perplexity:g}. "
                         "Use more images or a perplexity of about 5-50 (and well below the image count).")
    if labels is not None:
        found_labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        if found_labels.shape != (count,):
            raise ValueError(f"labels must hold one class index per image ({count}); got shape {found_labels.shape}.")
    names = None
    if found_labels is not None:
        names = list(class_names) if class_names is not None else list(model.categories)
        if found_labels.min() < 0 or found_labels.max() >= len(names):
            raise ValueError(f"labels must lie in 0..{len(names) - 1} to be named by class_names; got "
                             f"{found_labels.min()}..{found_labels.max()}. Pass class_names=[...].")
    reduced = features
    with threadpool_limits(limits=threads):
        if pca_dims is not None and features.shape[1] > pca_dims:
            reduced = PCA(n_components=min(pca_dims, count), random_state=seed).fit_transform(features)
        coordinates = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                           random_state=seed).fit_transform(reduced.astype(np.float64))
    return Embedding(layer=layer, pooling=pooling, coordinates=coordinates, features=features, labels=found_labels,
                     class_names=names, images=thumbnails)


def knn_label_agreement(coordinates: np.ndarray, labels: np.ndarray, *, k: int = 10) -> float:
    """Mean fraction of each point's k nearest neighbours (itself excluded) that share its label.

    1.0 means every neighbourhood is pure; unrelated labels give about :func:`chance_label_agreement`.
    """
    coordinates, labels = np.asarray(coordinates), np.asarray(labels)
    if coordinates.ndim != 2 or labels.shape != (len(coordinates),):
        raise ValueError(f"coordinates must be (n, dims) and labels (n,); got {coordinates.shape} and {labels.shape}.")
    k = check_int(k, f"k (fewer than the {len(coordinates)} points)", low=1, high=len(coordinates) - 1)
    neighbours = NearestNeighbors(n_neighbors=k).fit(coordinates).kneighbors(return_distance=False)
    return float((labels[neighbours] == labels[:, None]).mean())


def chance_label_agreement(labels: np.ndarray) -> float:
    """Expected :func:`knn_label_agreement` for neighbours drawn at random: sum over classes of p_c (n_c-1)/(n-1)."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        raise ValueError("chance_label_agreement needs at least 2 labels.")
    counts = np.unique(labels, return_counts=True)[1]
    return float((counts * (counts - 1)).sum() / (len(labels) * (len(labels) - 1)))


# --------------------------------------------------------------------------------------------------------------
# t-SNE grid
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TsneGrid:
    """Points snapped to a ``rows`` x ``columns`` grid by an optimal assignment.

    Attributes:
        cells: ``(n,)`` cell of each point, ``row * columns + col``; all different.
        positions: ``(n, 2)`` the ``(row, col)`` of each point; row 0 is the top (largest t-SNE y).
        normalized: ``(n, 2)`` the t-SNE coordinates min-max scaled to the unit square, as ``(x, y)``.
        cell_centers: ``(rows * columns, 2)`` centre ``(x, y)`` of every cell in the unit square.
        cost: total squared distance from the points to their cells (the minimum over all assignments).
    """

    rows: int
    columns: int
    cells: np.ndarray
    positions: np.ndarray
    normalized: np.ndarray
    cell_centers: np.ndarray
    cost: float


def _unit_square(coordinates: np.ndarray) -> np.ndarray:
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (coordinates - low) / span, 0.5)


def tsne_grid(embedding: Embedding | np.ndarray, *, rows: int | None = None, columns: int | None = None) -> TsneGrid:
    """Snap a 2-D map onto a grid: the assignment of points to cells with least total squared distance.

    Coordinates are scaled to the unit square; cell ``(r, c)`` has centre ``((c + 0.5) / columns,
    1 - (r + 0.5) / rows)``, so the grid keeps the map's orientation. Solved exactly with the Hungarian method
    (``scipy.optimize.linear_sum_assignment``). Default: ``columns = ceil(sqrt(n))``, just enough rows.
    """
    coordinates = embedding.coordinates if isinstance(embedding, Embedding) else np.asarray(embedding, dtype=float)
    if coordinates.ndim != 2 or coordinates.shape[1] != 2 or len(coordinates) == 0:
        raise ValueError(f"tsne_grid needs (n, 2) coordinates; got shape {coordinates.shape}.")
    count = len(coordinates)
    columns = math.ceil(math.sqrt(count)) if columns is None else check_int(columns, "columns", low=1)
    rows = math.ceil(count / columns) if rows is None else check_int(rows, "rows", low=1)
    if rows * columns < count:
        raise ValueError(f"A {rows}x{columns} grid has fewer cells than the {count} points; enlarge rows or columns.")
    normalized = _unit_square(coordinates)
    grid_rows, grid_cols = np.divmod(np.arange(rows * columns), columns)
    centers = np.stack([(grid_cols + 0.5) / columns, 1 - (grid_rows + 0.5) / rows], axis=1)
    cost = ((normalized[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    points, cells = linear_sum_assignment(cost)
    order = np.empty(count, dtype=np.int64)
    order[points] = cells
    positions = np.stack(np.divmod(order, columns), axis=1)
    return TsneGrid(rows=rows, columns=columns, cells=order, positions=positions, normalized=normalized,
                    cell_centers=centers, cost=float(cost[points, cells].sum()))


def _class_colours(count: int) -> np.ndarray:
    """Colours that differ: tab10's ten, then black, then tab20's light tints (its pairs sit far apart in the
    list, so neighbouring classes never get a colour and its tint); ``turbo`` beyond 21."""
    if count > 21:
        return np.array([matplotlib.colormaps["turbo"](i / (count - 1))[:3] for i in range(count)])
    tab10, tab20 = matplotlib.colormaps["tab10"], matplotlib.colormaps["tab20"]
    palette = [tab10(i)[:3] for i in range(10)] + [(0.0, 0.0, 0.0)] + [tab20(2 * i + 1)[:3] for i in range(10)]
    return np.array(palette[:count])


def tsne_grid_image(embedding: Embedding, grid: TsneGrid, *, frame: int = 2) -> np.ndarray:
    """The grid as one ``(H, W, 3)`` image: each thumbnail in its cell, framed in its class colour.

    ``frame`` pixels of class colour surround each thumbnail when the embedding has labels (0: none); empty
    cells stay white.
    """
    frame = check_int(frame, "frame", low=0) if embedding.labels is not None else 0
    side = embedding.images.shape[2]
    cell = side + 2 * frame
    image = np.ones((grid.rows * cell, grid.columns * cell, 3), dtype=np.float32)
    colours = _class_colours(len(embedding.class_names)) if embedding.labels is not None else None
    for index, (row, col) in enumerate(grid.positions):
        top, left = row * cell, col * cell
        if colours is not None:
            image[top : top + cell, left : left + cell] = colours[embedding.labels[index]]
        image[top + frame : top + frame + side, left + frame : left + frame + side] = to_numpy_image(
            embedding.images[index])
    return image


def plot_tsne(embedding: Embedding, *, ax: Axes | None = None, point_size: float = 12.0) -> Figure:
    """Scatter the t-SNE map, coloured by class with a legend of class names (one colour without labels)."""
    figure, ax = figure_and_axes(ax, figsize=(7.5, 6))
    x, y = embedding.coordinates[:, 0], embedding.coordinates[:, 1]
    if embedding.labels is None:
        ax.scatter(x, y, s=point_size, color="tab:blue", alpha=0.8, linewidths=0)
    else:
        colours = _class_colours(len(embedding.class_names))
        for label in np.unique(embedding.labels):
            chosen = embedding.labels == label
            ax.scatter(x[chosen], y[chosen], s=point_size, color=colours[label], alpha=0.8, linewidths=0,
                       label=embedding.class_names[label])
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=10, frameon=False, markerscale=1.5)
    ax.set_title(f"t-SNE of {embedding.layer} features ({len(x)} images)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    return figure


def plot_tsne_grid(embedding: Embedding, *, grid: TsneGrid | None = None, ax: Axes | None = None) -> Figure:
    """Draw the t-SNE grid mosaic of thumbnails (:func:`tsne_grid`, :func:`tsne_grid_image`; default grid:
    ``tsne_grid(embedding)``)."""
    grid = tsne_grid(embedding) if grid is None else grid
    image = tsne_grid_image(embedding, grid)
    figure, ax = figure_and_axes(ax, figsize=(10, 10 * grid.rows / grid.columns))
    ax.imshow(image, interpolation="antialiased")
    ax.set_title(f"t-SNE grid of {embedding.layer} features ({len(grid.cells)} images)", fontsize=10)
    ax.set_axis_off()
    return figure
