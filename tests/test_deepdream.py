"""DeepDream: the dream objective rises, its gradient is the activation, octaves keep the size, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from viztools.deepdream import deepdream, octave_sizes
from viztools.hooks import attach, forward_activations, has_hooks
from viztools.models import VizModel


def dream_model(classifier_size: int = 8) -> VizModel:
    """conv -> ReLU -> conv -> ReLU -> flatten -> linear: the classifier only accepts ``classifier_size`` inputs."""
    generator = torch.Generator().manual_seed(1)
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * classifier_size * classifier_size, 2),
    )
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return VizModel(name="dream", network=network, categories=["x", "y"], input_size=classifier_size,
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), layers={"conv1": "1", "conv2": "3", "logits": "5"})


def photo(height: int = 16, width: int = 16, seed: int = 0) -> torch.Tensor:
    smooth = torch.rand(1, 3, height // 4, width // 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(smooth, size=(height, width), mode="bilinear") * 0.6 + 0.2


def dream_value(model: VizModel, image: torch.Tensor, layer: str) -> float:
    with torch.no_grad():
        return 0.5 * float(forward_activations(model, image, [layer])[layer].pow(2).sum())


def test_the_dream_objective_rises():
    model, image = dream_model(), photo()
    dreamed = deepdream(model, image, layer="conv2", steps=10, octaves=1, seed=0).image
    assert dream_value(model, dreamed, "conv2") > 1.5 * dream_value(model, image, "conv2")
    more = deepdream(model, image, layer="conv2", steps=30, octaves=1, seed=0).image
    assert dream_value(model, more, "conv2") > dream_value(model, dreamed, "conv2")


def test_the_gradient_at_the_layer_equals_its_activation_inside_the_loop():
    model = dream_model()
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, inputs, output):
        if output.requires_grad:  # the loop's final evaluation of the image runs without gradients
            output.register_hook(lambda grad: pairs.append((output.detach().clone(), grad.clone())))

    with attach(model.layer("conv2"), forward=record):
        deepdream(model, photo(), layer="conv2", steps=3, octaves=2, seed=0)
    assert len(pairs) == 6
    for activation, gradient in pairs:
        # the loop minimizes -0.5 * sum(a^2): the gradient of the loss is -a
        torch.testing.assert_close(-gradient, activation)


def test_one_step_matches_a_naive_normalized_gradient_step():
    model, image = dream_model(), photo()
    pixels = image.clone().requires_grad_(True)
    activation = model.network[:4](model.normalize(pixels))
    (0.5 * activation.pow(2).sum()).backward()
    gradient = pixels.grad
    expected = (image + 0.01 * gradient / gradient.abs().mean()).clamp(0, 1)
    dreamed = deepdream(model, image, layer="conv2", steps=1, lr=0.01, octaves=1, jitter=0).image
    torch.testing.assert_close(dreamed, expected)


def test_octaves_return_the_input_size_and_change_the_result():
    model = dream_model()
    image = photo(20, 28)
    multi = deepdream(model, image, layer="conv1", steps=3, octaves=3, octave_scale=1.5, seed=0).image
    single = deepdream(model, image, layer="conv1", steps=3, octaves=1, seed=0).image
    assert multi.shape == single.shape == image.shape
    assert multi.min() >= 0 and multi.max() <= 1
    assert not torch.allclose(multi, single)


def test_octave_sizes():
    assert octave_sizes(100, 100, 3, 2.0) == [(25, 25), (50, 50), (100, 100)]
    assert octave_sizes(20, 28, 2, 1.4) == [(14, 20), (20, 28)]
    assert octave_sizes(10, 10, 5, 2.0) == [(8, 8), (10, 10)]  # never below 8 px


def test_same_seed_same_dream_other_seed_differs():
    model, image = dream_model(), photo()

    def once(seed: int) -> torch.Tensor:
        return deepdream(model, image, layer="conv2", steps=4, octaves=2, jitter=2, seed=seed).image

    assert torch.equal(once(5), once(5))
    assert not torch.equal(once(5), once(6))


def test_any_image_size_works_although_the_classifier_needs_a_fixed_size():
    model = dream_model(classifier_size=8)
    image = photo(24, 24)
    with pytest.raises(RuntimeError):
        model(image)
    calls = []
    with attach(model.network[5], forward=lambda module, inputs, output: calls.append(1)):
        dreamed = deepdream(model, image, layer="conv1", steps=2, octaves=2, seed=0).image
    assert dreamed.shape == image.shape
    assert calls == []  # the forward pass stopped at conv1: the classifier never ran
    assert not has_hooks(model.network)


def test_keyboard_interrupt_returns_an_image_of_the_input_size():
    model, image = dream_model(), photo(16, 16)

    def interrupt(progress) -> bool:
        raise KeyboardInterrupt

    dreamed = deepdream(model, image, layer="conv2", steps=5, octaves=3, octave_scale=1.4, should_stop=interrupt).image
    assert dreamed.shape == image.shape
    assert not has_hooks(model.network)


def test_callback_can_stop_early():
    model, image = dream_model(), photo()
    steps_seen = []
    deepdream(model, image, layer="conv2", steps=10, octaves=2,
              should_stop=lambda p: steps_seen.append(p.step) or p.step == 2)
    assert steps_seen == [1, 2]


def test_bad_arguments_raise_helpful_errors():
    model, image = dream_model(), photo()
    with pytest.raises(ValueError, match=r"Unknown layer 'conv3'.*conv1, conv2"):
        deepdream(model, image, layer="conv3")
    with pytest.raises(ValueError, match="octaves must be"):
        deepdream(model, image, layer="conv1", octaves=0)
    with pytest.raises(ValueError, match="steps must be"):
        deepdream(model, image, layer="conv1", steps=-1)
    with pytest.raises(ValueError, match="octave_scale must be"):
        deepdream(model, image, layer="conv1", octave_scale=1.0)
    with pytest.raises(ValueError, match=r"shape \(1, 3, H, W\)"):
        deepdream(model, torch.rand(1, 1, 16, 16), layer="conv1")
    with pytest.raises(ValueError, match="cannot process a 16x16 image"):
        deepdream(model, image, layer="logits", octaves=1)
    assert not has_hooks(model.network)


def test_glyphnet_dreams_at_any_size_although_fc1_needs_64_px(glyphnet):
    image = photo(96, 80)
    dreamed = deepdream(glyphnet, image, layer="conv4", steps=3, octaves=2, seed=0).image
    assert dreamed.shape == image.shape
    assert dream_value(glyphnet, dreamed, "conv4") > dream_value(glyphnet, image, "conv4")
    at_input_size = deepdream(glyphnet, photo(64, 64), layer="fc1", steps=2, octaves=1, seed=0).image
    assert at_input_size.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="cannot process a 96x80 image"):
        deepdream(glyphnet, image, layer="fc1", octaves=1)
    assert not has_hooks(glyphnet.network)


def test_should_stop_sees_the_octave_of_each_step():
    model, image = dream_model(), photo()
    seen = []
    deepdream(model, image, layer="conv2", steps=2, octaves=3, should_stop=lambda p: seen.append((p.stage, p.step)))
    assert seen == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
