"""Tests for viztools.adversarial: fooling images, FGSM and iterative FGSM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import viztools
from viztools.adversarial import fgsm, iterative_fgsm, magnified_difference
from viztools.hooks import has_hooks
from viztools.models import VizModel

SIZE = 8


def linear_model(weight: torch.Tensor) -> VizModel:
    """Two classes with logits ``(0, w . x)``: the cross-entropy gradient for label 0 is ``p1 * w``."""
    linear = nn.Linear(weight.numel(), 2, bias=False)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[1] = weight.flatten()
    network = nn.Sequential(nn.Flatten(), linear)
    return VizModel(name="linear", network=network, categories=["zero", "one"], input_size=SIZE,
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layers={"logits": "1"})


@pytest.fixture
def linear() -> tuple[VizModel, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(1, 3, SIZE, SIZE, generator=generator)
    weight[weight.abs() < 1e-3] = 0.5  # no zero entries: sign(w) is +-1 everywhere
    return linear_model(weight), weight


def grey(value: float = 0.5) -> torch.Tensor:
    return torch.full((1, 3, SIZE, SIZE), value)


# --------------------------------------------------------------------------------------------------------------
# Known answers on a linear model (Goodfellow et al. 2015, section 3)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [1 / 255, 2 / 255, 0.1])
def test_fgsm_on_linear_model_is_epsilon_times_sign_of_w(linear, epsilon):
    model, weight = linear
    away_from_zero = fgsm(model, grey(), 0, epsilon=epsilon)
    assert torch.equal(away_from_zero.perturbation, (grey() + epsilon * weight.sign()) - grey())
    away_from_one = fgsm(model, grey(), "one", epsilon=epsilon)
    assert torch.equal(away_from_one.perturbation, (grey() - epsilon * weight.sign()) - grey())
    towards_one = fgsm(model, grey(), "one", epsilon=epsilon, targeted=True)
    assert torch.equal(towards_one.adversarial, away_from_zero.adversarial)
    assert towards_one.linf == pytest.approx(epsilon)
    assert towards_one.steps == 1


def test_fgsm_default_label_is_the_models_prediction(linear):
    model, weight = linear
    image = (grey() - 0.2 * weight.sign()).clamp(0, 1)  # w . x < 0: predicted "zero"
    assert model.top_k(image, 1)[0][1] == "zero"
    assert torch.equal(fgsm(model, image, epsilon=0.05).adversarial, fgsm(model, image, 0, epsilon=0.05).adversarial)


def test_iterative_fgsm_on_linear_model_walks_to_the_ball_edge(linear):
    model, weight = linear
    # The gradient sign never changes for a linear model: after k steps of size a the image moved min(k a, eps).
    three_steps = iterative_fgsm(model, grey(), 0, epsilon=0.1, step_size=0.02, steps=3)
    torch.testing.assert_close(three_steps.perturbation, 0.06 * weight.sign())
    projected = iterative_fgsm(model, grey(), 0, epsilon=0.1, step_size=0.03, steps=7)
    torch.testing.assert_close(projected.perturbation, 0.1 * weight.sign())
    assert projected.steps == 7


def test_fgsm_clips_to_unit_range_and_stays_in_ball(linear):
    model, weight = linear
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    image[..., :2, :] = 1.0
    image[..., 2:4, :] = 0.0
    for result in (fgsm(model, image, 0, epsilon=0.2),
                   iterative_fgsm(model, image, 0, epsilon=0.2, step_size=0.05, steps=10, random_start=True)):
        assert float(result.adversarial.min()) >= 0.0 and float(result.adversarial.max()) <= 1.0
        assert result.linf <= 0.2 + 1e-6
    expected = (image + 0.2 * weight.sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, image, 0, epsilon=0.2).adversarial, expected)


def test_iterative_fgsm_defaults_follow_kurakin(linear):
    model, _ = linear
    assert iterative_fgsm(model, grey(), epsilon=2 / 255).steps == round(min(2 + 4, 1.25 * 2))
    assert iterative_fgsm(model, grey(), epsilon=16 / 255).steps == 16 + 4
    torch.testing.assert_close(iterative_fgsm(model, grey(), 0, epsilon=16 / 255, steps=1).linf, 1 / 255)


def test_perturbation_sizes_in_pixels_and_levels(linear):
    model, _ = linear
    result = fgsm(model, grey(), 0, epsilon=4 / 255)
    values = 3 * SIZE * SIZE
    assert result.linf == pytest.approx(4 / 255)
    assert result.linf_levels == pytest.approx(4.0)
    assert result.l2 == pytest.approx(4 / 255 * values**0.5, rel=1e-5)
    assert result.l2_levels == pytest.approx(4.0 * values**0.5, rel=1e-5)
    assert result.rms == pytest.approx(4 / 255, rel=1e-5)


def test_magnified_difference_is_centered_grey():
    original = grey(0.3)
    changed = original.clone()
    changed[0, 0, 0, 0] += 0.01
    changed[0, 1, 0, 0] -= 0.2
    shown = magnified_difference(original, changed, scale=10)
    assert shown[0, 0, 0, 0] == pytest.approx(0.6)
    assert shown[0, 1, 0, 0] == 0.0  # clipped
    assert torch.equal(shown[0, 2], torch.full((SIZE, SIZE), 0.5))


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_helpful_errors(linear):
    model, _ = linear
    with pytest.raises(ValueError, match=r"epsilon must be a number in \[0, 1\]; got -0.01"):
        fgsm(model, grey(), epsilon=-0.01)
    with pytest.raises(ValueError, match=r"Unknown class name 'onne'.*Did you mean 'one'"):
        fgsm(model, grey(), "onne", epsilon=0.1)
    with pytest.raises(ValueError, match="target class index must be an integer in"):
        fgsm(model, grey(), 2, epsilon=0.1)
    with pytest.raises(ValueError, match=r"image must have shape \(1, 3, H, W\)"):
        fgsm(model, torch.rand(1, SIZE, SIZE), epsilon=0.1)
    with pytest.raises(ValueError, match="batch size 1"):
        fgsm(model, torch.rand(2, 3, SIZE, SIZE), epsilon=0.1)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*clamp"):
        fgsm(model, grey() * 255, epsilon=0.1)
    with pytest.raises(ValueError, match="targeted attack needs a target class"):
        fgsm(model, grey(), epsilon=0.1, targeted=True)
    with pytest.raises(ValueError, match="steps must be an integer in"):
        iterative_fgsm(model, grey(), epsilon=0.1, steps=0)
    with pytest.raises(ValueError, match="step_size must be a number"):
        iterative_fgsm(model, grey(), epsilon=0.1, step_size=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        magnified_difference(grey(), torch.rand(1, 3, 4, 4))


# --------------------------------------------------------------------------------------------------------------
# The model is left as it was; determinism
# --------------------------------------------------------------------------------------------------------------


def plain_input_gradient(model: VizModel, image: torch.Tensor) -> torch.Tensor:
    pixels = image.clone().requires_grad_(True)
    model(pixels)[0, 3].backward()
    return pixels.grad


def test_model_unchanged_and_no_hooks_left():
    model = viztools.load_model("glyphnet", weights="random")
    image = viztools.make_glyphworld(1, seed=5)[0]
    before = plain_input_gradient(model, image)
    state = {k: v.clone() for k, v in model.network.state_dict().items()}
    fgsm(model, image, epsilon=0.03)
    iterative_fgsm(model, image, "star", epsilon=0.03, steps=3, targeted=True)
    assert not has_hooks(model.network)
    with pytest.raises(RuntimeError):  # a 32 px image does not fit GlyphNet's classifier
        iterative_fgsm(model, torch.rand(1, 3, 32, 32), 0, epsilon=0.03, steps=3)
    assert not has_hooks(model.network)
    assert not model.network.training
    assert not any(p.requires_grad for p in model.network.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.network.state_dict().items())
    assert torch.equal(plain_input_gradient(model, image), before)


def test_attacks_are_deterministic_and_seeded():
    model = viztools.load_model("glyphnet", weights="random")
    image = viztools.make_glyphworld(1, seed=5)[0]
    image_before = image.clone()
    assert torch.equal(fgsm(model, image, epsilon=0.03).adversarial, fgsm(model, image, epsilon=0.03).adversarial)
    runs = [iterative_fgsm(model, image, epsilon=0.03, steps=2, random_start=True, seed=seed).adversarial
            for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert torch.equal(image, image_before)  # the input is never modified in place
