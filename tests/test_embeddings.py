"""t-SNE maps: known features, clustering measured against chance, an optimal and oriented grid, errors."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import viztools
from viztools.embeddings import (
    Embedding,
    chance_label_agreement,
    knn_label_agreement,
    layer_features,
    plot_tsne,
    plot_tsne_grid,
    tsne_embedding,
    tsne_grid,
    tsne_grid_image,
)
from viztools.hooks import has_hooks
from viztools.models import GLYPHNET_WEIGHTS, VizModel


def colour_model() -> VizModel:
    """An identity 1x1 conv + ReLU ("conv", spatial) then global average pooling ("pool": the mean colour)."""
    conv = nn.Conv2d(3, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.zero_()
    network = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))
    return VizModel(name="colour", network=network, categories=["red", "green", "blue"], input_size=16,
                    mean=(0, 0, 0), std=(1, 1, 1), layers={"conv": "relu", "pool": "flat"})


def coloured_images(per_class: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy textures around a red, a green and a blue base colour; labels 0, 1, 2 interleaved."""
    generator = torch.Generator().manual_seed(3)
    bases = torch.tensor([[0.8, 0.15, 0.15], [0.15, 0.8, 0.15], [0.15, 0.15, 0.8]])
    labels = torch.arange(3 * per_class) % 3
    noise = 0.3 * torch.rand(3 * per_class, 3, 16, 16, generator=generator) - 0.15
    return (bases[labels].view(-1, 3, 1, 1) + noise).clamp(0, 1), labels


class LabelledImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def test_features_pool_or_flatten_known_maps() -> None:
    images, _ = coloured_images(4)
    averaged, labels, thumbnails = layer_features(colour_model(), images, layer="conv", batch_size=5)
    assert np.allclose(averaged, images.mean(dim=(2, 3)).numpy(), atol=1e-6)
    assert labels is None and thumbnails is None
    flat, _, _ = layer_features(colour_model(), images, layer="conv", pooling="flatten", batch_size=5)
    assert flat.shape == (12, 3 * 16 * 16) and np.allclose(flat, images.flatten(1).numpy(), atol=1e-6)
    vectors, _, small = layer_features(colour_model(), images, layer="pool", thumbnail_size=8)
    assert np.allclose(vectors, averaged, atol=1e-6)  # a vector layer is used as it is
    assert small.shape == (12, 3, 8, 8) and torch.allclose(small.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.02)


def test_colour_classes_cluster_well_above_chance() -> None:
    images, labels = coloured_images()
    embedding = tsne_embedding(colour_model(), images, layer="pool", labels=labels, perplexity=15)
    assert embedding.coordinates.shape == (90, 2) and embedding.class_names == ["red", "green", "blue"]
    assert knn_label_agreement(embedding.coordinates, embedding.labels, k=5) > 0.95
    shuffled = np.random.default_rng(0).permutation(embedding.labels)
    assert knn_label_agreement(embedding.coordinates, shuffled, k=5) < 0.5  # chance is 29/89 = 0.33


def test_labels_come_from_the_data_set_and_can_be_overridden() -> None:
    images, labels = coloured_images(10)
    embedding = tsne_embedding(colour_model(), LabelledImages(images, labels), layer="pool", perplexity=5, batch_size=7)
    assert np.array_equal(embedding.labels, labels.numpy())
    assert torch.equal(embedding.images, images)  # 16 px images are already thumbnail-sized
    override = tsne_embedding(colour_model(), LabelledImages(images, labels), layer="pool", perplexity=5,
                              labels=[0] * 30, class_names=["any"])
    assert np.array_equal(override.labels, np.zeros(30)) and override.class_names == ["any"]
    unlabelled = tsne_embedding(colour_model(), images, layer="pool", perplexity=5)
    assert unlabelled.labels is None and unlabelled.class_names is None


def test_runs_repeat_with_a_seed_and_pca_keeps_raw_features() -> None:
    images, _ = coloured_images(10)
    first = tsne_embedding(colour_model(), images, layer="conv", pooling="flatten", pca_dims=5, perplexity=5, seed=1)
    again = tsne_embedding(colour_model(), images, layer="conv", pooling="flatten", pca_dims=5, perplexity=5, seed=1)
    other = tsne_embedding(colour_model(), images, layer="conv", pooling="flatten", pca_dims=5, perplexity=5, seed=2)
    assert np.array_equal(first.coordinates, again.coordinates)
    assert not np.allclose(first.coordinates, other.coordinates)
    assert first.features.shape == (30, 768) and first.pooling == "flatten"
    fresh = [tsne_embedding(colour_model(), images, layer="conv",
                            pooling="flatten", pca_dims=5, perplexity=5, seed=None)
             for _ in range(2)]
    assert not np.allclose(fresh[0].coordinates, fresh[1].coordinates)  # seed=None: fresh randomness
    with pytest.raises(ValueError, match="seed"):
        tsne_embedding(colour_model(), images, layer="conv", perplexity=5, seed=-1)


