"""show_images and the figure helpers: what is drawn where, titles that fit, no pyplot state, clear errors."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from viztools.data import to_numpy_image
from viztools.plotting import axes_grid, figure_and_axes, new_figure, show_images


def test_show_images_draws_each_image_with_its_title() -> None:
    batch = torch.rand(5, 3, 6, 8)
    array = np.random.default_rng(0).random((6, 8, 3))
    images = [batch[0], batch[1:2], array, (array * 255).astype(np.uint8), array[..., 0], batch[2, 0]]
    figure = show_images(images, ["a", "b", "c", "d", "e", "f"], columns=3, cmap="inferno")
    assert isinstance(figure, Figure) and len(figure.axes) == 6
    assert figure.axes[0].get_subplotspec().get_geometry()[:2] == (2, 3)
    assert [ax.get_title() for ax in figure.axes] == ["a", "b", "c", "d", "e", "f"]
    drawn = [ax.get_images()[0] for ax in figure.axes]
    assert np.array_equal(drawn[0].get_array(), to_numpy_image(batch[0]))
    assert np.array_equal(drawn[1].get_array(), to_numpy_image(batch[1]))
    assert np.array_equal(drawn[2].get_array(), array) and drawn[4].get_cmap().name == "inferno"
    assert np.array_equal(drawn[5].get_array(), batch[2, 0].numpy()) and drawn[5].get_cmap().name == "inferno"
    assert len(show_images(batch).axes) == 5  # a batch tensor is a list of images; default up to 8 per row


def test_long_titles_wrap_to_the_panel_and_rows_get_labels() -> None:
    title = "a rather long title that would run into the next panel"
    figure = show_images(torch.rand(4, 3, 8, 8), [title] * 4, columns=2, panel_size=1.0, fontsize=9,
                         row_labels=["first", "second"], suptitle="all")
    wrapped = figure.axes[0].get_title()
    assert wrapped.replace("\n", " ") == title and wrapped.count("\n") >= 2
    assert [ax.get_ylabel() for ax in figure.axes] == ["first", "", "second", ""]
    assert figure.get_suptitle() == "all"
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # constrained layout leaves each row's titles room: no title overlaps the row above
    renderer = canvas.get_renderer()
    upper_image_bottom = figure.axes[0].get_window_extent(renderer).y0
    lower_title_top = figure.axes[2].title.get_window_extent(renderer).y1
    assert lower_title_top <= upper_image_bottom


def test_same_scale_keeps_smaller_images_smaller() -> None:
    figure = show_images([torch.rand(3, 10, 10), torch.rand(3, 4, 6)], same_scale=True)
    assert all(ax.get_xlim() == (-0.5, 9.5) and ax.get_ylim() == (9.5, -0.5) for ax in figure.axes)
    assert figure.axes[1].get_images()[0].get_extent() == [1.5, 7.5, 6.5, 2.5]  # centred 6 x 4


def test_grid_takes_the_place_of_a_given_axes() -> None:
    figure = Figure()
    left, right = figure.subplots(1, 2)
    assert show_images(torch.rand(3, 3, 4, 4), ["x", "y", "z"], ax=right) is figure
    assert figure.axes[0] is left and right not in figure.axes
    assert [ax.get_title() for ax in figure.axes[1:]] == ["x", "y", "z"]
    container, axes = axes_grid(5, 2)
    assert isinstance(container, Figure) and len(axes) == 5 and len(container.axes) == 5  # the 6th cell is gone


def test_figures_stay_out_of_pyplot_and_show_in_notebooks() -> None:
    open_before = plt.get_fignums()
    figure, ax = figure_and_axes()
    show_images(torch.rand(2, 3, 4, 4))
    assert plt.get_fignums() == open_before
    assert figure.axes == [ax] and figure_and_axes(ax) == (figure, ax)
    assert figure._repr_png_().startswith(b"\x89PNG") and new_figure().get_layout_engine() is not None


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        show_images([])
    with pytest.raises(ValueError, match=r"one title per image \(2\); got 1"):
        show_images(torch.rand(2, 3, 4, 4), ["only one"])
    with pytest.raises(ValueError, match=r"Image 1 must be .*transpose\(1, 2, 0\)"):
        show_images([np.zeros((4, 4, 3)), np.zeros((3, 4, 4))])
    with pytest.raises(ValueError, match="Index one image"):
        show_images([torch.rand(2, 3, 4, 4)])
    with pytest.raises(ValueError, match=r"one label per row \(1\); got 2"):
        show_images(torch.rand(2, 3, 4, 4), row_labels=["a", "b"])
    with pytest.raises(ValueError, match="columns"):
        show_images(torch.rand(2, 3, 4, 4), columns=0)
