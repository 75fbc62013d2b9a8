"""Neural style transfer: Gram matrices, losses, the truncated forward pass and the optimization run."""

from __future__ import annotations

import pytest
import torch

import viztools
from viztools.hooks import get_activations, has_hooks
from viztools.style import (
    content_loss,
    default_layers,
    gram_matrix,
    layer_features,
    style_layer_loss,
    style_loss,
    total_variation,
)


@pytest.fixture(scope="module")
def random_glyphnet() -> viztools.VizModel:
    return viztools.load_model("glyphnet", weights="random")


# --------------------------------------------------------------------------------------------------------------
# Gram matrices and losses: numbers worked out by hand from the definitions
# --------------------------------------------------------------------------------------------------------------


def test_gram_matrix_of_a_small_tensor_matches_the_hand_computation() -> None:
    # Two channels on a 2x2 grid. The fibers (one per position) are (1,0), (2,1), (3,0), (4,1):
    # G00 = 1+4+9+16 = 30, G01 = 0+2+0+4 = 6, G11 = 0+1+0+1 = 2; normalized by the H*W = 4 positions.
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    assert torch.equal(gram_matrix(features, normalize=False), torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]))
    assert torch.equal(gram_matrix(features), torch.tensor([[[7.5, 1.5], [1.5, 0.5]]]))


def test_gram_matrix_treats_batch_items_separately_and_is_symmetric() -> None:
    features = torch.randn(3, 5, 4, 6)
    grams = gram_matrix(features)
    assert grams.shape == (3, 5, 5)
    assert torch.allclose(grams, grams.transpose(1, 2), atol=1e-6)
    assert torch.allclose(grams[1], gram_matrix(features[1:2])[0], atol=1e-6)


def test_normalized_gram_does_not_depend_on_how_much_of_a_texture_is_seen() -> None:
    tile = torch.rand(1, 4, 3, 5)
    larger = tile.repeat(1, 1, 3, 2)  # the same texture, six times the area
    assert torch.allclose(gram_matrix(larger), gram_matrix(tile), atol=1e-6)
    assert torch.allclose(gram_matrix(larger, normalize=False), 6 * gram_matrix(tile, normalize=False), atol=1e-5)


def test_gram_matrix_rejects_features_without_positions() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*convolutional layer"):
        gram_matrix(torch.ones(1, 10))


def test_content_loss_is_a_relative_squared_error() -> None:
    target = torch.tensor([[[[1.0, 1.0]]]])
    assert content_loss(target.clone(), target).item() == 0.0
    # (0^2 + 1^2) / (1^2 + 1^2)
    assert content_loss(torch.tensor([[[[1.0, 2.0]]]]), target).item() == pytest.approx(0.5)
    assert content_loss(torch.zeros(1, 1, 1, 2), target).item() == pytest.approx(1.0)


def test_content_loss_rejects_features_of_another_size() -> None:
    with pytest.raises(ValueError, match="content image's size"):
        content_loss(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 4, 4))


def test_style_layer_loss_by_hand_and_zero_for_the_style_features() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # Gram [[7.5,1.5],[1.5,.5]]
    target = torch.tensor([[[7.5, 1.5], [1.5, 2.5]]])
    # Only G11 differs, by 2: 2^2 / (7.5^2 + 2*1.5^2 + 2.5^2) = 4 / 67
    assert style_layer_loss(features, target).item() == pytest.approx(4 / 67)
    assert style_layer_loss(features, gram_matrix(features)).item() == 0.0


def test_style_loss_weights_each_layer() -> None:
    features = {"a": torch.rand(1, 3, 4, 4), "b": torch.rand(1, 2, 2, 2)}
    targets = {"a": gram_matrix(torch.rand(1, 3, 5, 5)), "b": gram_matrix(features["b"])}
    losses = style_loss(features, targets, {"a": 2.0, "b": 7.0})
    assert set(losses) == {"a", "b"}
    assert losses["a"].item() == pytest.approx(2.0 * style_layer_loss(features["a"], targets["a"]).item())
    assert losses["b"].item() == 0.0
    with pytest.raises(ValueError, match=r"\['c'\]"):
        style_loss(features, targets, {"c": 1.0})


def test_total_variation_by_hand() -> None:
    # One 2x2 picture repeated in the 3 channels: [[0, 1], [1, 1]].
    # Down differences: (1-0), (1-1) -> mean of squares over 3*1*2 values = 1/2; right: (1-0), (1-1) -> 1/2.
    pixels = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).expand(1, 3, 2, 2)
    assert total_variation(pixels).item() == pytest.approx(1.0)
    assert total_variation(torch.full((1, 3, 5, 5), 0.3)).item() == 0.0


# --------------------------------------------------------------------------------------------------------------
# The truncated forward pass
# --------------------------------------------------------------------------------------------------------------


def test_layer_features_match_a_full_forward_and_skip_later_layers(random_glyphnet: viztools.VizModel) -> None:
    model = random_glyphnet
    pixels = torch.rand(1, 3, 64, 64)
    later_calls = []
    handle = model.layer("conv4").register_forward_hook(lambda *args: later_calls.append(1))
    try:
        features = layer_features(model, pixels, ["conv2", "conv1"])
    finally:
        handle.remove()
    reference = get_activations(model, pixels, ["conv1", "conv2"])
    assert list(features) == ["conv2", "conv1"]
    for name in ("conv1", "conv2"):
        assert torch.equal(features[name], reference[name])
    assert later_calls == []  # the forward pass stopped after conv2
    assert not has_hooks(model.network)


def test_layer_features_keep_the_graph_and_remove_hooks_on_error(random_glyphnet: viztools.VizModel) -> None:
    pixels = torch.rand(1, 3, 64, 64, requires_grad=True)
    features = layer_features(random_glyphnet, pixels, ["conv1"])
    features["conv1"].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="Unknown layer 'conv9'"):
        layer_features(random_glyphnet, pixels, ["conv1", "conv9"])
    with pytest.raises(ValueError, match="shape"):
        layer_features(random_glyphnet, torch.rand(1, 4, 64, 64), ["conv1"])
    assert not has_hooks(random_glyphnet.network)


def test_default_layers_come_from_the_table_or_from_model_layers(random_glyphnet: viztools.VizModel) -> None:
    assert default_layers(random_glyphnet) == ("conv3", ("conv1", "conv2", "conv3", "conv4"))
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 2),
    )
    tiny = viztools.VizModel(
        name="tiny", network=network, categories=["a", "b"], input_size=12, mean=(0, 0, 0), std=(1, 1, 1),
        layers={"c1": "1", "c2": "3", "pool": "4", "c3": "6", "fc": "8"},
    )
    assert default_layers(tiny) == ("c2", ("c1", "c2", "c3"))