def test_knn_agreement_known_answer_and_chance() -> None:
    points = np.array([[0.0, 0], [1, 0], [3, 0], [10, 0], [12, 0]])
    labels = np.array([0, 0, 1, 1, 1])
    # Nearest neighbours: 0->1 (same), 1->0 (same), 3->1 (different), 10->12 (same), 12->10 (same).
    assert knn_label_agreement(points, labels, k=1) == pytest.approx(0.8)
    assert chance_label_agreement(labels) == pytest.approx((2 * 1 + 3 * 2) / (5 * 4))
    rng = np.random.default_rng(0)
    cloud, classes = rng.normal(size=(200, 2)), np.arange(200) % 4
    shuffled = [knn_label_agreement(cloud, rng.permutation(classes), k=5) for _ in range(100)]
    assert np.mean(shuffled) == pytest.approx(chance_label_agreement(classes), abs=0.01)  # 49/199 = 0.246


def test_grid_snaps_corners_to_corners() -> None:
    corners = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # (x, y); y up
    grid = tsne_grid(corners * 7 - 3)  # any scale: coordinates are normalised first
    assert (grid.rows, grid.columns) == (2, 2)
    assert grid.positions.tolist() == [[0, 1], [1, 0], [0, 0], [1, 1]]  # top-right, bottom-left, top-left, ...
    assert grid.cost == pytest.approx(4 * 2 * 0.25**2)


def assignment_cost(grid, cells: np.ndarray) -> float:
    return float(((grid.normalized - grid.cell_centers[cells]) ** 2).sum())


def test_grid_is_an_optimal_permutation() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(6, 2))
    grid = tsne_grid(points, rows=2, columns=3)
    assert sorted(grid.cells.tolist()) == list(range(6))
    best = min(assignment_cost(grid, np.array(p)) for p in itertools.permutations(range(6)))
    assert grid.cost == pytest.approx(best) == pytest.approx(assignment_cost(grid, grid.cells))


def test_grid_beats_naive_assignments() -> None:
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.normal(loc, 0.3, size=(40, 2)) for loc in ([0, 0], [3, 1], [1, 4])])
    grid = tsne_grid(points)
    assert (grid.rows, grid.columns) == (11, 11)
    assert len(set(grid.cells.tolist())) == 120 and grid.cells.max() < 121
    # Naive: sort top to bottom into rows of `columns`, each row left to right.
    by_height = np.argsort(-grid.normalized[:, 1], kind="stable")
    naive = np.empty(120, dtype=int)
    for row, start in enumerate(range(0, 120, grid.columns)):
        members = by_height[start : start + grid.columns]
        naive[members[np.argsort(grid.normalized[members, 0], kind="stable")]] = row * grid.columns + np.arange(
            len(members))
    assert grid.cost <= assignment_cost(grid, naive)
    assert all(grid.cost <= assignment_cost(grid, rng.permutation(121)[:120]) for _ in range(20))


def embedding_of(images: torch.Tensor, labels: np.ndarray | None, names: list[str] | None) -> Embedding:
    coordinates = np.stack([np.arange(len(images)), np.zeros(len(images))], axis=1).astype(float)
    return Embedding(layer="x", pooling="average", coordinates=coordinates, features=coordinates, labels=labels,
                     class_names=names, images=images)


def test_grid_image_places_framed_thumbnails() -> None:
    images = torch.rand(3, 3, 4, 4)
    embedding = embedding_of(images, np.array([0, 1, 0]), ["a", "b"])
    grid = tsne_grid(embedding)  # points on a horizontal line -> 2x2 grid
    picture = tsne_grid_image(embedding, grid, frame=2)
    assert picture.shape == (2 * 8, 2 * 8, 3)
    for index, (row, col) in enumerate(grid.positions):
        cell = picture[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8]
        assert np.array_equal(cell[2:6, 2:6], images[index].permute(1, 2, 0).numpy())
        assert np.allclose(cell[0, 0], matplotlib.colormaps["tab10"](int(embedding.labels[index]))[:3])
    empty = ({0, 1, 2, 3} - set(grid.cells.tolist())).pop()
    row, col = divmod(empty, 2)
    assert np.all(picture[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] == 1.0)
    unframed = tsne_grid_image(embedding_of(images, None, None), grid)
    assert unframed.shape == (8, 8, 3)


