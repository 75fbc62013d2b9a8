"""Feature inversion: exact recovery through an invertible layer, the TV prior's effect, depth on GlyphNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from viztools.glyphworld import make_glyphworld
from viztools.hooks import get_activations, has_hooks
from viztools.inversion import (
    invert_features,
    invert_features_optimization,
    plot_inversion,
    reconstruction_error,
    starting_image,
)
from viztools.models import VizModel
from viztools.optimize import TotalVariation

PNG_DIR = Path("/tmp/viztools_inversion")


def two_layer_model() -> VizModel:
    """``copy``: ReLU(pixels + 1), invertible on [0, 1]; ``pooled``: a 4x4 average pool after it."""
    copy = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        copy.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        copy.bias.fill_(1.0)
    network = nn.Sequential(copy, nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    return VizModel(name="copy", network=network, categories=["a", "b"], input_size=16, mean=(0.0, 0.0, 0.0),
                    std=(1.0, 1.0, 1.0), layers={"copy": "1", "pooled": "2"})


def checkerboard(size: int = 16) -> torch.Tensor:
    rows = torch.arange(size).view(-1, 1) // 2
    cols = torch.arange(size).view(1, -1) // 2
    pattern = ((rows + cols) % 2).float()
    return torch.stack([pattern * 0.8 + 0.1, 1 - pattern * 0.8 - 0.1, torch.full_like(pattern, 0.5)]).unsqueeze(0)


def test_an_invertible_layer_is_inverted_exactly():
    model, image = two_layer_model(), checkerboard()
    reconstruction = invert_features(model, image, layer="copy", steps=150, lr=0.05, tv_weight=0.0, seed=0).image
    assert reconstruction_error(reconstruction, image) < 0.01


def test_pooling_loses_detail_and_the_features_still_match():
    model, image = two_layer_model(), checkerboard()
    reconstruction = invert_features(model, image, layer="pooled", steps=150, lr=0.05, tv_weight=0.0, seed=0).image
    target = get_activations(model, image, ["pooled"])["pooled"]
    achieved = get_activations(model, reconstruction, ["pooled"])["pooled"]
    assert (achieved - target).pow(2).sum() / target.pow(2).sum() < 1e-3  # the features match ...
    assert reconstruction_error(reconstruction, image) > 0.1  # ... but the 2 px checkerboard is gone


def test_total_variation_prior_gives_smoother_reconstructions():
    model, image = two_layer_model(), checkerboard()
    plain = invert_features(model, image, layer="pooled", steps=100, tv_weight=0.0, seed=0).image
    smooth = invert_features(model, image, layer="pooled", steps=100, tv_weight=1.0, seed=0).image
    assert TotalVariation(1.0)(smooth) < 0.5 * TotalVariation(1.0)(plain)


def test_starts_and_determinism():
    model, image = two_layer_model(), checkerboard()
    mean_start = starting_image(model, image, "mean", seed=0)
    torch.testing.assert_close(mean_start, torch.zeros_like(image))
    assert torch.equal(starting_image(model, image, "random", 3), starting_image(model, image, "random", 3))
    assert not torch.equal(starting_image(model, image, "random", 3), starting_image(model, image, "random", 4))
    first = invert_features(model, image, layer="pooled", steps=10, seed=5).image
    assert torch.equal(first, invert_features(model, image, layer="pooled", steps=10, seed=5).image)
    given = torch.full_like(image, 0.3)
    records = list(invert_features_optimization(model, image, layer="pooled", steps=2, start=given))
    assert records[0].losses.keys() == {"feature match pooled", "total variation"}


def test_bad_arguments_raise_helpful_errors():
    model, image = two_layer_model(), checkerboard()
    with pytest.raises(ValueError, match=r"Unknown layer 'coppy'.*Did you mean 'copy'"):
        invert_features(model, image, layer="coppy")
    with pytest.raises(ValueError, match="tv_weight must be"):
        invert_features(model, image, layer="copy", tv_weight=-1.0)
    with pytest.raises(ValueError, match="steps must be"):
        invert_features(model, image, layer="copy", steps=-1)
    with pytest.raises(ValueError, match=r"Unknown start 'noise'.*random, mean"):
        invert_features(model, image, layer="copy", start="noise")
    with pytest.raises(ValueError, match="start must have the image's shape"):
        invert_features(model, image, layer="copy", start=torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        invert_features(model, image.numpy(), layer="copy")


@pytest.mark.slow
def test_glyphnet_reconstructions_get_worse_with_depth(glyphnet):
    images, _ = make_glyphworld(2, seed=7)
    layers = ["conv1", "conv3", "fc1"]
    errors = {layer: [] for layer in layers}
    PNG_DIR.mkdir(exist_ok=True)
    for index, image in enumerate(images):
        results = [invert_features(glyphnet, image[None], layer=layer, steps=150, seed=0) for layer in layers]
        for result in results:
            assert result.error == reconstruction_error(result.image, image[None])
            errors[result.layer].append(result.error)
        plot_inversion(results, columns=4).savefig(PNG_DIR / f"glyph_{index}.png", dpi=80)
    mean_error = {layer: sum(values) / len(values) for layer, values in errors.items()}
    assert mean_error["conv1"] < mean_error["conv3"] < mean_error["fc1"], mean_error
    assert not has_hooks(glyphnet.network)
