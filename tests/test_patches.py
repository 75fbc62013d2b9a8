"""Maximally activating patches: a known detector, hand-computed receptive fields, streaming vs brute force."""

from __future__ import annotations

import weakref
from collections import OrderedDict

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

import viztools
from viztools.data import PhotoCrops
from viztools.hooks import attach, get_activations, has_hooks
from viztools.models import GLYPHNET_WEIGHTS, VizModel
from viztools.patches import (
    plot_patches,
    plot_patches_grid,
    top_activating_patches,
    top_activating_patches_grid,
)


def square_detector(padding: int) -> VizModel:
    """Channel 0: mean brightness of a 5x5 RGB window (fires most on a bright 5x5 square); channel 1: its negative."""
    conv = nn.Conv2d(3, 2, kernel_size=5, padding=padding, bias=False)
    with torch.no_grad():
        conv.weight[0].fill_(1 / 75)
        conv.weight[1].fill_(-1 / 75)
    network = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))
    return VizModel(name="square_detector", network=network, categories=["bright", "dark"], input_size=24,
                    mean=(0, 0, 0), std=(1, 1, 1), layers={"detector": "relu"})


def dim_images_with_squares() -> torch.Tensor:
    """20 dim noisy images; image 13 has a white 5x5 square at rows 6-10, cols 11-15; image 4 a 0.8 one in a corner."""
    generator = torch.Generator().manual_seed(1)
    images = 0.2 + 0.05 * torch.rand(20, 3, 24, 24, generator=generator)
    images[13, :, 6:11, 11:16] = 1.0
    images[4, :, 0:5, 0:5] = 0.8
    return images


