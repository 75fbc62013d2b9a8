"""Tests for viztools.saliency: hand-computed maps on tiny networks, Captum as an oracle, properties, hygiene."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

import viztools
from viztools.hooks import has_hooks, layer_output_shape, receptive_field
from viztools.models import VizModel
from viztools.saliency import (
    RULES,
    NeuronGradient,
    deconvnet,
    gradient_image,
    guided_backprop,
    input_gradient,
    neuron_gradient,
    plot_saliency,
    relu_rule,
    saliency,
)


def wrap(network: nn.Module, layers: dict[str, str] | None = None, classes: int = 2) -> VizModel:
    """A hand-built network as a VizModel with no normalization (pixels go in unchanged)."""
    return VizModel(name="tiny", network=network, categories=[f"class{i}" for i in range(classes)], input_size=1,
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layers=layers or {})


def set_weights(layer: nn.Module, weight: list, bias: list) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight).view_as(layer.weight))
        layer.bias.copy_(torch.tensor(bias))


@pytest.fixture
def glyph(random_glyphnet: VizModel) -> VizModel:
    """The shared random-weight GlyphNet (tests/conftest.py, seed 0)."""
    return random_glyphnet


@pytest.fixture(scope="module")
def glyph_image() -> torch.Tensor:
    return viztools.load_image("cat", 64)


# --------------------------------------------------------------------------------------------------------------
# Hand-computed networks
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def mlp() -> VizModel:
    """3 inputs -> Linear -> ReLU -> Linear, on a 1x1 RGB image.

    For x = (0.5, 0.25, 1) the hidden pre-activations are W1 x = (1, 2, -0.25); the class-0 row of W2 is
    (1, -1, 3), so the gradient arriving at the ReLU is (1, -1, 3).
      plain:     mask (1, 1, 0)            -> (1, -1, 0) -> W1^T (1, -1, 0) = (-1, 2, -1)
      guided:    mask and positive (1,0,0) -> (1, 0, 0)  -> first row of W1  = (1, 2, 0)
      deconvnet: positive only             -> (1, 0, 3)  -> row0 + 3 row2    = (4, 5, -3)
    """
    network = nn.Sequential(nn.Flatten(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    set_weights(network[1], [[1, 2, 0], [2, 0, 1], [1, 1, -1]], [0, 0, 0])
    set_weights(network[3], [[1, -1, 3], [0.5, 0.5, 0.5]], [0, 0])
    return wrap(network, {"hidden": "2"})


MLP_PIXEL = torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    ("rule", "expected"), [("plain", [-1.0, 2.0, -1.0]), ("guided", [1.0, 2.0, 0.0]), ("deconvnet", [4.0, 5.0, -3.0])]
)
def test_class_score_rules_match_hand_computation(mlp: VizModel, rule: str, expected: list[float]) -> None:
    gradient = input_gradient(mlp, MLP_PIXEL, target=0, rule=rule)
    assert gradient.shape == (3, 1, 1)
    torch.testing.assert_close(gradient.flatten(), torch.tensor(expected))


def test_named_functions_are_the_rules(mlp: VizModel) -> None:
    torch.testing.assert_close(guided_backprop(mlp, MLP_PIXEL, 0).flatten(), torch.tensor([1.0, 2.0, 0.0]))
    torch.testing.assert_close(deconvnet(mlp, MLP_PIXEL, "class0").flatten(), torch.tensor([4.0, 5.0, -3.0]))
    torch.testing.assert_close(saliency(mlp, MLP_PIXEL, 0), torch.tensor([[2.0]]))  # max(|-1|, |2|, |-1|)


def test_saliency_is_channel_max_of_absolute_gradient() -> None:
    """For a linear model the gradient of a class score is its weight row, whatever the image."""
    network = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    row = [[[1, -4], [0, 2]], [[-3, 1], [0.5, 0]], [[2, 2], [-1, -5]]]  # (channel, row, col)
    set_weights(network[1], [[0.0] * 12, torch.tensor(row).flatten().tolist()], [0, 1])
    model = wrap(network)
    image = torch.zeros(1, 3, 2, 2)  # logits (0, 1): class 1 is the top prediction
    torch.testing.assert_close(input_gradient(model, image), torch.tensor(row))
    expected = torch.tensor([[3.0, 4.0], [1.0, 5.0]])
    torch.testing.assert_close(saliency(model, image), expected)
    torch.testing.assert_close(saliency(model, image, "class1"), expected)
    torch.testing.assert_close(saliency(model, image, 0), torch.zeros(2, 2))


def test_deconvnet_passes_gradient_through_inactive_unit() -> None:
    """One ReLU with pre-activation 0.5 - 1 = -0.5 < 0: gradient and guided backprop are 0, deconvnet is not."""
    network = nn.Sequential(nn.Flatten(), nn.Linear(3, 1), nn.ReLU(), nn.Linear(1, 1))
    set_weights(network[1], [[1, 0, 0]], [-1])
    set_weights(network[3], [[2]], [0])
    model = wrap(network, classes=1)
    image = torch.tensor([0.5, 0.0, 0.0]).view(1, 3, 1, 1)
    assert input_gradient(model, image, 0, rule="plain").abs().sum() == 0
    assert input_gradient(model, image, 0, rule="guided").abs().sum() == 0
    torch.testing.assert_close(deconvnet(model, image, 0).flatten(), torch.tensor([2.0, 0.0, 0.0]))


@pytest.fixture
def convnet() -> VizModel:
    """1x1 conv (3->2) -> ReLU -> (1x2) conv (2->1) -> ReLU -> linear, on a 1x3 image; see the test for the maths.

    x = channels (1, 1, 0.75), (0, 0.5, 0.5), (0.5, 1, 0). conv1 rows (1, -1, 0) bias 0 and (0, 1, 1) bias -1:
    h0 = (1, 0.5, 0.25), h1 = (-0.5, 0.5, -0.5). conv2 taps (2, -1) on ReLU(h0) and (1, 3) on ReLU(h1):
    out = (2 - 0.5 + 0 + 1.5, 1 - 0.25 + 0.5 + 0) = (3, 1.25).
    """
    network = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Conv2d(2, 1, (1, 2)), nn.ReLU(), nn.Flatten(),
                            nn.Linear(2, 2))
    set_weights(network[0], [[1, -1, 0], [0, 1, 1]], [0, -1])
    set_weights(network[2], [[2, -1], [1, 3]], [0])
    set_weights(network[5], [[1, 0], [0, 1]], [0, 0])
    return wrap(network, {"relu1": "1", "relu2": "3"})


CONV_IMAGE = torch.tensor([[1.0, 1.0, 0.75], [0.0, 0.5, 0.5], [0.5, 1.0, 0.0]]).view(1, 3, 1, 3)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # Unit relu2[0, 0] (value 3): gradient at ReLU(h0) = (2, -1, 0), at ReLU(h1) = (1, 3, 0).
        # plain masks h > 0: g_h0 = (2, -1, 0), g_h1 = (0, 3, 0); guided also drops -1: g_h0 = (2, 0, 0);
        # deconvnet keeps positives only: g_h0 = (2, 0, 0), g_h1 = (1, 3, 0) (h1[0] < 0 still passes).
        # Pixels: c0 = g_h0, c1 = -g_h0 + g_h1, c2 = g_h1.
        ("plain", [[2, -1, 0], [-2, 4, 0], [0, 3, 0]]),
        ("guided", [[2, 0, 0], [-2, 3, 0], [0, 3, 0]]),
        ("deconvnet", [[2, 0, 0], [-1, 3, 0], [1, 3, 0]]),
    ],
)
def test_neuron_gradient_matches_hand_computation(convnet: VizModel, rule: str, expected: list) -> None:
    result = neuron_gradient(convnet, CONV_IMAGE, layer="relu2", channel=0, rule=rule)
    assert isinstance(result, NeuronGradient)
    assert result.position == (0, 0)  # the larger of (3, 1.25)
    assert result.activation == pytest.approx(3.0)
    assert (result.layer, result.channel, result.rule) == ("relu2", 0, rule)
    torch.testing.assert_close(result.gradient, torch.tensor(expected, dtype=torch.float32).view(3, 1, 3))


def test_neuron_gradient_at_explicit_position_and_lower_layer(convnet: VizModel) -> None:
    # relu2[0, 1] = 1.25: gradient at ReLU(h0) = (0, 2, -1), at ReLU(h1) = (0, 1, 3); masks keep h0, h1[1].
    result = neuron_gradient(convnet, CONV_IMAGE, layer="relu2", channel=0, position=(0, 1))
    assert result.activation == pytest.approx(1.25)
    torch.testing.assert_close(result.gradient.view(3, 3), torch.tensor([[0, 2, -1], [0, -1, 1], [0, 1, 0.0]]))
    # relu1 channel 1 = ReLU(h1) = (0, 0.5, 0): default position is its maximum, (0, 1).
    result = neuron_gradient(convnet, CONV_IMAGE, layer="relu1", channel=1)
    assert result.position == (0, 1)
    assert result.activation == pytest.approx(0.5)
    torch.testing.assert_close(result.gradient.view(3, 3), torch.tensor([[0, 0, 0], [0, 1, 0], [0, 1, 0.0]]))


def test_neuron_gradient_on_fully_connected_layer(mlp: VizModel) -> None:
    # hidden unit 0 = ReLU(x0 + 2 x1) = 1: its gradient is the first row of W1.
    result = neuron_gradient(mlp, MLP_PIXEL, layer="hidden", channel=0)
    assert result.position is None
    assert result.activation == pytest.approx(1.0)
    torch.testing.assert_close(result.gradient.flatten(), torch.tensor([1.0, 2.0, 0.0]))


# --------------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------------


def test_guided_backprop_and_deconvnet_are_non_negative_below_a_first_relu() -> None:
    """When the first operation is a ReLU, both rules hand the pixels only positive gradients (times 1/std)."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    model = VizModel(name="relu-first", network=network, categories=["a", "b", "c"], input_size=8,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), layers={"conv2": "4"})
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = input_gradient(model, image, 0)
    assert (plain < 0).any()
    for rule in ("guided", "deconvnet"):
        for gradient in (input_gradient(model, image, 0, rule=rule),
                         neuron_gradient(model, image, layer="conv2", channel=2, rule=rule).gradient):
            assert (gradient >= 0).all()
            assert (gradient > 0).any()
    # Pixels whose normalized value is negative are cut off by the first ReLU's forward mask under guided backprop.
    dead = (image[0] < 0.5)
    assert (input_gradient(model, image, 0, rule="guided")[dead] == 0).all()
    assert (deconvnet(model, image, 0)[dead] != 0).any()