def test_plots_show_classes_in_the_legend() -> None:
    images, labels = coloured_images(10)
    embedding = tsne_embedding(colour_model(), images, layer="pool", labels=labels, perplexity=5)
    figure = plot_tsne(embedding)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["red", "green", "blue"]
    assert sum(len(c.get_offsets()) for c in figure.axes[0].collections) == 30
    figure = plot_tsne_grid(embedding)
    assert figure.axes[0].get_images()[0].get_array().shape == (5 * 20, 6 * 20, 3)  # 30 points: 6 columns, 5 rows
    grid = tsne_grid(embedding, columns=10)
    assert np.array_equal(plot_tsne_grid(embedding, grid=grid).axes[0].get_images()[0].get_array(),
                          tsne_grid_image(embedding, grid))
    unlabelled = embedding_of(images[:5], None, None)
    assert plot_tsne(unlabelled).axes[0].get_legend() is None
    figure = Figure()
    left, right = figure.subplots(1, 2)
    assert plot_tsne(embedding, ax=left) is figure and plot_tsne_grid(embedding, ax=right) is figure
    assert right.get_images() and left.get_legend() is not None


def test_bad_arguments_raise_clear_errors() -> None:
    model = colour_model()
    images, labels = coloured_images(4)
    with pytest.raises(ValueError, match="Unknown layer 'fc9'"):
        tsne_embedding(model, images, layer="fc9")
    with pytest.raises(ValueError, match="Did you mean 'average'"):
        tsne_embedding(model, images, layer="conv", pooling="averge")
    with pytest.raises(ValueError, match=r"perplexity must be smaller than the number of images \(12\)"):
        tsne_embedding(model, images, layer="pool")
    with pytest.raises(ValueError, match="perplexity"):
        tsne_embedding(model, images, layer="pool", perplexity=-1)
    with pytest.raises(ValueError, match=r"one class index per image \(12\)"):
        tsne_embedding(model, images, layer="pool", labels=labels[:5], perplexity=3)
    with pytest.raises(ValueError, match=r"0\.\.2 to be named"):
        tsne_embedding(model, images, layer="pool", labels=labels + 1, perplexity=3)
    with pytest.raises(ValueError, match="pca_dims"):
        tsne_embedding(model, images, layer="pool", pca_dims=1, perplexity=3)
    with pytest.raises(ValueError, match="threads"):
        tsne_embedding(model, images, layer="pool", threads=0, perplexity=3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tsne_embedding(model, images[:, :1], layer="pool", perplexity=3)
    with pytest.raises(TypeError, match=r"VizModel, not a plain torch\.nn\.Module"):
        tsne_embedding(model.network, images, layer="pool", perplexity=3)
    with pytest.raises(TypeError, match=r"VizModel, not a plain torch\.nn\.Module"):
        layer_features(model.network, images, layer="pool")
    with pytest.raises(ValueError, match="fewer than the 12 points"):
        knn_label_agreement(np.zeros((12, 2)), labels.numpy(), k=12)
    with pytest.raises(ValueError, match=r"\(n, 2\) coordinates"):
        tsne_grid(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="fewer cells than the 5 points"):
        tsne_grid(np.zeros((5, 2)), rows=2, columns=2)
    assert not has_hooks(model.network)


@pytest.mark.slow
@pytest.mark.skipif(not GLYPHNET_WEIGHTS.is_file(), reason="GlyphNet's trained weights are not in the package yet")
def test_trained_glyphnet_fc1_clusters_the_glyph_classes(glyphnet: VizModel) -> None:
    """500 held-out GlyphWorld images (seed 1): 10-NN label agreement in the fc1 map > 0.8, chance about 0.1.

    The same architecture with random weights groups the images by background instead (measured: 0.90 trained,
    0.11 random, chance 0.098).
    """
    images, labels = viztools.make_glyphworld(500, seed=1)
    embedding = tsne_embedding(glyphnet, images, layer="fc1", labels=labels)
    assert embedding.class_names == list(viztools.GLYPHWORLD_CLASSES)
    assert chance_label_agreement(embedding.labels) == pytest.approx(0.098, abs=0.001)
    assert knn_label_agreement(embedding.coordinates, embedding.labels, k=10) > 0.8
    untrained = tsne_embedding(viztools.load_model("glyphnet", weights="random"), images, layer="fc1", labels=labels)
    assert knn_label_agreement(untrained.coordinates, untrained.labels, k=10) < 0.2
    grid = tsne_grid(embedding)
    assert sorted(grid.cells.tolist()) == sorted(set(grid.cells.tolist())) and len(grid.cells) == 500
