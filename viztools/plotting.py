"""The plotting convention of viztools: figures without pyplot's global state, and one image-grid helper.

Every ``plot_*`` helper draws into ``ax`` when given and otherwise into a fresh ``matplotlib.figure.Figure``
(:func:`figure_and_axes`), and returns the figure: it shows once when it is a notebook cell's last expression
(or is passed to ``display``) and is never left open in pyplot. Grids of pictures use :func:`show_images`.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from viztools._validation import check_float, check_int
from viztools.data import to_numpy_image

#: Text size (points) of titles and labels in viztools' figures: readable on a projector, where a figure is often
#: shown scaled down to the notebook's width. No text in a lecture figure should be smaller than 10 points.
FONT_SIZE = 11.0


class _NotebookFigure(Figure):
    """A Figure that a notebook shows as PNG even where pyplot's inline backend was never set up."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(figsize: tuple[float, float] = (6.0, 4.0), **options: object) -> Figure:
    """A fresh constrained-layout Figure outside pyplot (never left open; shown once when a cell returns it)."""
    return _NotebookFigure(figsize=figsize, layout="constrained", **options)


def figure_and_axes(ax: Axes | None = None, *, figsize: tuple[float, float] = (6.0, 4.0)) -> tuple[Figure, Axes]:
    """``(the figure holding ax, ax)``, or a fresh constrained-layout Figure of ``figsize`` inches and its Axes."""
    if ax is not None:
        return ax.get_figure(root=True), ax
    figure = new_figure(figsize)
    return figure, figure.subplots()


def axes_grid(
    count: int,
    columns: int,
    *,
    ax: Axes | None = None,
    panel_size: float = 2.0,
    title_lines: int = 1,
    fontsize: float = FONT_SIZE,
) -> tuple[Figure | SubFigure, list[Axes]]:
    """A grid of ``count`` panels, ``columns`` per row: ``(container, axes)``; unused cells are removed.

    With ``ax`` the grid takes ``ax``'s place in its figure (a subfigure replaces it), so a grid can sit beside
    other plots; ``container.get_figure(root=True)`` is then the figure to return. Otherwise the container is a
    fresh Figure sized ``panel_size`` inches per panel plus room for
    ``title_lines`` lines of title (of ``fontsize`` points) per row.
    """
    count = check_int(count, "count", low=1)
    columns = min(check_int(columns, "columns", low=1), count)
    rows = math.ceil(count / columns)
    if ax is None:
        line = 1.3 * fontsize / 72  # inches per line of title, with matplotlib's line spacing
        height = rows * (panel_size + line * title_lines + (0.12 if title_lines else 0.0)) + 0.3
        container = new_figure((columns * panel_size + 0.3, height))
    else:
        container = ax.get_figure(root=False).add_subfigure(ax.get_subplotspec())
        ax.remove()
    axes = list(container.subplots(rows, columns, squeeze=False).flat)
    for extra in axes[count:]:
        extra.remove()
    return container, axes[:count]


def _as_array(image: object, index: int) -> np.ndarray:
    """A pixel tensor, an ``(H, W)`` tensor or an ``(H, W, 3)`` / ``(H, W)`` array -> an array for ``imshow``."""
    if isinstance(image, torch.Tensor):
        return image.detach().float().cpu().numpy() if image.dim() == 2 else to_numpy_image(image)
    array = np.asarray(image)
    if (array.ndim == 3 and array.shape[2] == 3) or array.ndim == 2:
        return array
    raise ValueError(
        f"Image {index} must be a pixel tensor (1, 3, H, W) / (3, H, W) or an (H, W, 3) or (H, W) array; got "
        f"shape {array.shape}. For a channels-first array use array.transpose(1, 2, 0)."
    )


def _wrapped(title: str, panel_size: float, fontsize: float) -> str:
    """``title`` wrapped to the panel's width (about 0.6 em per character)."""
    characters = max(6, int(panel_size * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, characters) for line in str(title).splitlines() or [""])


def show_images(
    images: Sequence[object] | torch.Tensor,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    *,
    ax: Axes | None = None,
    panel_size: float = 2.0,
    fontsize: float = FONT_SIZE,
    same_scale: bool = False,
    cmap: str = "gray",
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
) -> Figure:
    """Draw images in a grid, ``columns`` per row (default: up to 8), each with its title; return the Figure.

    ``images``: a batch ``(N, 3, H, W)`` of pixels, or a list of pixel tensors ``(1, 3, H, W)`` / ``(3, H, W)``
    and ``(H, W, 3)`` arrays (``(H, W)`` arrays or tensors, such as saliency maps, are drawn with ``cmap``, scaled
    to their range). Titles are
    wrapped to the panel's width, and the layout leaves them room, so they never overlap the row above.
    ``same_scale=True`` draws every image at the same pixel size (a smaller image looks smaller, centred in its
    panel) instead of stretching each to the panel. ``row_labels`` label the rows on the left, ``suptitle`` the
    whole grid. With ``ax`` the grid takes that Axes' place.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    arrays = [_as_array(image, index) for index, image in enumerate(images)]
    if not arrays:
        raise ValueError("images is empty; pass at least one image.")
    if titles is not None and len(titles) != len(arrays):
        raise ValueError(f"titles must hold one title per image ({len(arrays)}); got {len(titles)}.")
    panel_size = check_float(panel_size, "panel_size", low=0, low_inclusive=False)
    columns = min(len(arrays), 8 if columns is None else check_int(columns, "columns", low=1))
    rows = math.ceil(len(arrays) / columns)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels must hold one label per row ({rows}); got {len(row_labels)}.")
    texts = [_wrapped(title, panel_size, fontsize) for title in titles] if titles is not None else None
    lines = max((text.count("\n") + 1 for text in texts), default=0) if texts else 0
    container, axes = axes_grid(len(arrays), columns, ax=ax, panel_size=panel_size, title_lines=lines,
                                fontsize=fontsize)
    cell_height = max(array.shape[0] for array in arrays)
    cell_width = max(array.shape[1] for array in arrays)
    for index, (panel, array) in enumerate(zip(axes, arrays, strict=True)):
        options = {"cmap": cmap} if array.ndim == 2 else {}
        if same_scale:
            top, left = (cell_height - array.shape[0]) / 2, (cell_width - array.shape[1]) / 2
            extent = (left - 0.5, left + array.shape[1] - 0.5, top + array.shape[0] - 0.5, top - 0.5)
            panel.imshow(array, interpolation="nearest", extent=extent, **options)
            panel.set_xlim(-0.5, cell_width - 0.5)
            panel.set_ylim(cell_height - 0.5, -0.5)
        else:
            panel.imshow(array, interpolation="nearest" if max(array.shape[:2]) < 100 else "antialiased", **options)
        panel.set_xticks([])
        panel.set_yticks([])
        for spine in panel.spines.values():
            spine.set_visible(False)
        if texts is not None:
            panel.set_title(texts[index], fontsize=fontsize)
    for row, label in enumerate(row_labels or []):
        axes[row * columns].set_ylabel(label, fontsize=fontsize)
    if suptitle is not None:
        container.suptitle(suptitle, fontsize=fontsize + 1)
    return container.get_figure(root=True)
