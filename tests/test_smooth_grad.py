"""SmoothGrad (Smilkov et al. 2017): Captum's NoiseTunnel on the same noise draws, a naive loop, properties, errors."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import viztools
from viztools.models import VizModel
from viztools.saliency import input_gradient
from viztools.smooth_grad import SmoothGradResult, noisy_copies, plot_smooth_grad, smooth_grad


@pytest.fixture(scope="module")
def icon() -> torch.Tensor:
    images, _ = viztools.make_glyphworld(3, seed=1)
    return images[2:3]


class PixelNetwork(nn.Module):
    """The model as a plain module on pixels, for Captum's module-hook GuidedBackprop."""

    def __init__(self, model: VizModel) -> None:
        super().__init__()
        self.model = model
        self.network = model.network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.model.normalize(pixels))


def captum_smooth_grad(model: VizModel, image: torch.Tensor, target: int, result: SmoothGradResult,
                       seed: int, absolute: bool) -> torch.Tensor:
    """Captum's NoiseTunnel draws torch.normal(0, sigma) from the global generator; seeded as ours, same noise."""
    from captum.attr import GuidedBackprop, NoiseTunnel, Saliency

    method = Saliency(model) if result.rule == "plain" else GuidedBackprop(PixelNetwork(model))
    options = {"abs": absolute} if result.rule == "plain" else {}
    torch.manual_seed(seed)
    return NoiseTunnel(method).attribute(image, target=target, nt_type="smoothgrad", nt_samples=result.samples,
                                         stdevs=result.sigma, **options)[0]


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
@pytest.mark.parametrize("weights", ["trained", "random"])
@pytest.mark.parametrize("rule", ["plain", "guided"])
def test_matches_captum_noise_tunnel_on_glyphnet(weights: str, rule: str, glyphnet: VizModel,
                                                 random_glyphnet: VizModel, icon: torch.Tensor) -> None:
    model = glyphnet if weights == "trained" else random_glyphnet
    result = smooth_grad(model, icon, 3, noise=0.2, samples=12, rule=rule, seed=5, batch_size=5)
    assert result.sigma == pytest.approx(0.2 * float(icon.max() - icon.min()))
    torch.testing.assert_close(result.gradient, captum_smooth_grad(model, icon, 3, result, 5, absolute=False))
    if rule == "plain":
        torch.testing.assert_close(result.magnitude, captum_smooth_grad(model, icon, 3, result, 5, absolute=True))


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_matches_captum_on_random_squeezenet() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = viztools.load_model("squeezenet1_0", weights="random")
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    for rule in ("plain", "guided"):
        result = smooth_grad(model, image, 11, samples=6, rule=rule, seed=2)
        torch.testing.assert_close(result.gradient, captum_smooth_grad(model, image, 11, result, 2, absolute=False))


def test_equals_a_naive_loop_over_the_same_noisy_copies(glyphnet: VizModel, icon: torch.Tensor) -> None:
    result = smooth_grad(glyphnet, icon, 1, noise=0.1, samples=7, rule="guided", seed=3, batch_size=3)
    copies = noisy_copies(icon, result.sigma, 7, seed=3)
    assert float(copies.min()) < 0 or float(copies.max()) > 1, "the noisy copies are not clamped (as in the paper)"
    gradients = torch.stack([input_gradient_unchecked(glyphnet, copy[None], 1) for copy in copies])
    torch.testing.assert_close(result.gradient, gradients.mean(dim=0))
    torch.testing.assert_close(result.magnitude, gradients.abs().mean(dim=0))
    torch.testing.assert_close(result.saliency, gradients.abs().mean(dim=0).amax(dim=0))


def input_gradient_unchecked(model: VizModel, pixels: torch.Tensor, target: int) -> torch.Tensor:
    """Guided backprop of one image outside [0, 1] (input_gradient rejects such pixels)."""
    from viztools.saliency import relu_rule

    pixels = pixels.clone().requires_grad_(True)
    with relu_rule("guided"):
        score = model(pixels)[0, target]
    score.backward()
    return pixels.grad[0]


def test_no_noise_gives_the_gradient_and_the_seed_decides_the_noise(glyphnet: VizModel, icon: torch.Tensor) -> None:
    for rule in ("plain", "guided"):
        still = smooth_grad(glyphnet, icon, 2, noise=0.0, samples=3, rule=rule)
        torch.testing.assert_close(still.gradient, input_gradient(glyphnet, icon, 2, rule=rule))
    first, again = (smooth_grad(glyphnet, icon, 2, samples=4, seed=1) for _ in range(2))
    assert torch.equal(first.gradient, again.gradient)
    assert not torch.allclose(first.gradient, smooth_grad(glyphnet, icon, 2, samples=4, seed=2).gradient)
    assert not torch.allclose(first.gradient, smooth_grad(glyphnet, icon, 2, samples=4, seed=None).gradient)


def test_averaging_smooths_the_map(glyphnet: VizModel, icon: torch.Tensor) -> None:
    """The point of the method: neighbouring pixels of the smoothed map differ less (relative to its size)."""

    def roughness(saliency_map: torch.Tensor) -> float:
        saliency_map = saliency_map / saliency_map.mean()
        return float((saliency_map[1:] - saliency_map[:-1]).abs().mean() + (saliency_map[:, 1:] -
                                                                            saliency_map[:, :-1]).abs().mean())

    plain = input_gradient(glyphnet, icon, 2).abs().amax(dim=0)
    assert roughness(smooth_grad(glyphnet, icon, 2, samples=16).saliency) < 0.8 * roughness(plain)


def test_plot_and_errors(glyphnet: VizModel, icon: torch.Tensor) -> None:
    result = smooth_grad(glyphnet, icon, samples=2)
    figure = plot_smooth_grad(result, icon)
    assert isinstance(figure, Figure) and [ax.get_title() for ax in figure.axes] == [
        "image", "SmoothGrad (plain, 2 samples)"]
    with pytest.raises(ValueError, match=r"noise must be a number in \[0, 10\]"):
        smooth_grad(glyphnet, icon, noise=-0.1)
    with pytest.raises(ValueError, match="samples must be an integer"):
        smooth_grad(glyphnet, icon, samples=0)
    with pytest.raises(ValueError, match=r"Unknown rule 'guidded'\. Did you mean 'guided'"):
        smooth_grad(glyphnet, icon, rule="guidded")
    with pytest.raises(ValueError, match="pixel values in \\[0, 1\\]"):
        smooth_grad(glyphnet, icon * 255)
    with pytest.raises(TypeError, match="takes the result of smooth_grad"):
        plot_smooth_grad(icon)
