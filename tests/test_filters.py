"""Filter pictures: layer resolution, tile shapes, the documented [0, 1] scalings, known colours, errors."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import viztools
from viztools.filters import filter_grid, plot_filters, resolve_conv
from viztools.hooks import has_hooks
from viztools.models import VizModel


@pytest.fixture(scope="module")
def random_squeezenet() -> VizModel:
    return viztools.load_model("squeezenet1_0", weights="random")


def colour_filters() -> VizModel:
    """conv 3->3, 3x3: filter 0 is +R -G -B (pure red), filter 1 constant, filter 2 a vertical edge in green."""
    conv = nn.Conv2d(3, 3, kernel_size=3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[0, 1:] = -1.0
        conv.weight[1] = 0.25
        conv.weight[2, 1, :, 0], conv.weight[2, 1, :, 2] = -1.0, 1.0
    network = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))
    return VizModel(name="colours", network=network, categories=["a", "b", "c"], input_size=8, mean=(0, 0, 0),
                    std=(1, 1, 1), layers={"conv": "relu", "pool": "pool"})


def minmax(values: torch.Tensor) -> np.ndarray:
    return ((values - values.min()) / (values.max() - values.min())).numpy()


def test_glyphnet_first_layer_is_rgb_tiles_each_scaled_on_its_own(random_glyphnet: VizModel) -> None:
    conv1 = random_glyphnet.network.features.conv1
    count = conv1.out_channels
    grid = filter_grid(random_glyphnet, layer="conv1")
    assert (grid.conv_path, grid.mode, grid.weight_shape) == ("features.conv1", "rgb", (count, 3, 7, 7))
    assert grid.tiles.shape == (count, 7, 7, 3) and grid.channels == list(range(count))
    assert np.allclose(grid.tiles.min(axis=(1, 2, 3)), 0) and np.allclose(grid.tiles.max(axis=(1, 2, 3)), 1)
    assert np.allclose(grid.tiles[5], minmax(conv1.weight[5]).transpose(1, 2, 0), atol=1e-6)
    # A near-square grid of 7 px tiles, 1 px apart.
    columns = math.ceil(math.sqrt(count))
    assert grid.columns == columns
    assert grid.mosaic.shape == (math.ceil(count / columns) * 8 - 1, columns * 8 - 1, 3)
    row, col = divmod(7, columns)
    assert np.array_equal(grid.mosaic[row * 8 : row * 8 + 7, col * 8 : col * 8 + 7], grid.tiles[7])
    assert np.all(grid.mosaic[7, :] == 1.0)  # white gap


def test_global_scaling_keeps_relative_magnitudes(random_glyphnet: VizModel) -> None:
    grid = filter_grid(random_glyphnet, layer="conv1", channels=[0, 3, 9], normalize="global")
    weight = random_glyphnet.network.features.conv1.weight[[0, 3, 9]]
    assert np.allclose(grid.tiles, minmax(weight).transpose(0, 2, 3, 1), atol=1e-6)
    assert grid.tiles.min() == 0 and grid.tiles.max() == 1


def test_known_colour_filters() -> None:
    grid = filter_grid(colour_filters(), layer="conv")
    assert np.array_equal(grid.tiles[0], np.broadcast_to([1.0, 0.0, 0.0], (3, 3, 3)))  # pure red
    assert np.all(grid.tiles[1] == 0.5)  # a constant filter has no range: shown mid-grey
    green = grid.tiles[2][..., 1]
    assert np.array_equal(green, np.array([[0, 0.5, 1]] * 3))  # dark-to-bright from left to right
    assert np.all(grid.tiles[2][..., 0] == 0.5) and np.all(grid.tiles[2][..., 2] == 0.5)


def test_friendly_names_resolve_to_the_producing_conv(random_glyphnet: VizModel, random_squeezenet: VizModel) -> None:
    assert resolve_conv(random_glyphnet, "conv1")[0] == "features.conv1"  # the ReLU after the conv
    assert resolve_conv(random_glyphnet, "pool2")[0] == "features.conv2"  # nearest conv before the pool
    assert resolve_conv(random_glyphnet, "features.conv3")[0] == "features.conv3"
    assert resolve_conv(random_squeezenet, "conv1")[0] == "features.0"
    assert resolve_conv(random_squeezenet, "fire2")[0] == "features.3.expand3x3"  # last conv inside the block
    assert resolve_conv(random_squeezenet, "pool4")[0] == "features.5.expand3x3"
    assert resolve_conv(random_squeezenet, "features.3.squeeze")[1] is random_squeezenet.network.features[3].squeeze
    assert not has_hooks(random_squeezenet.network)


def test_squeezenet_first_layer_is_96_rgb_tiles(random_squeezenet: VizModel) -> None:
    grid = filter_grid(random_squeezenet, layer="conv1")
    assert grid.tiles.shape == (96, 7, 7, 3) and grid.columns == 10
    assert grid.mosaic.shape == (10 * 8 - 1, 10 * 8 - 1, 3)


def test_deeper_layers_show_per_input_channel_maps(random_glyphnet: VizModel) -> None:
    conv2 = random_glyphnet.network.features.conv2
    inputs = conv2.in_channels
    grid = filter_grid(random_glyphnet, layer="conv2")
    assert grid.mode == "grey" and grid.tiles.shape == (8, inputs, 3, 3) and grid.channels == list(range(8))
    assert grid.input_channels == list(range(inputs))
    assert grid.mosaic.shape == (8 * 4 - 1, inputs * 4 - 1, 3)
    assert np.allclose(grid.tiles.min(axis=(1, 2, 3)), 0) and np.allclose(grid.tiles.max(axis=(1, 2, 3)), 1)
    mosaic_tile = grid.mosaic[4:7, 8:11]  # output row 1, input column 2
    assert np.array_equal(mosaic_tile, np.repeat(grid.tiles[1, 2][..., None], 3, axis=2))

    last = conv2.out_channels - 1
    subset = filter_grid(random_glyphnet, layer="conv2", channels=[5, last], input_channels=[1, 2, inputs - 1],
                         normalize="map")
    assert subset.tiles.shape == (2, 3, 3, 3) and subset.input_channels == [1, 2, inputs - 1]
    assert np.allclose(subset.tiles[1, 2], minmax(conv2.weight[last, inputs - 1]), atol=1e-6)
    assert np.allclose(subset.tiles.min(axis=(2, 3)), 0) and np.allclose(subset.tiles.max(axis=(2, 3)), 1)


def test_bad_arguments_raise_clear_errors(random_glyphnet: VizModel) -> None:
    count = random_glyphnet.network.features.conv1.out_channels
    with pytest.raises(ValueError, match=r"produced by the Linear layer 'classifier\.fc1'"):
        filter_grid(random_glyphnet, layer="fc1")
    with pytest.raises(ValueError, match=r"is a Linear layer.*Choose a convolutional layer: conv1, pool1, conv2"):
        filter_grid(random_glyphnet, layer="logits")
    with pytest.raises(ValueError, match="Unknown layer 'conv7'"):
        filter_grid(random_glyphnet, layer="conv7")
    with pytest.raises(ValueError, match=rf"channels entry \(the layer has {count}\)"):
        filter_grid(random_glyphnet, layer="conv1", channels=[0, count])
    with pytest.raises(ValueError, match="non-empty list"):
        filter_grid(random_glyphnet, layer="conv1", channels=[])
    with pytest.raises(ValueError, match=rf"{count} input channels.*mode='grey'"):
        filter_grid(random_glyphnet, layer="conv2", mode="rgb")
    with pytest.raises(ValueError, match="change the colours"):
        filter_grid(random_glyphnet, layer="conv1", normalize="map")
    with pytest.raises(ValueError, match=r"Unknown mode 'gray'.*Did you mean 'grey'"):
        filter_grid(random_glyphnet, layer="conv1", mode="gray")
    with pytest.raises(ValueError, match="input_channels applies to mode='grey'"):
        filter_grid(random_glyphnet, layer="conv1", input_channels=[0])
    with pytest.raises(ValueError, match="columns applies to mode='rgb'"):
        filter_grid(random_glyphnet, layer="conv2", columns=4)
    linear = VizModel(name="linear", network=nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), categories=["a", "b"],
                      input_size=2, mean=(0, 0, 0), std=(1, 1, 1), layers={"flat": "0"})
    with pytest.raises(ValueError, match=r"has no Conv2d before it.*\(this model has none\)"):
        filter_grid(linear, layer="flat")
    assert not has_hooks(random_glyphnet.network) and not has_hooks(linear.network)


def test_plots_side_by_side_and_grey_axes(random_glyphnet: VizModel, random_squeezenet: VizModel) -> None:
    figure = Figure()
    axes = figure.subplots(1, 2)
    assert plot_filters(filter_grid(random_glyphnet, layer="conv1"), ax=axes[0]) is figure
    plot_filters(filter_grid(random_squeezenet, layer="conv1"), ax=axes[1])
    assert np.array_equal(axes[0].get_images()[0].get_array(), filter_grid(random_glyphnet, layer="conv1").mosaic)
    assert axes[1].get_images()[0].get_array().shape == (79, 79, 3)
    assert "96 filters 3x7x7" in axes[1].get_title()
    assert "glyphnet conv1" in axes[0].get_title()
    figure = plot_filters(filter_grid(random_glyphnet, layer="conv3", channels=[2, 4], input_channels=[0, 1, 2]))
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["2", "4"]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["0", "1", "2"]
    with pytest.raises(TypeError, match=r"plot_filters\(filter_grid\(model, layer='conv1'\)\)"):
        plot_filters(random_glyphnet)


def test_plain_module_gets_a_message_naming_vizmodel(random_glyphnet: VizModel) -> None:
    with pytest.raises(TypeError, match=r"VizModel, not a plain torch\.nn\.Module"):
        filter_grid(random_glyphnet.network, layer="conv1")
    with pytest.raises(TypeError, match=r"VizModel, not a plain torch\.nn\.Module"):
        resolve_conv(random_glyphnet.network, "conv1")


@pytest.mark.imagenet
def test_trained_first_layer_filters_are_smooth(imagenet_squeezenet: VizModel, random_squeezenet: VizModel) -> None:
    """Trained conv1 filters are edges and colour blobs; random ones are noise (the lecture's first contrast)."""

    def roughness(tiles: np.ndarray) -> float:
        return float(np.abs(np.diff(tiles, axis=1)).mean() + np.abs(np.diff(tiles, axis=2)).mean()) / 2

    trained = roughness(filter_grid(imagenet_squeezenet, layer="conv1").tiles)
    untrained = roughness(filter_grid(random_squeezenet, layer="conv1").tiles)
    assert trained < 0.5 * untrained  # measured: 0.11 vs 0.34
