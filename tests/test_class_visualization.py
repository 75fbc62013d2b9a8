"""Class visualization: the CS231n step on a linear model, regularizer effects, GlyphNet classes, hook hygiene."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from viztools.class_visualization import (
    class_visualization,
    class_visualization_optimization,
    mean_image,
    pixel_step_size,
    plot_class_visualization,
)
from viztools.hooks import has_hooks
from viztools.models import VizModel
from viztools.optimize import TotalVariation

PNG_DIR = Path("/tmp/viztools_class_visualization")


def linear_model(size: int = 8) -> VizModel:
    """logits = W @ flatten(normalized pixels): the input gradient of class c is W[c] / std, known by hand."""
    generator = torch.Generator().manual_seed(2)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 3, bias=False))
    with torch.no_grad():
        network[1].weight.copy_(torch.randn(3, 3 * size * size, generator=generator))
    return VizModel(name="linear", network=network, categories=["red", "green", "blue"], input_size=size,
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), layers={"logits": "1"})


def test_mean_image_is_zero_in_normalized_units():
    model = linear_model()
    image = mean_image(model)
    assert image.shape == (1, 3, 8, 8)
    torch.testing.assert_close(model.normalize(image), torch.zeros_like(image))


def test_pixel_step_size_converts_cs231n_units():
    # unit-L2 step of 25 at 224 px in normalized units = 25 / sqrt(3 * 224^2) per value, times std 0.25 in pixels
    assert pixel_step_size(linear_model(), 25.0) == pytest.approx(25 * 0.25 / math.sqrt(3 * 224 * 224))


def test_one_step_matches_the_cs231n_update_by_hand():
    model = linear_model()
    lr, l2 = 25.0, 1e-3
    start = mean_image(model) + 0.05 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # CS231n, in normalized units x: dx = W[c] - 2 * l2 * x; x += lr * dx / ||dx|| (at 224 px). Here the same
    # direction in pixels, with the per-value RMS step lr / sqrt(3 * 224^2) (times std in pixel units).
    x = model.normalize(start)
    direction = model.network[1].weight[1].view(1, 3, 8, 8) - 2 * l2 * x
    step = pixel_step_size(model, lr) * direction / direction.pow(2).mean().sqrt()
    expected = (start + step).clamp(0, 1)
    result = class_visualization(model, start, "green", steps=1, lr=lr, l2=l2, jitter=0, blur_every=0).image
    # the best image is the final one: the score rose and the penalty barely changed
    torch.testing.assert_close(result, expected)


def test_score_rises_and_l2_keeps_the_image_small():
    model = linear_model()
    weak = class_visualization(model, target=0, steps=30, l2=0.0, jitter=0, blur_every=0).image
    strong = class_visualization(model, target=0, steps=30, l2=0.5, jitter=0, blur_every=0).image
    start = mean_image(model)
    assert model(weak)[0, 0] > model(start)[0, 0] + 10
    assert model.normalize(strong).norm() < 0.8 * model.normalize(weak).norm()


def test_blur_smooths_the_result():
    model = linear_model(16)
    sharp = class_visualization(model, target=2, steps=20, blur_every=0, jitter=0).image
    blurred = class_visualization(model, target=2, steps=20, blur_every=1, blur_sigma=1.0, jitter=0).image
    assert TotalVariation(1.0)(blurred) < 0.5 * TotalVariation(1.0)(sharp)


def test_same_seed_same_image_with_jitter():
    model = linear_model(16)
    first = class_visualization(model, target="blue", steps=5, jitter=3, seed=1).image
    assert torch.equal(first, class_visualization(model, target="blue", steps=5, jitter=3, seed=1).image)
    assert not torch.equal(first, class_visualization(model, target="blue", steps=5, jitter=3, seed=2).image)


def test_progress_and_callback_stop():
    model = linear_model()
    records = list(class_visualization_optimization(model, target=1, steps=6, every=3))
    assert [r.step for r in records] == [3, 6]
    assert set(records[0].losses) == {"class 1 score", "L2"}
    seen = []
    result = class_visualization(model, target=1, steps=50, should_stop=lambda p: seen.append(p.step) or p.step == 4)
    assert seen == [1, 2, 3, 4]
    assert (result.steps, result.stop_reason) == (4, "stopped")


def test_bad_arguments_raise_helpful_errors():
    model = linear_model()
    with pytest.raises(ValueError, match=r"Unknown class name 'gren'.*Did you mean 'green'"):
        class_visualization(model, target="gren")
    with pytest.raises(ValueError, match="target class index must be"):
        class_visualization(model, target=3)
    with pytest.raises(ValueError, match="needs a target class"):
        class_visualization(model, target=None)
    with pytest.raises(ValueError, match="l2 must be"):
        class_visualization(model, target=0, l2=-1.0)
    with pytest.raises(ValueError, match="steps must be"):
        class_visualization(model, target=0, steps=-5)
    with pytest.raises(ValueError, match="lr must be"):
        class_visualization(model, target=0, lr=0)
    with pytest.raises(ValueError, match=r"sigma must be a number in \[0, inf\)"):
        class_visualization(model, target=2, steps=3, blur_sigma=-1.0)
    with pytest.raises(ValueError, match=r"shape \(1, 3, H, W\)"):
        class_visualization(model, torch.rand(2, 3, 8, 8)[:, :2], 0)


@pytest.mark.slow
def test_glyphnet_class_visualizations_are_classified_as_their_class(glyphnet):
    PNG_DIR.mkdir(exist_ok=True)
    targets = ["heart", "star", "anchor", "umbrella"]
    results = [class_visualization(glyphnet, target=target, seed=0) for target in targets]
    for target, result in zip(targets, results, strict=True):
        index = glyphnet.class_index(target)
        probability = float(glyphnet.predict(result.image)[0, index])
        assert probability > 0.9, f"{target}: p = {probability:.3f}"
        assert (result.target, result.class_name, result.probability) == (index, target, probability)
    figure = plot_class_visualization(results, columns=4)
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == [
        f"{r.class_name}\np = {r.probability:.2f}" for r in results
    ]
    figure.savefig(PNG_DIR / "glyphnet_classes.png", dpi=80)
    assert not has_hooks(glyphnet.network)
