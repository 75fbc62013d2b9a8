"""Tests for viztools.adversarial: fooling images, FGSM and iterative FGSM."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from torch import nn

import viztools
from viztools.adversarial import (
    classic_fooling_lr,
    fgsm,
    fooling_image,
    fooling_image_optimization,
    iterative_fgsm,
    magnified_difference,
    plot_fooling,
    unrecognizable_image,
)
from viztools.models import VizModel
from viztools.optimize import Progress, Run

matplotlib.use("Agg")

SIZE = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    weight -= weight.mean()  # mid-grey lies on the decision boundary
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


def test_iterative_fgsm_with_one_full_step_equals_fgsm(glyphnet):
    model = glyphnet
    image = viztools.make_glyphworld(1, seed=5)[0]
    for label, targeted in [(None, False), ("star", True)]:
        single = fgsm(model, image, label, epsilon=0.02, targeted=targeted)
        iterated = iterative_fgsm(model, image, label, epsilon=0.02, step_size=0.02, steps=1, targeted=targeted)
        torch.testing.assert_close(iterated.adversarial, single.adversarial, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# Fooling images
# --------------------------------------------------------------------------------------------------------------


def test_fooling_on_linear_model_takes_the_predicted_number_of_steps(linear):
    model, weight = linear
    image = (grey() - 0.02 * weight.sign()).clamp(0, 1)
    margin = -float((weight * image).sum())  # how far "one"'s score is below "zero"'s (which is 0)
    lr = 0.05
    result = fooling_image(model, image, "one", lr=lr)
    # Each step adds lr * w / ||w||, raising the score by lr * ||w||: it crosses 0 after ceil(margin / ...) steps.
    expected_steps = math.ceil(margin / (lr * float(weight.norm())))
    assert result.steps == expected_steps and result.success
    assert result.prediction_name == "one" and result.original_name == "zero"
    torch.testing.assert_close(result.perturbation, expected_steps * lr * weight / weight.norm())
    assert result.l2 == pytest.approx(expected_steps * lr, rel=1e-4)


def test_unrecognizable_image_on_linear_model_reaches_the_confidence(linear):
    model, weight = linear
    # From grey (p = 0.5) each step raises w . x by lr * ||w||; p("one") >= 0.99 needs w . x >= log(99).
    result = unrecognizable_image(model, grey(), "one", confidence=0.99, lr=0.05)
    assert result.steps == math.ceil(math.log(99) / (0.05 * float(weight.norm())))
    assert result.success and result.prediction_name == "one" and result.probability >= 0.99
    assert torch.equal(result.original, grey())
    noisy = unrecognizable_image(model, target=1, confidence=0.999, seed=3)
    assert noisy.success and noisy.probability >= 0.999
    assert not torch.equal(noisy.original, result.original)


def cs231n_fooling(model: VizModel, image: torch.Tensor, target: int, lr: float, max_steps: int):
    """The CS231n exercise's loop, written plainly (in pixel units, with clipping): the reference."""
    fooled, images = image.clone(), []
    for _ in range(max_steps):
        pixels = fooled.clone().requires_grad_(True)
        scores = model(pixels)
        if int(scores.argmax()) == target:
            break
        scores[0, target].backward()
        fooled = (fooled + lr * pixels.grad / pixels.grad.norm()).clamp(0, 1)
        images.append(fooled)
    return fooled, images


def test_fooling_run_matches_the_plain_cs231n_loop(glyphnet):
    model = glyphnet
    image = viztools.make_glyphworld(1, seed=1, start=2)[0]  # a telephone (100%)
    target = int(model.predict(image)[0].argmin())  # the least likely class: several steps
    expected, expected_images = cs231n_fooling(model, image, target, lr=0.1, max_steps=60)
    run = fooling_image_optimization(model, image, target, lr=0.1, max_steps=60)
    assert isinstance(run, Run)
    progress = list(run)
    assert all(isinstance(p, Progress) for p in progress)
    assert [p.step for p in progress] == list(range(1, len(expected_images) + 1))
    assert list(progress[0].losses) == [f"class {target} score"]
    for record, reference in zip(progress, expected_images, strict=True):
        torch.testing.assert_close(record.image, reference, rtol=0, atol=1e-5)
    result = run.result()
    assert 2 <= result.steps == len(expected_images) < 60 and result.success
    torch.testing.assert_close(result.adversarial, expected, rtol=0, atol=1e-5)