class TwinNet(nn.Module):
    """A branching network (two branches concatenated, as in SqueezeNet's Fire modules) with ReLUs of one style."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.left = nn.Conv2d(4, 3, 1)
        self.right = nn.Conv2d(4, 3, 3, padding=1)
        self.head = nn.Linear(6 * 4 * 4, 3)
        self.stem_relu, self.left_relu, self.right_relu = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def relu(self, module: nn.ReLU, x: torch.Tensor) -> torch.Tensor:
        return {
            "module": lambda: module(x),
            "F.relu": lambda: F.relu(x),
            "torch.relu": lambda: torch.relu(x),
            "Tensor.relu": lambda: x.relu(),
            "aten.relu": lambda: torch.ops.aten.relu.default(x),
            "F.relu(inplace=True)": lambda: F.relu(x, inplace=True),
            "torch.relu_": lambda: torch.relu_(x),
            "Tensor.relu_": lambda: x.relu_(),
            "relu_ result unused": lambda: (torch.relu_(x), x)[1],
        }[self.style]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem_relu, self.stem(x))
        x = torch.cat([self.relu(self.left_relu, self.left(x)), self.relu(self.right_relu, self.right(x))], dim=1)
        return self.head(torch.flatten(F.max_pool2d(x, 2), 1))


def twin_model(style: str) -> VizModel:
    torch.manual_seed(3)
    model = VizModel(name=style, network=TwinNet(style if style != "nn.ReLU(inplace=True)" else "module"),
                     categories=["a", "b", "c"], input_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     layers={"stem": "stem", "right": "right"})
    if style == "nn.ReLU(inplace=True)":  # VizModel makes ReLUs out of place; a user may switch them back
        for module in model.network.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = True
    return model


TWIN_IMAGE = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "style",
    ["F.relu", "torch.relu", "Tensor.relu", "aten.relu", "F.relu(inplace=True)", "torch.relu_", "Tensor.relu_",
     "relu_ result unused", "nn.ReLU(inplace=True)"],
)
def test_functional_and_inplace_relus_give_the_module_twins_maps(style: str) -> None:
    reference, twin = twin_model("module"), twin_model(style)
    for rule in RULES:
        expected = input_gradient(reference, TWIN_IMAGE, 1, rule=rule)
        torch.testing.assert_close(input_gradient(twin, TWIN_IMAGE, 1, rule=rule), expected, rtol=0, atol=0)
        expected = neuron_gradient(reference, TWIN_IMAGE, layer="right", channel=2, rule=rule).gradient
        torch.testing.assert_close(neuron_gradient(twin, TWIN_IMAGE, layer="right", channel=2, rule=rule).gradient,
                                   expected,
                                   rtol=0, atol=0)
    assert not has_hooks(twin.network)


def test_twin_rules_differ_so_the_twin_test_can_fail() -> None:
    model = twin_model("module")
    plain, guided, deconv = (input_gradient(model, TWIN_IMAGE, 1, rule=rule) for rule in RULES)
    assert not torch.allclose(plain, guided)
    assert not torch.allclose(guided, deconv)


def test_relu_rule_context_is_undone_on_exit() -> None:
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    with relu_rule("deconvnet"):
        y = F.relu(x)
    y.backward(torch.tensor([1.0, -1.0, 1.0]))
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 0.0, 1.0]))  # positive gradients, mask ignored
    x.grad = None
    F.relu(x).backward(torch.tensor([1.0, -1.0, 1.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, -1.0, 1.0]))  # the true gradient again


def test_plain_gradient_matches_finite_differences(glyph: VizModel, glyph_image: torch.Tensor) -> None:
    """Naive reference: central differences on a float64 copy of GlyphNet at a few pixels."""
    network = copy.deepcopy(glyph.network).double()
    model = VizModel(name="glyphnet64", network=network, categories=glyph.categories, input_size=64,
                     mean=glyph.mean, std=glyph.std)
    image = glyph_image.double()
    gradient = input_gradient(model, image, 4)
    assert gradient.dtype == torch.float64
    generator = torch.Generator().manual_seed(0)
    step = 1e-6
    for _ in range(6):
        c, r, k = (int(torch.randint(0, n, (1,), generator=generator)) for n in (3, 64, 64))
        bumped = [image.clone(), image.clone()]
        bumped[0][0, c, r, k] += step
        bumped[1][0, c, r, k] -= step
        with torch.no_grad():
            numeric = (model(bumped[0])[0, 4] - model(bumped[1])[0, 4]) / (2 * step)
        assert float(gradient[c, r, k]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)


def test_glyphnet_shapes_and_receptive_field(glyph: VizModel, glyph_image: torch.Tensor) -> None:
    assert saliency(glyph, glyph_image).shape == (64, 64)
    assert guided_backprop(glyph, glyph_image, "star").shape == (3, 64, 64)
    for rule in RULES:
        result = neuron_gradient(glyph, glyph_image, layer="conv2", channel=5, rule=rule)
        rows, cols = receptive_field(glyph, "conv2", result.position)
        outside = torch.ones(64, 64, dtype=torch.bool)
        outside[rows, cols] = False
        assert (result.gradient[:, outside] == 0).all()
        assert (result.gradient != 0).any()
    fully_connected = neuron_gradient(glyph, glyph_image, layer="fc1", channel=7, rule="guided")
    assert fully_connected.position is None and fully_connected.gradient.shape == (3, 64, 64)


def test_deterministic(glyph: VizModel, glyph_image: torch.Tensor) -> None:
    for rule in RULES:
        assert torch.equal(input_gradient(glyph, glyph_image, rule=rule), input_gradient(glyph, glyph_image, rule=rule))
        first = neuron_gradient(glyph, glyph_image, layer="pool2", channel=9, rule=rule)
        second = neuron_gradient(glyph, glyph_image, layer="pool2", channel=9, rule=rule)
        assert first.position == second.position and torch.equal(first.gradient, second.gradient)


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_random_squeezenet_matches_captum_and_rules_differ_from_plain() -> None:
    """SqueezeNet's Fire modules concatenate branches; Captum's module-hook implementation is the oracle."""
    from captum.attr import Deconvolution, GuidedBackprop

    torch.manual_seed(0)
    model = viztools.load_model("squeezenet1_0", weights="random")
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))

    class PixelNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = model.network

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.network(model.normalize(pixels))

    target = model.resolve_target(None, image)
    plain = input_gradient(model, image, target)
    for rule, oracle in (("guided", GuidedBackprop), ("deconvnet", Deconvolution)):
        ours = input_gradient(model, image, target, rule=rule)
        theirs = oracle(PixelNetwork()).attribute(image.clone().requires_grad_(True), target=target)[0]
        torch.testing.assert_close(ours, theirs)
        assert ours.abs().sum() > 0
        assert not torch.allclose(ours, plain)
        unit = neuron_gradient(model, image, layer="fire3", channel=20, rule=rule)
        assert not torch.allclose(unit.gradient, neuron_gradient(model, image, layer="fire3", channel=20).gradient)
    assert not has_hooks(model.network)


# --------------------------------------------------------------------------------------------------------------
# The model is left as it was; bad input
# --------------------------------------------------------------------------------------------------------------


def test_errors_say_what_to_do(glyph: VizModel, glyph_image: torch.Tensor) -> None:
    too_small = viztools.load_image("cat", 32)  # the classifier's Linear cannot run: caught before any hook
    with pytest.raises(ValueError, match="cannot classify a 32x32 px image"):
        input_gradient(glyph, too_small, 3, rule="guided")
    with pytest.raises(ValueError, match="cannot classify a 32x32 px image"):
        neuron_gradient(glyph, too_small, layer="fc1", channel=0, rule="deconvnet")
    with pytest.raises(ValueError, match="channel"):
        neuron_gradient(glyph, glyph_image, layer="conv2", channel=layer_output_shape(glyph, "conv2")[0], rule="guided")
    with pytest.raises(ValueError, match=r"Unknown layer 'conv9'.*conv1"):
        neuron_gradient(glyph, glyph_image, layer="conv9", channel=0)
    channels, height, _ = layer_output_shape(glyph, "conv2")
    with pytest.raises(ValueError, match=rf"channel of layer 'conv2' must be an integer in \[0, {channels - 1}\]"):
        neuron_gradient(glyph, glyph_image, layer="conv2", channel=channels)
    with pytest.raises(ValueError, match=rf"row of layer 'conv2' must be an integer in \[0, {height - 1}\]"):
        neuron_gradient(glyph, glyph_image, layer="conv2", channel=0, position=(height, 0))
    with pytest.raises(TypeError, match=r"position must be a \(row, col\) pair"):
        neuron_gradient(glyph, glyph_image, layer="conv2", channel=0, position=5)
    with pytest.raises(ValueError, match=r"fully connected.*position=None"):
        neuron_gradient(glyph, glyph_image, layer="fc1", channel=0, position=(0, 0))
    with pytest.raises(ValueError, match=r"Unknown rule 'guide'\. Did you mean 'guided'"):
        neuron_gradient(glyph, glyph_image, layer="conv2", channel=0, rule="guide")
    with pytest.raises(ValueError, match="Unknown rule"):
        input_gradient(glyph, glyph_image, rule="smooth")
    with pytest.raises(ValueError, match=r"shape \(1, 3, H, W\)"):
        saliency(glyph, glyph_image[:, :1])
    with pytest.raises(ValueError, match="batch size 1"):
        saliency(glyph, glyph_image.repeat(2, 1, 1, 1))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        saliency(glyph, glyph_image.numpy())
    with pytest.raises(ValueError, match="Unknown class name 'cat'"):
        saliency(glyph, glyph_image, "cat")
    with pytest.raises(TypeError, match="VizModel"):
        saliency(glyph.network, glyph_image)


@pytest.mark.parametrize("function", [saliency, input_gradient, guided_backprop, deconvnet])
def test_images_that_are_not_pixels_are_rejected(glyph: VizModel, glyph_image: torch.Tensor, function) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        function(glyph, torch.full_like(glyph_image, float("nan")))
    with pytest.raises(ValueError, match="divide by 255"):
        function(glyph, glyph_image * 255)
    with pytest.raises(TypeError, match=r"VizModel, not a plain torch\.nn\.Module"):
        function(glyph.network, glyph_image)
    with pytest.raises(ValueError, match="NaN or infinite"):
        neuron_gradient(glyph, torch.full_like(glyph_image, float("nan")), layer="conv1", channel=0)


def test_training_mode_is_rejected(mlp: VizModel) -> None:
    mlp.network[2].train()  # one submodule is enough to make results random or change the model
    with pytest.raises(ValueError, match=r"training mode.*model\.network\.eval\(\)"):
        saliency(mlp, MLP_PIXEL)
    mlp.network.eval()
    torch.testing.assert_close(saliency(mlp, MLP_PIXEL, 0), torch.tensor([[2.0]]))


# --------------------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------------------


def test_gradient_image_maps_zero_to_grey_and_keeps_signs() -> None:
    gradient = torch.zeros(3, 4, 4)
    gradient[0, 0, 0], gradient[1, 1, 1] = 2.0, -2.0
    picture = gradient_image(gradient, percentile=100)
    assert picture.shape == (4, 4, 3)
    assert picture[0, 0, 0] == pytest.approx(1.0) and picture[1, 1, 1] == pytest.approx(0.0)
    assert picture[2, 2, 2] == pytest.approx(0.5)
    assert (gradient_image(torch.zeros(3, 2, 2)) == 0.5).all()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        gradient_image(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="percentile"):
        gradient_image(gradient, percentile=0)


def test_plot_saliency_draws_image_beside_maps(glyph: VizModel, glyph_image: torch.Tensor) -> None:
    figure = plot_saliency(saliency(glyph, glyph_image), glyph_image)
    assert isinstance(figure, Figure)
    assert [ax.get_title() for ax in figure.axes] == ["image", "saliency"]
    assert np.array_equal(figure.axes[0].get_images()[0].get_array(), viztools.to_numpy_image(glyph_image))
    maps = {"gradient": input_gradient(glyph, glyph_image), "guided": guided_backprop(glyph, glyph_image)}
    assert [ax.get_title() for ax in plot_saliency(maps, glyph_image).axes] == ["image", "gradient", "guided"]
    assert [ax.get_title() for ax in plot_saliency(maps).axes] == ["gradient", "guided"]
    with pytest.raises(ValueError, match="empty"):
        plot_saliency({}, glyph_image)
    with pytest.raises(ValueError, match=r"map 'x' must be an \(H, W\) or \(3, H, W\) tensor"):
        plot_saliency({"x": torch.zeros(1, 3, 64, 64)}, glyph_image)
    with pytest.raises(ValueError, match="NaN or infinite"):
        plot_saliency(maps, torch.full_like(glyph_image, float("nan")))


def test_plot_saliency_draws_into_a_given_axes(glyph: VizModel, glyph_image: torch.Tensor) -> None:
    figure = Figure(layout="constrained")
    left, right = figure.subplots(1, 2)
    assert plot_saliency(saliency(glyph, glyph_image), glyph_image, ax=right) is figure
    assert figure.axes[0] is left and right not in figure.axes
    assert [ax.get_title() for ax in figure.axes[1:]] == ["image", "saliency"]


# --------------------------------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.imagenet
def test_cat_saliency_concentrates_on_the_cat(imagenet_squeezenet: VizModel) -> None:
    """Chelsea's 224 crop is the cat's face, with blurred background only at the lower right edge.

    Face box: rows 48-208, cols 32-208 (both eyes and the nose); background: rows 128-224, cols 212-224.
    """
    model = imagenet_squeezenet
    image = model.preprocess("cat")
    target = model.resolve_target(None, image)
    assert 281 <= target <= 285
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heat = saliency(model, image, target)
    face = heat[48:208, 32:208].mean()
    background = heat[128:, 212:].mean()
    border = torch.ones(224, 224, dtype=torch.bool)
    border[16:-16, 16:-16] = False
    assert face > 2 * background
    assert face > 1.5 * heat[border].mean()