def brute_force_top(model: VizModel, images: torch.Tensor, layer: str, channel: int, k: int,
                    position: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """All activations at once, each image's best unit, a stable sort: the reference for the streaming top-k."""
    maps = get_activations(model, images, [layer])[layer][:, channel]
    if maps.dim() == 1:
        values, units = maps, [None] * len(maps)
    elif position is not None:
        values, units = maps[:, position[0], position[1]], [position] * len(maps)
    else:
        values, flat = maps.flatten(1).max(dim=1)
        units = [divmod(int(f), maps.shape[2]) for f in flat]
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    return values[order], order, [units[int(i)] for i in order]


@pytest.mark.parametrize("padding", [0, 2])
def test_bright_square_detector_finds_the_square(padding: int) -> None:
    model = square_detector(padding)
    images = dim_images_with_squares()
    result = top_activating_patches(model, images, layer="detector", channel=0, k=3, batch_size=6)
    assert result.image_indices[:2].tolist() == [13, 4]
    assert result.values[:2] == pytest.approx([1.0, 0.8], abs=1e-6)
    # Unit (r, c) of a 5x5 conv with padding p sees input rows r-p .. r-p+4.
    assert result.positions[:2] == [(6 + padding, 11 + padding), (0 + padding, 0 + padding)]
    assert result.boxes[0] == (slice(6, 11), slice(11, 16))
    assert torch.equal(result.patches[0], torch.ones(3, 5, 5))
    assert torch.equal(result.patches[1], torch.full((3, 5, 5), 0.8))
    assert result.values[2] < 0.8


def test_dark_channel_avoids_the_squares() -> None:
    result = top_activating_patches(square_detector(0), dim_images_with_squares(), layer="detector", channel=1, k=20)
    assert (result.values == 0).all()  # the ReLU kills the negated brightness of every window


def test_single_unit_position_reads_that_unit() -> None:
    model = square_detector(0)
    images = dim_images_with_squares()
    result = top_activating_patches(model, images, layer="detector", channel=0, k=1, position=(6, 11))
    assert result.image_indices.tolist() == [13] and result.position == (6, 11)
    result = top_activating_patches(model, images, layer="detector", channel=0, k=1, position=(12, 12))
    assert result.image_indices.tolist() != [13] and result.values[0] < 0.3  # the square is outside this unit's field


@pytest.mark.parametrize(
    ("position", "rows", "cols"),
    [
        # conv1 7x7 pad 3 -> pool 2/2 -> conv2 3x3 pad 1: unit (r, c) sees rows 2(r-1)-3 .. 2(r+1)+1+3 = 2r-5 .. 2r+6,
        # 12 rows for interior units (r in 3..28), clipped at the border.
        ((10, 12), slice(15, 27), slice(19, 31)),
        ((3, 28), slice(1, 13), slice(51, 63)),
        ((0, 0), slice(0, 7), slice(0, 7)),
        ((31, 30), slice(57, 64), slice(55, 64)),
    ],
)
def test_glyphnet_conv2_crops_match_hand_computed_field(
    random_glyphnet: VizModel, position: tuple[int, int], rows: slice, cols: slice
) -> None:
    images = torch.rand(6, 3, 64, 64)
    result = top_activating_patches(random_glyphnet, images, layer="conv2", channel=7, k=3, position=position)
    for index, box, patch in zip(result.image_indices, result.boxes, result.patches, strict=True):
        assert box == (rows, cols)
        assert torch.equal(patch, images[int(index)][:, rows, cols])


def test_glyphnet_conv2_strongest_units_have_twelve_pixel_fields(random_glyphnet: VizModel) -> None:
    images, _ = viztools.make_glyphworld(12)
    result = top_activating_patches(random_glyphnet, images, layer="conv2", channel=3, k=12, batch_size=5)
    for (row, col), patch in zip(result.positions, result.patches, strict=True):
        height = min(2 * row + 7, 64) - max(2 * row - 5, 0)
        width = min(2 * col + 7, 64) - max(2 * col - 5, 0)
        assert patch.shape == (3, height, width)


@pytest.mark.parametrize(("layer", "position"), [("conv2", None), ("pool1", (5, 9)), ("fc1", None)])
def test_streaming_top_k_equals_brute_force(random_glyphnet: VizModel, layer: str, position: tuple | None) -> None:
    images = torch.rand(29, 3, 64, 64)
    channels = [3, 17, 20]  # all layers here have at least 24 channels
    results = top_activating_patches_grid(random_glyphnet, images, layer=layer, channels=channels, k=5,
                                          position=position, batch_size=8)
    for channel, result in zip(channels, results, strict=True):
        values, indices, units = brute_force_top(random_glyphnet, images, layer, channel, 5, position)
        assert result.channel == channel
        assert result.image_indices.tolist() == indices.tolist()
        assert torch.allclose(result.values, values, atol=1e-5)
        assert result.positions == units


def test_ties_keep_the_earlier_image() -> None:
    images = torch.full((10, 3, 24, 24), 0.5)
    result = top_activating_patches(square_detector(0), images, layer="detector", channel=0, k=4, batch_size=3)
    assert result.image_indices.tolist() == [0, 1, 2, 3]
    assert result.positions == [(0, 0)] * 4  # the first maximal unit of each map


def test_fully_connected_layer_gives_whole_images(random_glyphnet: VizModel) -> None:
    images = torch.rand(8, 3, 64, 64)
    result = top_activating_patches(random_glyphnet, images, layer="fc1", channel=2, k=2)
    assert result.positions == [None, None]
    assert all(torch.equal(p, images[int(i)]) for p, i in zip(result.patches, result.image_indices, strict=True))


class CountingDataset(torch.utils.data.Dataset):
    """Random images generated on access; counts reads."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(index)), index % 10


def test_memory_is_bounded_by_one_batch_of_activations(random_glyphnet: VizModel) -> None:
    """By design: a batch's layer output is garbage once the next batch runs, and images are read, not kept.

    (tracemalloc cannot see torch's CPU allocator, so the check tracks the activation tensors themselves.)
    """
    alive_at_each_batch = []
    outputs: list[weakref.ref] = []

    def watch(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        alive_at_each_batch.append(sum(ref() is not None for ref in outputs))
        outputs.append(weakref.ref(output))

    dataset = CountingDataset(50)
    with attach(random_glyphnet.layer("conv1"), forward=watch):
        result = top_activating_patches(random_glyphnet, dataset, layer="conv1", channel=0, k=4, batch_size=8)
    assert len(alive_at_each_batch) == 7
    assert alive_at_each_batch == [0] * 7
    assert all(ref() is None for ref in outputs)
    assert dataset.reads == 50 + 4  # one pass over the data, then the 4 winners again for their crops
    assert len(result.patches) == 4


def test_streams_a_glyphworld_dataset_like_a_tensor(random_glyphnet: VizModel) -> None:
    images, _ = viztools.make_glyphworld(20, seed=3)
    from_dataset = top_activating_patches(random_glyphnet, viztools.GlyphWorld(20, seed=3),
                                          layer="pool2", channel=9, k=4,
                                          batch_size=6)
    from_tensor = top_activating_patches(random_glyphnet, images, layer="pool2", channel=9, k=4)
    assert from_dataset.image_indices.tolist() == from_tensor.image_indices.tolist()
    assert all(torch.equal(a, b) for a, b in zip(from_dataset.patches, from_tensor.patches, strict=True))


def test_reads_a_folder_in_sorted_order(random_glyphnet: VizModel, tmp_path) -> None:
    images = PhotoCrops(5, size=64, seed=2)
    for i in range(5):
        array = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(tmp_path / f"img_{4 - i}.png")  # reverse order on disk
    (tmp_path / "notes.txt").write_text("not an image")
    stacked = torch.stack([viztools.load_image(tmp_path / f"img_{i}.png", size=64)[0] for i in range(5)])
    from_folder = top_activating_patches(random_glyphnet, tmp_path, layer="conv1", channel=4, k=3)
    from_tensor = top_activating_patches(random_glyphnet, stacked, layer="conv1", channel=4, k=3)
    assert from_folder.image_indices.tolist() == from_tensor.image_indices.tolist()
    assert torch.allclose(from_folder.values, from_tensor.values)


def test_bad_arguments_raise_clear_errors(random_glyphnet: VizModel, tmp_path) -> None:
    images = torch.rand(4, 3, 64, 64)
    with pytest.raises(ValueError, match="Unknown layer 'conv9'"):
        top_activating_patches(random_glyphnet, images, layer="conv9", channel=0)
    count = random_glyphnet.network.features.conv1.out_channels
    with pytest.raises(ValueError, match=rf"channel of layer 'conv1' \(it has {count} channels\)"):
        top_activating_patches(random_glyphnet, images, layer="conv1", channel=count, k=2)
    with pytest.raises(ValueError, match=r"k \(at most the number of images, 4\).*got 0"):
        top_activating_patches(random_glyphnet, images, layer="conv1", channel=0, k=0)
    with pytest.raises(ValueError, match="at most the number of images, 4"):
        top_activating_patches(random_glyphnet, images, layer="conv1", channel=0, k=5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        top_activating_patches(random_glyphnet, torch.rand(4, 1, 64, 64), layer="conv1", channel=0, k=2)
    with pytest.raises(ValueError, match=r"images 0\.\.3 must hold pixel values in \[0, 1\]"):
        top_activating_patches(random_glyphnet, images * 2 - 1, layer="conv1", channel=0, k=2)
    with pytest.raises(TypeError, match=r"VizModel, not a plain torch\.nn\.Module"):
        top_activating_patches(random_glyphnet.network, images, layer="conv1", channel=0, k=2)
    with pytest.raises(TypeError, match=r"VizModel, not a plain torch\.nn\.Module"):
        top_activating_patches_grid(random_glyphnet.network, images, layer="conv1", channels=[0], k=2)
    with pytest.raises(ValueError, match="outside layer 'conv2'"):
        top_activating_patches(random_glyphnet, images, layer="conv2", channel=0, k=2, position=(32, 0))
    with pytest.raises(ValueError, match="no spatial positions"):
        top_activating_patches(random_glyphnet, images, layer="fc1", channel=0, k=2, position=(0, 0))
    with pytest.raises(ValueError, match="non-empty list"):
        top_activating_patches_grid(random_glyphnet, images, layer="conv1", channels=[])
    with pytest.raises(TypeError, match="Cannot read images"):
        top_activating_patches(random_glyphnet, 3.0, layer="conv1", channel=0)
    with pytest.raises(FileNotFoundError, match="No folder"):
        top_activating_patches(random_glyphnet, tmp_path / "missing", layer="conv1", channel=0)
    with pytest.raises(ValueError, match="no image files"):
        top_activating_patches(random_glyphnet, tmp_path, layer="conv1", channel=0)
    mixed = [torch.rand(3, 64, 64), torch.rand(3, 64, 64), torch.rand(3, 48, 48)]
    with pytest.raises(ValueError, match=r"same size; image 2 is \(48, 48\)"):
        top_activating_patches(random_glyphnet, mixed, layer="conv1", channel=0, k=2, batch_size=2)
    with pytest.raises(ValueError, match="same size"):
        top_activating_patches(random_glyphnet, mixed, layer="conv1", channel=0, k=2, batch_size=3)


def test_plots_draw_the_patches(random_glyphnet: VizModel) -> None:
    results = top_activating_patches_grid(random_glyphnet, torch.rand(10, 3, 64, 64),
                                          layer="conv1", channels=[0, 5], k=4)
    figure = plot_patches(results[0])
    assert len(figure.axes) == 4  # a 2x2 grid, one 7x7 patch per panel
    for ax, patch, value, index in zip(figure.axes, results[0].patches, results[0].values, results[0].image_indices,
                                       strict=True):
        assert np.allclose(ax.get_images()[0].get_array(), patch.permute(1, 2, 0).numpy())
        assert ax.get_title() == f"{float(value):.2f} #{int(index)}"
    assert figure.axes[0].get_subplotspec().get_geometry()[:2] == (2, 2)
    figure = plot_patches_grid(results)
    assert len(figure.axes) == 2 * 4
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels[0::4] == [f"channel {r.channel}\nbest {float(r.values[0]):.2f}" for r in results]
    assert labels[4].startswith("channel 5\n") and labels[1] == ""
    assert all(ax.get_images()[0].get_array().shape == (7, 7, 3) for ax in figure.axes)
    assert figure.axes[0].get_subplotspec().get_geometry()[:2] == (2, 4)


def test_plots_draw_into_a_given_axes() -> None:
    results = top_activating_patches_grid(square_detector(0), dim_images_with_squares(),
                                          layer="detector", channels=[0, 1], k=3)
    figure = Figure()
    left, right = figure.subplots(1, 2)
    assert plot_patches_grid(results, ax=right) is figure
    assert figure.axes[0] is left and right not in figure.axes and len(figure.axes) == 1 + 2 * 3
    assert np.array_equal(figure.axes[1].get_images()[0].get_array(), results[0].patches[0].permute(1, 2, 0).numpy())


@pytest.mark.imagenet
def test_squeezenet_fields_match_the_architecture(imagenet_squeezenet: VizModel) -> None:
    crops = PhotoCrops(4, size=224, seed=0)
    # conv1: 7x7 stride 2, no padding -> unit r sees rows 2r .. 2r+6.
    result = top_activating_patches(imagenet_squeezenet, crops, layer="conv1", channel=10, k=4)
    for (row, col), box in zip(result.positions, result.boxes, strict=True):
        assert box == (slice(2 * row, 2 * row + 7), slice(2 * col, 2 * col + 7))
    # fire2: pool 3/2 gives input rows 4p .. 4p+10; expand3x3 (pad 1) spans pools r-1 .. r+1 -> rows 4r-4 .. 4r+14.
    result = top_activating_patches(imagenet_squeezenet, crops, layer="fire2", channel=3, k=2, position=(10, 20))
    assert result.boxes == [(slice(36, 55), slice(76, 95))] * 2
    assert not has_hooks(imagenet_squeezenet.network)


@pytest.mark.slow
@pytest.mark.skipif(not GLYPHNET_WEIGHTS.is_file(), reason="GlyphNet's trained weights are not in the package yet")
def test_trained_glyphnet_class_logits_pick_their_own_class(glyphnet: VizModel) -> None:
    """The images that excite a class logit most are images of that class (measured: 83 of 90 top-9 images)."""
    results = top_activating_patches_grid(glyphnet, viztools.GlyphWorld(200, seed=1), layer="logits",
                                          channels=list(range(10)), k=9)
    labels = torch.stack([result.image_indices % 10 for result in results])  # GlyphWorld label = index % 10
    assert labels[:, 0].tolist() == list(range(10))
    assert (labels == torch.arange(10)[:, None]).float().mean() > 0.8


@pytest.mark.parametrize(("name", "layer", "size"), [("glyphnet", "conv2", 64), ("squeezenet1_1", "fire3", 96)])
def test_fields_from_the_layer_geometry_equal_the_exact_probe(name: str, layer: str, size: int) -> None:
    from viztools.hooks import layer_output_shape, receptive_field
    from viztools.patches import _clipped_field

    model = viztools.load_model(name, weights="random")
    _, rows, cols = layer_output_shape(model, layer, size)
    generator = torch.Generator().manual_seed(0)
    units = {(int(r), int(c)) for r, c in torch.randint(0, min(rows, cols), (25, 2), generator=generator)}
    units |= {(rows - 1, cols - 1), (rows - 1, 0), (0, 0)}
    for unit in sorted(units):
        assert _clipped_field(model, layer, unit, size, size) == receptive_field(model, layer, unit, size=size), unit