def test_fooling_budget_stop_and_trivial_target(linear):
    model, weight = linear
    image = (grey() - 0.2 * weight.sign()).clamp(0, 1)
    short = fooling_image(model, image, "one", lr=0.01, max_steps=3)
    assert short.steps == 3 and not short.success and short.prediction_name == "zero"
    assert short.l2 == pytest.approx(0.03, rel=1e-4)
    already = fooling_image(model, image, "zero")
    assert already.steps == 0 and already.success and torch.equal(already.adversarial, image)
    run = fooling_image_optimization(model, image, "one", lr=0.01, max_steps=50)
    next(run)
    run.stop()
    assert run.result().steps == 1


class InterruptOnce(nn.Module):
    """Wraps a network; its ``at``-th forward pass raises KeyboardInterrupt (Ctrl-C / a notebook's stop button)."""

    def __init__(self, network: nn.Module, at: int) -> None:
        super().__init__()
        self.network, self.at, self.calls = network, at, 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.network(pixels)


def test_ctrl_c_during_fooling_returns_the_image_so_far(linear):
    model, weight = linear
    image = (grey() - 0.2 * weight.sign()).clamp(0, 1)
    # Forward passes: 1 checks that the network runs at the image's size, 1 checks the start, then per step one
    # for the gradient and one for the prediction.
    interrupted = VizModel(name="interrupted", network=InterruptOnce(model.network, at=7), categories=["zero", "one"],
                           input_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    result = fooling_image(interrupted, image, "one", lr=0.01)
    assert result.steps == 2 and not result.success
    assert result.l2 == pytest.approx(0.02, rel=1e-4)


def test_classic_fooling_lr_is_one_normalized_unit(random_glyphnet):
    glyphnet = random_glyphnet
    assert classic_fooling_lr(glyphnet) == pytest.approx(0.25)
    image = viztools.make_glyphworld(1, seed=2)[0]
    target = int(glyphnet.predict(image)[0].argmin())
    one_step = fooling_image(glyphnet, image, target, max_steps=1)
    # one step of length 1 in normalized units: ||normalize(x') - normalize(x)|| = 1 (before clipping, which
    # can only shorten it)
    moved = (glyphnet.normalize(one_step.adversarial) - glyphnet.normalize(image)).norm()
    assert 0.9 < float(moved) <= 1.0 + 1e-5


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
    with pytest.raises(ValueError, match=r"pixel values in \[0, 1\].*divide by 255"):
        fgsm(model, grey() * 255, epsilon=0.1)
    with pytest.raises(ValueError, match="targeted attack needs a target class"):
        fgsm(model, grey(), epsilon=0.1, targeted=True)
    with pytest.raises(ValueError, match="steps must be an integer in"):
        iterative_fgsm(model, grey(), epsilon=0.1, steps=0)
    with pytest.raises(ValueError, match="step_size must be a number"):
        iterative_fgsm(model, grey(), epsilon=0.1, step_size=-1.0)
    with pytest.raises(ValueError, match=r"Unknown class name 'oen'"):
        fooling_image(model, grey(), "oen")
    with pytest.raises(ValueError, match=r"lr must be a number in \(0, inf\)"):
        fooling_image(model, grey(), 1, lr=0)
    with pytest.raises(ValueError, match="max_steps must be an integer"):
        fooling_image(model, grey(), 1, max_steps=-1)
    with pytest.raises(ValueError, match=r"image must have shape"):
        fooling_image(model, torch.rand(3, 3, SIZE, SIZE, 1), 1)
    with pytest.raises(TypeError, match=r"got the string 'one'.*pass it as target='one'"):
        unrecognizable_image(model, "one")
    with pytest.raises(ValueError, match=r"confidence must be a number in \(0, 1\]"):
        unrecognizable_image(model, target=1, confidence=1.5)
    with pytest.raises(ValueError, match="same shape"):
        magnified_difference(grey(), torch.rand(1, 3, 4, 4))


# --------------------------------------------------------------------------------------------------------------
# Images the classifier cannot take; determinism (that the model is left as it was, also after an error, is
# checked for every technique in tests/test_hygiene.py)
# --------------------------------------------------------------------------------------------------------------


def test_too_small_images_get_a_message_naming_preprocess(glyphnet):
    with pytest.raises(ValueError, match=r"cannot classify a 32x32 px image.*model\.preprocess"):
        iterative_fgsm(glyphnet, torch.rand(1, 3, 32, 32), 0, epsilon=0.03, steps=3)
    with pytest.raises(ValueError, match=r"cannot classify a 32x32 px image"):
        fooling_image(glyphnet, torch.rand(1, 3, 32, 32), "star", max_steps=3)


def test_attacks_are_deterministic_and_seeded(glyphnet):
    model = glyphnet
    image = viztools.make_glyphworld(1, seed=5)[0]
    image_before = image.clone()
    assert torch.equal(fgsm(model, image, epsilon=0.03).adversarial, fgsm(model, image, epsilon=0.03).adversarial)
    runs = [iterative_fgsm(model, image, epsilon=0.03, steps=2, random_start=True, seed=seed).adversarial
            for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    fooled = [fooling_image(model, image, "star", max_steps=5).adversarial for _ in range(2)]
    assert torch.equal(fooled[0], fooled[1])
    noise = [unrecognizable_image(model, target="star", max_steps=2, seed=seed).original for seed in (4, 4, 5)]
    assert torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    assert torch.equal(image, image_before)  # the input is never modified in place


def test_plot_fooling_shows_three_panels_with_predictions(linear):
    import matplotlib.pyplot as plt

    model, weight = linear
    image = (grey() - 0.01 * weight.sign()).clamp(0, 1)
    result = fgsm(model, image, epsilon=0.05)
    assert result.success and result.original_name == "zero" and result.prediction_name == "one"
    figure = plot_fooling(result, scale=5)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[0] == f"original: zero\n({result.original_probability:.1%})"
    assert titles[1] == f"fooled: one\n({result.probability:.1%})"
    assert titles[2].startswith("difference x5\nL-inf 12.8/255")
    shown = figure.axes[2].images[0].get_array()
    expected = magnified_difference(result.original, result.adversarial, scale=5)[0].permute(1, 2, 0).numpy()
    assert abs(shown - expected).max() < 1e-6
    plt.close(figure)
    with pytest.raises(TypeError, match="FoolingResult"):
        plot_fooling(image)


# --------------------------------------------------------------------------------------------------------------
# Trained GlyphNet: fooling works for most pairs, FGSM flips many images, iterating is stronger
# --------------------------------------------------------------------------------------------------------------


def correctly_classified(model: VizModel, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` held-out GlyphWorld images (seed 1) that the model classifies correctly."""
    images, labels = viztools.make_glyphworld(3 * count, seed=1)
    keep = (model.predict(images).argmax(dim=1) == labels).nonzero().flatten()[:count]
    assert len(keep) == count
    return images[keep], labels[keep]


@pytest.mark.slow
def test_glyphnet_fooling_reaches_the_target_with_a_small_change(glyphnet):
    images, labels = correctly_classified(glyphnet, 20)
    # 20 pairs: each image with a different wrong class (label + 1 .. label + 9, cycling).
    targets = [(int(label) + 1 + k % 9) % 10 for k, label in enumerate(labels)]
    results = [fooling_image(glyphnet, image, target, max_steps=100)  # the classic lr: 0.25 px = 1 unit
               for image, target in zip(images, targets, strict=True)]
    # Measured: 20/20 within 14 steps (median 5); L-inf median 0.11, max 0.33; RMS median 0.0098, max 0.027.
    assert sum(r.success for r in results) >= 18
    assert all(r.prediction == t for r, t in zip(results, targets, strict=True) if r.success)
    assert all(r.steps <= 100 and float(r.adversarial.min()) >= 0 and float(r.adversarial.max()) <= 1
               for r in results)
    linf, rms = sorted(r.linf for r in results), sorted(r.rms for r in results)
    assert linf[10] < 0.15 and linf[-1] < 0.45
    assert rms[10] < 0.015 and rms[-1] < 0.04  # at most 10 grey levels RMS per pixel
    # Far less change than turning the image into a real example of the target class (measured <= 0.15x).
    examples, example_labels = viztools.make_glyphworld(200, seed=2)
    for result, image, target in zip(results, images, targets, strict=True):
        nearest = (examples[example_labels == target] - image).flatten(1).norm(dim=1).min()
        assert result.l2 < 0.25 * float(nearest)


@pytest.mark.slow
def test_glyphnet_fgsm_flips_images_and_iterating_is_stronger(glyphnet):
    images, labels = correctly_classified(glyphnet, 20)
    epsilon = 8 / 255
    single = [fgsm(glyphnet, image[None], int(label), epsilon=epsilon)
              for image, label in zip(images, labels, strict=True)]
    iterated = [iterative_fgsm(glyphnet, image[None], int(label), epsilon=epsilon)  # Kurakin's 10 steps of 1/255
                for image, label in zip(images, labels, strict=True)]
    for result in single + iterated:
        assert result.linf <= epsilon + 1e-6
        assert float(result.adversarial.min()) >= 0 and float(result.adversarial.max()) <= 1
    # Measured: FGSM flips 14/20, iterative FGSM 18/20, including every image FGSM flips.
    assert sum(r.success for r in single) >= 8
    assert all(b.success for s, b in zip(single, iterated, strict=True) if s.success)
    assert sum(r.success for r in iterated) >= sum(r.success for r in single)


def test_glyphnet_unrecognizable_images_for_every_class(glyphnet):
    for target in glyphnet.categories:
        result = unrecognizable_image(glyphnet, target=target, confidence=0.99, seed=0)
        # Measured: every class within 12 steps; the change's RMS is at most 0.25x the start noise's own RMS.
        assert result.success and result.prediction_name == target and result.probability >= 0.99
        noise_rms = float((result.original - 0.5).pow(2).mean().sqrt())
        assert result.rms < 0.4 * noise_rms  # still mostly noise


# --------------------------------------------------------------------------------------------------------------
# ImageNet SqueezeNet 1.0 (shared weights)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.imagenet
def test_imagenet_cat_fooled_into_goldfish_and_school_bus(imagenet_squeezenet):
    model = imagenet_squeezenet
    cat = model.preprocess("cat")
    assert model.top_k(cat, 1)[0][1] == "Egyptian cat"
    for target in ("goldfish", "school bus"):
        result = fooling_image(model, cat, target, max_steps=100)  # the classic learning rate
        assert result.success and result.prediction_name == target and result.steps <= 100
        # measured: goldfish in 3 steps (L-inf 8.5/255, RMS 0.0015), school bus in 10 (11.9/255, 0.0036)
        assert result.linf < 0.1 and result.rms < 0.01
    noise = unrecognizable_image(model, target="goldfish", confidence=0.99, max_steps=50, seed=0)
    assert noise.success and noise.prediction_name == "goldfish" and noise.probability >= 0.99


def test_should_stop_sees_every_step_including_the_one_that_fools(linear):
    model, weight = linear
    image = (grey() - 0.02 * weight.sign()).clamp(0, 1)
    seen = []
    result = fooling_image(model, image, "one", lr=0.05, should_stop=lambda progress: seen.append(progress.step))
    assert result.success and seen == list(range(1, result.steps + 1))
    stopped = fooling_image(model, image, "one", lr=0.001, should_stop=lambda progress: progress.step == 2)
    assert stopped.steps == 2 and not stopped.success
