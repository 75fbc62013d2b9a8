"""Integrated Gradients (Sundararajan et al. 2017): Captum as oracle, completeness, exact answers on small models."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import viztools
from viztools.integrated_gradients import (
    METHODS,
    IntegratedGradientsResult,
    integrated_gradients,
    make_baseline,
    plot_integrated_gradients,
    quadrature,
)
from viztools.models import VizModel


@pytest.fixture(scope="module")
def icon() -> torch.Tensor:
    images, _ = viztools.make_glyphworld(3, seed=1)
    return images[2:3]


def captum_ig(model: VizModel, image: torch.Tensor, target: int, result: IntegratedGradientsResult) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    attribution = IntegratedGradients(model).attribute(image, baselines=result.baseline, target=target,
                                                       n_steps=result.steps, method=result.method)[0]
    if result.method == "riemann_trapezoid":  # Captum's trapezoid weights are 1/n (not 1/(n-1)), halved at the ends
        attribution = attribution * result.steps / (result.steps - 1)
    return attribution


@pytest.mark.parametrize("weights", ["trained", "random"])
@pytest.mark.parametrize("method", METHODS)
def test_matches_captum_on_glyphnet(weights: str, method: str, glyphnet: VizModel, random_glyphnet: VizModel,
                                    icon: torch.Tensor) -> None:
    model = glyphnet if weights == "trained" else random_glyphnet
    baseline = {"riemann_trapezoid": "black", "gausslegendre": "blur"}.get(method, "grey")
    result = integrated_gradients(model, icon, 3, baseline=baseline, steps=12, method=method, batch_size=5)
    torch.testing.assert_close(result.attribution, captum_ig(model, icon, 3, result), rtol=1e-4, atol=1e-6)


def test_matches_captum_on_random_squeezenet() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = viztools.load_model("squeezenet1_0", weights="random")
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    for method in ("riemann_trapezoid", "gausslegendre"):
        result = integrated_gradients(model, image, 11, steps=8, method=method)
        scale = float(result.attribution.abs().max())  # ours sums the path in float64, Captum in float32
        torch.testing.assert_close(result.attribution, captum_ig(model, image, 11, result), rtol=1e-4,
                                   atol=1e-4 * scale)


def test_completeness_attributions_add_up_to_the_score_difference(glyphnet: VizModel, icon: torch.Tensor) -> None:
    """Sum of attributions = S(x) - S(baseline), up to the quadrature error, which shrinks with more steps."""
    with torch.no_grad():
        scores = glyphnet(torch.cat([icon, torch.zeros_like(icon)]))[:, 3]
    difference = float(scores[0] - scores[1])
    coarse = integrated_gradients(glyphnet, icon, 3, steps=8, method="riemann_trapezoid")
    fine = integrated_gradients(glyphnet, icon, 3, steps=128, method="riemann_trapezoid", batch_size=64)
    assert integrated_gradients(glyphnet, icon, 3, steps=4).method == "gausslegendre", "the default, as in Captum"
    for result in (coarse, fine):
        assert result.score - result.baseline_score == pytest.approx(difference, rel=1e-5)
        assert result.delta == pytest.approx(float(result.attribution.double().sum()) - difference, abs=1e-4)
        assert float(result.map.sum()) == pytest.approx(float(result.attribution.sum()), rel=1e-5)
    assert abs(fine.delta) < 0.01 * abs(difference) and abs(fine.delta) < abs(coarse.delta) / 4


def tiny_model(network: nn.Module, size: int = 4) -> VizModel:
    return VizModel(name="tiny", network=network, categories=["a", "b"], input_size=size, mean=(0.0, 0.0, 0.0),
                    std=(1.0, 1.0, 1.0))


class Quadratic(nn.Module):
    """Score 0: sum(w * x^2); score 1: sum(x). The gradient of score 0 is linear along the path."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(self.weight * x**2).flatten(1).sum(1), x.flatten(1).sum(1)], dim=1)


def test_exact_answers_on_small_models() -> None:
    """Linear score: IG = (x - x') * w for every rule. Quadratic: IG = w (x^2 - x'^2), exact for the rules that
    integrate a linear function exactly (trapezoid, midpoint, Gauss-Legendre), not for left or right sums."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1, 3, 4, 4, generator=generator)
    model = tiny_model(Quadratic(weight))
    image = torch.rand(1, 3, 4, 4, generator=generator)
    baseline = torch.rand(1, 3, 4, 4, generator=generator)
    for method in METHODS:
        linear = integrated_gradients(model, image, 1, baseline=baseline, steps=5, method=method)
        torch.testing.assert_close(linear.attribution, (image - baseline)[0])
        quadratic = integrated_gradients(model, image, 0, baseline=baseline, steps=5, method=method)
        exact = (weight * (image**2 - baseline**2))[0]
        if method in ("riemann_left", "riemann_right"):
            assert not torch.allclose(quadratic.attribution, exact, atol=1e-3)
        else:
            torch.testing.assert_close(quadratic.attribution, exact)
            assert abs(quadratic.delta) < 1e-5


def test_quadrature_weights_sum_to_one_and_baselines() -> None:
    for method in METHODS:
        alphas, weights = quadrature(method, 7)
        assert len(alphas) == 7 and float(weights.sum()) == pytest.approx(1.0)
        assert float(alphas.min()) >= 0 and float(alphas.max()) <= 1
    image = torch.rand(1, 3, 8, 8)
    assert torch.equal(make_baseline(image, "black"), torch.zeros_like(image))
    assert torch.equal(make_baseline(image, "grey"), torch.full_like(image, 0.5))
    blurred = make_baseline(image, "blur")
    assert blurred.shape == image.shape and blurred.std() < image.std()


def test_plot_and_errors(glyphnet: VizModel, icon: torch.Tensor) -> None:
    result = integrated_gradients(glyphnet, icon, steps=4)
    figure = plot_integrated_gradients(result)
    assert isinstance(figure, Figure) and figure.axes[0].get_title() == "Integrated Gradients (4 steps)"
    with pytest.raises(ValueError, match=r"Unknown method 'trapezoid'\. Did you mean 'riemann_trapezoid'"):
        integrated_gradients(glyphnet, icon, method="trapezoid")
    with pytest.raises(ValueError, match=r"steps must be an integer in \[2, inf\)"):
        integrated_gradients(glyphnet, icon, steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="baseline must have the image's shape"):
        integrated_gradients(glyphnet, icon, baseline=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="Unknown baseline 'white'"):
        integrated_gradients(glyphnet, icon, baseline="white")
    with pytest.raises(TypeError, match="takes the result of integrated_gradients"):
        plot_integrated_gradients(icon)
