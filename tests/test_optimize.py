"""The shared optimization loop: objectives, regularizers, transforms, stopping, determinism, hook hygiene."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from viztools.data import gaussian_blur
from viztools.hooks import forward_activations, has_hooks
from viztools.models import VizModel
from viztools.optimize import (
    COLOR_CORRELATION,
    COLOR_CORRELATION_SVD_SQRT,
    LOGITS,
    PARAMETRIZATIONS,
    ChannelMean,
    ClassScore,
    Crop,
    CustomObjective,
    FeatureMatch,
    ImageParametrization,
    Jitter,
    L2Penalty,
    LayerDream,
    LoopSettings,
    Objective,
    OptimizationResult,
    Pad,
    RandomAffine,
    RandomTransform,
    Run,
    TotalVariation,
    blur_every,
    compose,
    decorrelated_to_rgb,
    finished,
    fourier_scale,
    image_parametrization,
    optimize,
    rgb_to_decorrelated,
    robust_transforms,
    run,
)


def tiny_model() -> VizModel:
    """conv(3->4, 3x3) -> ReLU -> global average pool -> linear(4->3); deterministic weights."""
    generator = torch.Generator().manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return VizModel(
        name="tiny",
        network=network,
        categories=["a", "b", "c"],
        input_size=8,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        layers={"conv": "1", "pool": "2", "logits": "4"},
    )


def fixed_forward_model() -> VizModel:
    """conv -> ReLU -> flatten -> linear(4*8*8 -> 2): the classifier only accepts 8x8 inputs."""
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    return VizModel(name="fixed", network=network, categories=["x", "y"], input_size=8,
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layers={"conv": "1"})


def start_image(size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- objectives ------------------------------------------------------------------------------------------------


def test_objectives_known_values_on_given_activations():
    activation = torch.tensor([[[[1.0, -2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    logits = torch.tensor([[0.5, 2.0, -1.0]])
    activations = {"layer": activation, LOGITS: logits}
    assert ClassScore(1)(activations).item() == 2.0
    assert ChannelMean("layer", 1)(activations).item() == 3.5
    assert LayerDream("layer")(activations).item() == 0.5 * (1 + 4 + 9 + 16)
    target = torch.zeros_like(activation)
    target[0, 0, 0, 0] = 2.0  # ||F - T||^2 = 1 + 4 + 9 + 16 = 30, ||T||^2 = 4
    assert FeatureMatch("layer", target)(activations).item() == pytest.approx(-30 / 4)
    assert FeatureMatch("layer", activation)(activations).item() == 0.0


def test_objectives_add_scale_and_report_named_terms():
    activations = {"layer": torch.ones(1, 2, 2, 2), LOGITS: torch.tensor([[1.0, 3.0]])}
    combined = 0.8 * ClassScore(1) + 0.2 * LayerDream("layer") - ChannelMean("layer", 0)
    terms = combined.terms(activations)
    assert terms == {
        "class 1 score": pytest.approx(0.8 * 3.0),
        "dream layer": pytest.approx(0.2 * 4.0),
        "layer channel 0": pytest.approx(-1.0),
    }
    assert combined(activations).item() == pytest.approx(2.4 + 0.8 - 1.0)
    assert set(combined.layers) == {LOGITS, "layer"}
    assert sum([ClassScore(0), ClassScore(0)]).terms(activations).keys() == {"class 0 score", "class 0 score #2"}
    assert (-ClassScore(1))(activations).item() == -3.0


def test_subclassing_objective_only_needs_value():
    class MaxLogit(Objective):
        def __init__(self) -> None:
            super().__init__("max logit", [LOGITS])

        def value(self, activations):
            return activations[LOGITS].max()

    assert (2 * MaxLogit())({LOGITS: torch.tensor([[1.0, 5.0]])}).item() == 10.0


def test_layer_dream_gradient_equals_activation():
    activation = torch.randn(1, 3, 4, 4, requires_grad=True)
    LayerDream("x")({"x": activation}).backward()
    torch.testing.assert_close(activation.grad, activation.detach())


# -- regularizers and transforms -------------------------------------------------------------------------------


def test_regularizers_known_values():
    pixels = torch.zeros(1, 3, 2, 2)
    pixels[0, :, 0, 0] = 1.0
    # one bright corner pixel: L2 = 3; with center 0.5 and scale 0.5 every entry is +-1 -> 12
    assert L2Penalty(1.0)(pixels).item() == 3.0
    assert L2Penalty(2.0, center=0.5, scale=0.5)(pixels).item() == 2 * 12.0
    # only the top-left 1x1 window of differences: dx = -1, dy = -1 per channel -> (1 + 1) * 3
    assert TotalVariation(1.0)(pixels).item() == pytest.approx(6.0)
    assert TotalVariation(1.0, beta=1.0)(pixels).item() == pytest.approx(3 * math.sqrt(2), rel=1e-4)
    assert TotalVariation(1.0)(torch.full((1, 3, 5, 5), 0.3)).item() == 0.0


def test_jitter_rolls_within_range_and_is_seeded():
    image = torch.arange(3 * 6 * 6, dtype=torch.float32).view(1, 3, 6, 6)
    rolled = [Jitter(2, seed=7)(image) for _ in range(2)]
    torch.testing.assert_close(rolled[0], rolled[1])
    shifts_seen = set()
    jitter = Jitter(2, seed=1)
    for _ in range(50):
        out = jitter(image)
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(out, torch.roll(image, (dy, dx), dims=(-2, -1)))]
        assert len(match) == 1
        shifts_seen.add(match[0])
    assert len(shifts_seen) > 10
    assert torch.equal(Jitter(0)(image), image)


def test_gaussian_blur_preserves_constants_and_mean_and_smooths():
    constant = torch.full((1, 3, 9, 9), 0.4)
    torch.testing.assert_close(gaussian_blur(constant, 1.0), constant)
    noise = start_image(16)
    blurred = gaussian_blur(noise, 1.0)
    assert blurred.shape == noise.shape
    assert TotalVariation(1.0)(blurred) < 0.3 * TotalVariation(1.0)(noise)
    blur = blur_every(3, 1.0)
    assert torch.equal(blur(noise, 2), noise)
    torch.testing.assert_close(blur(noise, 3), blurred)


# -- the loop --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.05), ("sgd", 20.0), ("lbfgs", 0.5)])
def test_each_optimizer_raises_the_objective(optimizer, lr):
    model = tiny_model()
    image = start_image()
    result = run(model, image, ClassScore(0), steps=15, optimizer=optimizer, lr=lr, seed=0)
    before, after = model(image)[0, 0].item(), model(result.image)[0, 0].item()
    assert after > before + 1.5  # 1.46 -> about 3.9, where pixels saturate at 0 or 1
    assert result.steps == 15 and result.stop_reason == "steps"
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0


def test_lbfgs_closure_calls_are_counted():
    model = tiny_model()
    result = run(model, start_image(), ClassScore(0), steps=4, optimizer="lbfgs", lr=0.5,
                 optimizer_options={"max_iter": 5}, seed=0)
    # max_iter=5: one evaluation at the start of each step plus one per further iteration (no line search)
    assert result.closure_calls == 4 * 5
    history = run(model, start_image(), ClassScore(0), steps=4, optimizer="lbfgs", lr=0.5, seed=0)
    assert history.closure_calls == 4


def test_random_transforms_draw_once_per_step_even_with_several_closure_calls():
    draws: list[int] = []

    class RecordingShift(RandomTransform):
        def apply(self, pixels, generator):
            shift = int(torch.randint(0, 1000, (1,), generator=generator))
            draws.append(shift)
            return torch.roll(pixels, shift % 3, dims=-1)

    result = run(tiny_model(), start_image(), ClassScore(0), steps=3, optimizer="lbfgs", lr=0.5,
                 optimizer_options={"max_iter": 4}, transforms=[RecordingShift()], seed=0)
    evaluations = draws[: result.closure_calls]  # then one more for the final image
    assert result.closure_calls == 12 and len(draws) == 13
    per_step = [evaluations[i : i + 4] for i in range(0, 12, 4)]
    assert all(len(set(step)) == 1 for step in per_step)
    assert len({step[0] for step in per_step}) == 3


def test_hooks_exist_only_inside_a_step():
    model = tiny_model()
    optimization = optimize(model, start_image(), LayerDream("conv") + ClassScore(0), steps=5, seed=0)
    next(optimization)
    assert not has_hooks(model.network)  # between steps, e.g. while a widget draws or after the user breaks
    del optimization
    assert not has_hooks(model.network)


def test_progress_records_sum_and_images_are_detached_clones():
    model = tiny_model()
    records = list(optimize(model, start_image(), ClassScore(1) + LayerDream("conv"), steps=6, every=2,
                            regularizers=[L2Penalty(0.01), TotalVariation(0.1)], seed=0))
    assert [r.step for r in records] == [2, 4, 6]
    for record in records:
        assert set(record.losses) == {"class 1 score", "dream conv", "L2", "total variation"}
        assert sum(record.losses.values()) == pytest.approx(record.loss, rel=1e-5)
        assert not record.image.requires_grad
    assert not torch.equal(records[0].image, records[-1].image)


def test_same_seed_same_images_different_seed_differs():
    model = tiny_model()

    def once(seed: int) -> torch.Tensor:
        return run(model, start_image(), LayerDream("conv"), steps=5, lr=0.05, transforms=[Jitter(2)],
                   after_step=[blur_every(2)], seed=seed).last_image

    assert torch.equal(once(3), once(3))
    assert not torch.equal(once(3), once(4))


def test_stop_should_stop_and_time_budget():
    model = tiny_model()
    optimization = optimize(model, start_image(), ClassScore(0), steps=50, seed=0)
    for progress in optimization:
        if progress.step == 3:
            optimization.stop()
    result = optimization.result()
    assert result.steps == 3 and result.stop_reason == "stopped"

    seen = []
    optimization = optimize(model, start_image(), ClassScore(0), steps=50, every=3, seed=0,
                            should_stop=lambda p: seen.append(p.step) or p.step >= 4)
    assert [p.step for p in optimization] == [3, 4]  # every third step, and the last one
    assert seen == [1, 2, 3, 4]
    result = optimization.result()
    assert result.steps == 4 and result.stop_reason == "stopped"

    result = run(model, start_image(), ClassScore(0), steps=10**6, time_budget=0.05, seed=0)
    assert result.stop_reason == "time" and 0 < result.steps < 10**6


def test_keyboard_interrupt_returns_best_image_and_removes_hooks():
    model = tiny_model()

    def interrupt(progress) -> bool:
        if progress.step == 3:
            raise KeyboardInterrupt
        return False

    result = run(model, start_image(), ClassScore(0), steps=20, should_stop=interrupt, seed=0)
    assert result.stop_reason == "interrupted" and result.steps == 3
    assert not has_hooks(model.network)
    # the best image is one the loop evaluated: the best loss belongs to it
    assert -model(result.image)[0, 0].item() == pytest.approx(result.loss, rel=1e-5)


def test_best_image_is_lowest_loss_seen():
    model = tiny_model()
    result = run(model, start_image(), ClassScore(0), steps=8, lr=0.05, seed=0)
    assert result.loss == pytest.approx(min(h["total"] for h in [*result.history, {"total": result.loss}]))
    assert -model(result.image)[0, 0].item() == pytest.approx(result.loss, rel=1e-5)


def test_forward_stops_after_needed_layers_so_any_size_works():
    model = fixed_forward_model()
    with pytest.raises(RuntimeError):
        model(start_image(12))  # the classifier needs 8x8
    activations = forward_activations(model, start_image(12), ["conv"])
    assert activations["conv"].shape == (1, 4, 12, 12) and LOGITS not in activations
    result = run(model, start_image(12), LayerDream("conv"), steps=2, seed=0)
    assert result.image.shape == (1, 3, 12, 12)
    assert not has_hooks(model.network)


def test_model_unchanged_and_no_hooks_after_run_and_after_error():
    model = tiny_model()
    image = start_image().requires_grad_(True)
    model(image)[0, 1].backward()
    reference = image.grad.clone()
    run(model, start_image(), ClassScore(1) + LayerDream("conv"), steps=3, transforms=[compose([Jitter(1)])], seed=0)

    def broken(activations):
        raise RuntimeError("objective failed")

    failing = optimize(model, start_image(), CustomObjective("broken", ["conv"], broken), steps=3)
    with pytest.raises(RuntimeError, match="objective failed"):
        failing.result()
    assert failing.stop_reason == "error"
    assert not has_hooks(model.network)
    assert all(not p.requires_grad for p in model.network.parameters())
    assert not model.network.training
    image.grad = None
    model(image)[0, 1].backward()
    torch.testing.assert_close(image.grad, reference)


def test_bad_arguments_raise_helpful_errors():
    model = tiny_model()
    image = start_image()
    with pytest.raises(ValueError, match=r"Unknown layer 'conw'.*Did you mean 'conv'"):
        run(model, image, LayerDream("conw"), steps=1)
    with pytest.raises(ValueError, match="steps must be"):
        run(model, image, ClassScore(0), steps=-1)
    with pytest.raises(ValueError, match="lr must be"):
        run(model, image, ClassScore(0), lr=0)
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adan'.*Did you mean 'adam'"):
        run(model, image, ClassScore(0), optimizer="adan")
    with pytest.raises(ValueError, match="weight must be"):
        L2Penalty(-1.0)
    with pytest.raises(ValueError, match="shape \\(1, 3, H, W\\)"):
        run(model, torch.rand(1, 8, 8), ClassScore(0))
    with pytest.raises(TypeError, match="objective must be"):
        run(model, image, lambda a: a, steps=1)
    with pytest.raises(ValueError, match="below the number of classes"):
        run(model, image, ClassScore(7), steps=1)
    with pytest.raises(ValueError, match="L-BFGS"):
        run(model, image, ClassScore(0), optimizer="lbfgs", normalize_gradient="l2")
    assert not has_hooks(model.network)


def test_run_chains_stages_numbers_them_and_finishes_with_all_outcomes():
    model = tiny_model()
    stages = []

    def next_stage(outcome: OptimizationResult) -> object:
        stages.append(outcome)
        return optimize(model, outcome.last_image, ClassScore(0), steps=3, seed=0) if len(stages) == 1 else None

    live = Run(optimize(model, start_image(), ClassScore(0), steps=2, seed=0), list, next_stage=next_stage)
    records = list(live)
    assert [(p.stage, p.step) for p in records] == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]
    outcomes = live.result()
    assert [o.steps for o in outcomes] == [2, 3] and len(stages) == 2
    # the second stage started where the first ended
    torch.testing.assert_close(records[2].image, run(model, outcomes[0].last_image, ClassScore(0), steps=1,
                                                     seed=0).last_image)


def test_run_stop_and_ctrl_c_end_the_run_without_later_stages():
    model = tiny_model()
    made = []

    def next_stage(outcome: OptimizationResult) -> object:
        made.append(outcome)
        return optimize(model, outcome.last_image, ClassScore(0), steps=3, seed=0)

    live = Run(optimize(model, start_image(), ClassScore(0), steps=5, seed=0), list, next_stage=next_stage)
    next(live)
    live.stop()
    outcomes = live.result()
    assert [(o.steps, o.stop_reason) for o in outcomes] == [(1, "stopped")] and made == []

    def interrupt(progress) -> bool:
        if progress.step == 2:
            raise KeyboardInterrupt
        return False

    live = Run(optimize(model, start_image(), ClassScore(0), steps=5, seed=0, should_stop=interrupt), list,
               next_stage=next_stage)
    outcomes = live.result()
    assert [(o.steps, o.stop_reason) for o in outcomes] == [(2, "interrupted")] and made == []
    assert not has_hooks(model.network)


def test_finished_form_has_the_live_forms_arguments_and_returns_the_result():
    import inspect

    def live_technique(model: VizModel, image: torch.Tensor, target: int | None = None, *, steps: int = 2) -> Run:
        """Doc of the live form."""
        return Run(optimize(model, image, ClassScore(target or 0), steps=steps, seed=0), lambda outcomes: outcomes[-1])

    technique = finished(live_technique, "technique")
    assert technique.__name__ == "technique" and "Doc of the live form." in technique.__doc__
    assert list(inspect.signature(technique).parameters) == ["model", "image", "target", "steps"]
    result = technique(tiny_model(), start_image(), steps=3)
    assert isinstance(result, OptimizationResult) and result.steps == 3


def test_loop_defaults_live_in_one_place_and_unknown_options_are_named():
    optimization = optimize(tiny_model(), start_image(), ClassScore(0))
    defaults = LoopSettings()
    assert (optimization.steps, optimization.lr, optimization.every) == (defaults.steps, defaults.lr, defaults.every)
    with pytest.raises(TypeError, match=r"Unknown optimize\(\) option\(s\): stepz\. Choose from: steps, "):
        optimize(tiny_model(), start_image(), ClassScore(0), stepz=3)


# -- parametrizations and robustness transforms (Olah et al. 2017) ---------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (15, 22)])
@pytest.mark.parametrize("fourier, decorrelate", [(True, True), (True, False), (False, True)])
def test_sigmoid_parametrizations_give_real_valid_images_and_encode_exactly(size, fourier, decorrelate):
    start = 0.05 + 0.9 * torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    built = ImageParametrization(fourier=fourier, decorrelate=decorrelate).build(start)
    image = built.image().detach()
    assert image.shape == start.shape and image.dtype == torch.float32 and not image.is_complex()
    assert built.bounded and float(image.min()) > 0.0 and float(image.max()) < 1.0
    torch.testing.assert_close(image, start, atol=1e-4, rtol=0)  # encode then decode: the same image
    with torch.no_grad():  # any parameter value is a valid image (the sigmoid)
        built.parameters[0].normal_(0.0, 100.0, generator=torch.Generator().manual_seed(2))
    wild = built.image().detach()
    assert torch.isfinite(wild).all() and float(wild.min()) >= 0.0 and float(wild.max()) <= 1.0


def test_pixel_parametrization_is_the_identity_and_named_ones_resolve():
    start = torch.rand(1, 3, 8, 8)
    built = PARAMETRIZATIONS["pixels"].build(start)
    assert not built.bounded and torch.equal(built.image(), start) and built.image() is built.parameters[0]
    assert image_parametrization("fourier") == ImageParametrization(fourier=True, decorrelate=True)
    assert image_parametrization(ImageParametrization(decorrelate=True)).decorrelate


def test_colour_matrix_is_lucids_square_root_with_orthogonal_columns_and_inverts():
    # Lucid's color_correlation_svd_sqrt (U sqrt(S)), normalized so that its largest column has unit norm
    torch.testing.assert_close(COLOR_CORRELATION_SVD_SQRT[0], torch.tensor([0.26, 0.09, 0.02]))
    assert float(COLOR_CORRELATION.norm(dim=0).max()) == pytest.approx(1.0)
    gram = COLOR_CORRELATION.T @ COLOR_CORRELATION  # columns of U sqrt(S) are orthogonal (up to Lucid's rounding)
    cosines = gram / torch.outer(torch.diag(gram), torch.diag(gram)).sqrt()
    assert float((cosines - torch.eye(3)).abs().max()) < 0.15
    assert torch.all(torch.diag(gram)[:-1] > torch.diag(gram)[1:])  # luminance first, then the colour axes
    assert torch.all(COLOR_CORRELATION[:, 0] > 0.5)  # the first component is brightness: all of R, G, B
    components = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(rgb_to_decorrelated(decorrelated_to_rgb(components)), components)
    rgb = decorrelated_to_rgb(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(rgb, COLOR_CORRELATION[:, 0])


def test_fourier_scale_is_one_over_frequency_and_a_coefficient_is_a_cosine():
    scale = fourier_scale(16, 16)
    assert scale.shape == (16, 9)
    assert float(scale[0, 0]) == pytest.approx(16.0)  # the constant term gets the lowest frequency's value
    assert float(scale[0, 4]) == pytest.approx(16 / 4)  # 4 cycles across 16 px: frequency 1/4
    assert float(scale[3, 4]) == pytest.approx(1 / math.hypot(3 / 16, 4 / 16))
    assert float(fourier_scale(16, 16, decay_power=2.0)[0, 4]) == pytest.approx((16 / 4) ** 2)
    built = ImageParametrization(fourier=True).build(torch.full((1, 3, 16, 16), 0.5))
    with torch.no_grad():
        built.parameters[0].zero_()
        built.parameters[0][0, :, 0, 3, 0] = 1.0  # the real part of 3 cycles along x, every channel
    logit = torch.logit(built.image())[0, 0]
    assert torch.allclose(logit, logit[:1].expand(16, 16), atol=1e-6)  # constant along y
    x = torch.arange(16)
    expected = torch.cos(2 * math.pi * 3 * x / 16)
    torch.testing.assert_close(logit[0] / logit[0].abs().max(), expected, atol=1e-5, rtol=0)


def test_fourier_ascent_raises_the_objective_gradients_reach_the_coefficients_and_is_seeded():
    model = tiny_model()
    image = start_image(16)
    transforms = robust_transforms(16)
    optimization = optimize(model, image, ClassScore(0), steps=1, parametrization="fourier", transforms=transforms,
                            seed=0)
    next(optimization)
    coefficients = optimization.parametrized.parameters[0]
    assert coefficients.grad is not None and float(coefficients.grad.abs().sum()) > 0
    settings = {"steps": 25, "lr": 0.2, "parametrization": "fourier", "transforms": transforms}
    result = run(model, image, ClassScore(0), seed=3, **settings)
    assert model(result.image)[0, 0].item() > model(image)[0, 0].item() + 0.75  # 1.68 -> 2.64
    same = run(model, image, ClassScore(0), seed=3, **settings)
    other = run(model, image, ClassScore(0), seed=4, **settings)
    assert torch.equal(result.image, same.image) and not torch.equal(result.image, other.image)
    assert float(result.image.min()) >= 0.0 and float(result.image.max()) <= 1.0


def test_after_step_operations_act_on_the_image_of_a_sigmoid_parametrization():
    model = tiny_model()
    flatten = lambda pixels, step: torch.full_like(pixels, 0.25)  # noqa: E731
    result = run(model, start_image(16), ClassScore(0), steps=2, parametrization="fourier", after_step=[flatten])
    torch.testing.assert_close(result.last_image, torch.full((1, 3, 16, 16), 0.25), atol=1e-4, rtol=0)


def test_pad_and_random_affine_known_answers():
    pixels = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    padded = Pad(2, value=0.5)(pixels)
    assert padded.shape == (1, 3, 10, 10) and torch.equal(padded[..., 2:-2, 2:-2], pixels)
    assert torch.all(padded[..., :2, :] == 0.5)
    assert torch.equal(RandomAffine(scales=[1.0], angles=[0])(pixels), pixels)
    quarter = RandomAffine(scales=[1.0], angles=[90], seed=0)(pixels)  # pixel centres land on pixel centres
    torch.testing.assert_close(quarter, torch.rot90(pixels, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    doubled = RandomAffine(scales=[2.0], angles=[0], seed=0)(torch.arange(36.0).view(1, 1, 6, 6))
    assert float(doubled[0, 0, 2:4, 2:4].std()) < float(torch.arange(36.0).view(6, 6)[2:4, 2:4].std())  # zoomed in
    draws = {tuple(RandomAffine(scales=[0.9, 1.1], angles=[-5, 5], seed=s)(pixels).flatten()[:3].tolist())
             for s in range(8)}
    assert len(draws) > 1
    assert [type(t).__name__ for t in robust_transforms(128)] == ["Pad", "Jitter", "RandomAffine", "Jitter", "Crop"]
    assert [robust_transforms(128)[0].width, robust_transforms(64)[0].width] == [12, 6]
    assert torch.equal(Crop(2)(padded), pixels)
    assert compose(robust_transforms(20))(pixels.new_ones(1, 3, 20, 20), torch.Generator()).shape == (1, 3, 20, 20)


def test_bad_parametrization_arguments_say_what_to_do():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"Unknown parametrization 'fourer'.*fourier"):
        optimize(model, start_image(), ClassScore(0), parametrization="fourer")
    with pytest.raises(TypeError, match="parametrization must be one of"):
        optimize(model, start_image(), ClassScore(0), parametrization=3)
    with pytest.raises(ValueError, match="at least one scale"):
        RandomAffine(scales=[])
