"""Grad-CAM (Selvaraju et al. 2017): Captum's LayerGradCam as oracle, a computation by hand, properties, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

import viztools
from viztools.grad_cam import GradCamResult, default_layer, grad_cam, plot_grad_cam
from viztools.models import VizModel


@pytest.fixture(scope="module")
def icons() -> torch.Tensor:
    images, _ = viztools.make_glyphworld(4, seed=1)
    return images


@pytest.fixture(scope="module")
def random_squeezenet() -> VizModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return viztools.load_model("squeezenet1_0", weights="random")


def captum_grad_cam(model: VizModel, image: torch.Tensor, target: int, layer: str) -> torch.Tensor:
    """Captum's LayerGradCam with the ReLU, upsampled bilinearly to the image as grad_cam does."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer_map = LayerGradCam(model, model.layer(layer)).attribute(image, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(layer_map, tuple(image.shape[-2:]), interpolate_mode="bilinear")[0, 0]


@pytest.mark.parametrize("weights", ["trained", "random"])
@pytest.mark.parametrize("layer", [None, "conv2", "pool3"])
def test_matches_captum_on_glyphnet(weights: str, layer: str | None, glyphnet: VizModel, random_glyphnet: VizModel,
                                    icons: torch.Tensor) -> None:
    model = glyphnet if weights == "trained" else random_glyphnet
    for index, target in ((0, None), (2, 5)):
        image = icons[index:index + 1]
        result = grad_cam(model, image, target, layer=layer)
        expected = captum_grad_cam(model, image, result.target, result.layer)
        torch.testing.assert_close(result.attribution, expected, rtol=1e-5, atol=1e-6)
        assert result.attribution.shape == image.shape[-2:]


def test_matches_captum_on_random_squeezenet(random_squeezenet: VizModel) -> None:
    """Fire modules concatenate two branches; the default layer is the last Fire module, not the class map conv10."""
    image = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    for layer in (None, "fire5"):
        result = grad_cam(random_squeezenet, image, 7, layer=layer)
        expected = captum_grad_cam(random_squeezenet, image, 7, result.layer)
        assert float(expected.detach().max()) > 0
        torch.testing.assert_close(result.attribution, expected, rtol=1e-5, atol=1e-6)
    assert result.layer == "fire5" and grad_cam(random_squeezenet, image, 7).layer == "fire9"


def test_equals_the_computation_by_hand_and_is_non_negative(glyphnet: VizModel, icons: torch.Tensor) -> None:
    """alpha_k = mean gradient of the score over conv4's positions; map = ReLU(sum_k alpha_k A_k), bilinear up."""
    image, target = icons[1:2], 4
    features = glyphnet.network.features
    below = features[:11]  # conv1 ... relu4: "conv4"
    assert glyphnet.layer_path("conv4") == "features.relu4" and isinstance(below[-1], nn.ReLU)
    activation = below(glyphnet.normalize(image)).requires_grad_(True)
    score = glyphnet.network.classifier(features[11:](activation).flatten(1))[0, target]
    (gradient,) = torch.autograd.grad(score, activation)
    alpha = gradient[0].mean(dim=(1, 2))
    weighted = (alpha[:, None, None] * activation[0].detach()).sum(dim=0)
    result = grad_cam(glyphnet, image, target, layer="conv4")
    torch.testing.assert_close(result.weights, alpha)
    torch.testing.assert_close(result.layer_map, weighted.clamp(min=0))
    torch.testing.assert_close(result.attribution, F.interpolate(weighted.clamp(min=0)[None, None], size=(64, 64),
                                                                 mode="bilinear", align_corners=False)[0, 0])
    assert result.score == pytest.approx(float(score.detach()), rel=1e-5)
    assert bool((weighted < 0).any()), "the ReLU must have removed something for this test to mean anything"
    assert float(result.attribution.min()) >= 0 and float(result.attribution.max()) > 0


def test_the_map_depends_on_the_class(glyphnet: VizModel, icons: torch.Tensor) -> None:
    maps = [grad_cam(glyphnet, icons[:1], target).layer_map for target in range(3)]
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[1], maps[2])


def test_default_layer_is_the_last_convolutional_block(glyphnet: VizModel, random_squeezenet: VizModel) -> None:
    assert default_layer(glyphnet) == "conv4"
    assert default_layer(random_squeezenet) == "fire9"


def test_plot_draws_over_the_image_outside_pyplot(glyphnet: VizModel, icons: torch.Tensor) -> None:
    import matplotlib.pyplot as plt

    result = grad_cam(glyphnet, icons[:1])
    assert isinstance(result, GradCamResult)
    figures = plt.get_fignums()
    figure = plot_grad_cam(result)
    assert isinstance(figure, Figure) and plt.get_fignums() == figures
    assert len(figure.axes[0].images) == 2 and figure.axes[0].get_title() == "Grad-CAM at conv4"
    ax = Figure().add_subplot()
    assert plot_grad_cam(result, icons[:1], ax=ax, title="x") is ax.figure and ax.get_title() == "x"
    with pytest.raises(ValueError, match="pass the image the result was computed on"):
        plot_grad_cam(result, viztools.load_image("cat", 32))


def test_errors_say_what_to_do(glyphnet: VizModel, icons: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"without positions.*layer='conv4'"):
        grad_cam(glyphnet, icons[:1], layer="fc1")
    with pytest.raises(ValueError, match=r"Unknown layer 'conv9'"):
        grad_cam(glyphnet, icons[:1], layer="conv9")
    with pytest.raises(TypeError, match=r"not a plain torch\.nn\.Module"):
        grad_cam(glyphnet.network, icons[:1])
    with pytest.raises(ValueError, match="Unknown class name"):
        grad_cam(glyphnet, icons[:1], "zebra")
    with pytest.raises(TypeError, match="takes the result of grad_cam"):
        plot_grad_cam(icons)
