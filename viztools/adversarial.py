"""Adversarial examples: fooling images, FGSM and its iterative variant (lecture ``09_adversarial``).

* :func:`fooling_image`: a correctly classified image is nudged by normalized-gradient steps on a target class
  score until the network predicts the target (Szegedy et al. 2014, "Intriguing properties of neural
  networks"; the CS231n fooling-image exercise). :func:`fooling_image_optimization` yields its progress live.
* :func:`unrecognizable_image`: noise pushed until the network is 99% sure it shows a class (Nguyen, Yosinski &
  Clune 2015, "Deep neural networks are easily fooled").
* :func:`fgsm`: one step of size epsilon along the sign of the loss gradient (Goodfellow, Shlens & Szegedy
  2015, "Explaining and harnessing adversarial examples").
* :func:`iterative_fgsm`: many small sign steps, each projected back to the epsilon ball and to [0, 1]
  (Kurakin, Goodfellow & Bengio 2017, "Adversarial examples in the physical world"; Madry et al. 2018's PGD
  adds the random start).

All sizes are in pixel units: images are in [0, 1], so ``epsilon=2/255`` changes each pixel by at most two of
the 256 grey levels. Every function returns a :class:`FoolingResult`, which :func:`plot_fooling` draws. The
iterative methods run in the shared loop :func:`viztools.optimize.optimize` (SGD on the L2-normalized gradient
for fooling images, :class:`SignGradientDescent` plus projection for iterative FGSM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from viztools._validation import check_float, check_image, check_int, check_model, make_generator
from viztools.models import VizModel
from viztools.optimize import (
    LOGITS,
    ClassScore,
    CustomObjective,
    Objective,
    OptimizationResult,
    Progress,
    Run,
    finished,
    optimize,
    run,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Grey levels per unit of pixel value: a change of 1/255 is one level of an 8-bit image.
LEVELS = 255


@dataclass(frozen=True)
class FoolingResult:
    """An image before and after an attack, the predictions for both, and the perturbation's size.

    Attributes:
        original, adversarial: ``(1, 3, H, W)`` pixel tensors in [0, 1].
        attacked_class: the target class (targeted attacks) or the label pushed away from (untargeted).
        targeted: whether the attack aimed at ``attacked_class`` rather than away from it.
        steps: gradient steps taken (1 for FGSM).
        success: targeted: the adversarial image is predicted as the target; untargeted: it is not predicted
            as the label.
        original_prediction, prediction: top-1 class indices for the original and the adversarial image.
        original_probability, probability: their softmax probabilities.
        categories: the model's class names, for labels in plots.
    """

    original: torch.Tensor
    adversarial: torch.Tensor
    attacked_class: int
    targeted: bool
    steps: int
    success: bool
    original_prediction: int
    original_probability: float
    prediction: int
    probability: float
    categories: tuple[str, ...]

    @property
    def image(self) -> torch.Tensor:
        """The adversarial image (the picture a technique's result shows)."""
        return self.adversarial

    @property
    def perturbation(self) -> torch.Tensor:
        """``adversarial - original`` in pixel units."""
        return self.adversarial - self.original

    @property
    def linf(self) -> float:
        """Largest change of any pixel channel, in pixel units ([0, 1] scale)."""
        return float(self.perturbation.abs().max())

    @property
    def l2(self) -> float:
        """Euclidean norm of the perturbation over all pixels and channels, in pixel units."""
        return float(self.perturbation.norm())

    @property
    def rms(self) -> float:
        """Root-mean-square change per pixel channel, in pixel units: ``l2 / sqrt(3 * H * W)``."""
        return self.l2 / math.sqrt(self.perturbation.numel())

    @property
    def linf_levels(self) -> float:
        """:attr:`linf` in 8-bit grey levels (0-255 scale)."""
        return self.linf * LEVELS

    @property
    def l2_levels(self) -> float:
        """:attr:`l2` in 8-bit grey levels (0-255 scale)."""
        return self.l2 * LEVELS

    @property
    def attacked_name(self) -> str:
        """Class name of :attr:`attacked_class`."""
        return self.categories[self.attacked_class]

    @property
    def original_name(self) -> str:
        """Class name the model predicts for the original."""
        return self.categories[self.original_prediction]

    @property
    def prediction_name(self) -> str:
        """Class name the model predicts for the adversarial image."""
        return self.categories[self.prediction]

    def summary(self) -> str:
        """One line: success, steps, predictions and the perturbation's size."""
        goal = f"target {self.attacked_name!r}" if self.targeted else f"away from {self.attacked_name!r}"
        return (
            f"{'fooled' if self.success else 'not fooled'} ({goal}) after {self.steps} step(s): "
            f"{self.original_name} ({self.original_probability:.1%}) -> {self.prediction_name} "
            f"({self.probability:.1%}); L-inf {self.linf:.4f} ({self.linf_levels:.1f}/255), "
            f"L2 {self.l2:.4f} ({self.l2_levels:.1f} levels), RMS {self.rms:.5f}"
        )


def magnified_difference(original: torch.Tensor, adversarial: torch.Tensor, *, scale: float = 10.0) -> torch.Tensor:
    """``0.5 + scale * (adversarial - original)``, clipped to [0, 1]: grey where nothing changed.

    A perturbation of a few grey levels is invisible at scale 1; scale 10 shows its pattern.
    """
    original = check_image(original, "original", pixels=True)
    adversarial = check_image(adversarial, "adversarial", pixels=True)
    if original.shape != adversarial.shape:
        raise ValueError(
            f"original and adversarial must have the same shape; got {tuple(original.shape)} and "
            f"{tuple(adversarial.shape)}."
        )
    scale = check_float(scale, "scale", low=0.0, low_inclusive=False)
    return (0.5 + scale * (adversarial - original)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# FGSM and iterative FGSM
# --------------------------------------------------------------------------------------------------------------


def fgsm(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None = None,
    *,
    epsilon: float,
    targeted: bool = False,
) -> FoolingResult:
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015): one step of size ``epsilon`` per pixel.

    Untargeted: ``x + epsilon * sign(grad_x CE(model(x), target))``, moving away from the class ``target``
    (default: the model's own prediction, which avoids "label leaking", Kurakin et al. 2017). Targeted: ``x -
    epsilon * sign(grad_x CE(model(x), target))``, moving towards ``target``. ``epsilon`` is in pixel units
    (``2/255`` is two grey levels); the result is clipped to [0, 1], so it stays in the epsilon ball.
    """
    model, image = _check_inputs(model, image)
    epsilon = check_float(epsilon, "epsilon", low=0.0, high=1.0)
    attacked = _resolve_target(model, image, target, targeted)
    pixels = image.clone().requires_grad_(True)
    labels = torch.tensor([attacked], device=model.device)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(pixels), labels), pixels)
    direction = -1.0 if targeted else 1.0
    adversarial = (image + direction * epsilon * gradient.sign()).clamp(0.0, 1.0)
    return _result(model, image, adversarial, attacked, targeted=targeted, steps=1)


class SignGradientDescent(torch.optim.Optimizer):
    """``p <- p - lr * sign(grad)``: the FGSM step as an optimizer for :func:`viztools.optimize.optimize`."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float) -> None:
        super().__init__(params, {"lr": check_float(lr, "lr", low=0.0, low_inclusive=False)})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.sub_(group["lr"] * parameter.grad.sign())
        return loss


def iterative_fgsm(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None = None,
    *,
    epsilon: float,
    step_size: float | None = None,
    steps: int | None = None,
    targeted: bool = False,
    random_start: bool = False,
    seed: int | None = 0,
) -> FoolingResult:
    """Basic iterative method (Kurakin, Goodfellow & Bengio 2017), a.k.a. iterative FGSM or PGD (L-inf).

    Repeats FGSM steps of ``step_size`` (pixel units), each followed by projection to the L-inf ball of radius
    ``epsilon`` around the original and to [0, 1]; the last iterate is returned. Defaults follow Kurakin et al.:
    ``step_size = 1/255`` (capped at ``epsilon``) and ``steps = min(255 * epsilon + 4, 1.25 * 255 * epsilon)``,
    rounded. With ``random_start`` the search starts from a uniform random point of the ball (Madry et al.
    2018's PGD), drawn with ``seed``. Runs in the shared loop :func:`viztools.optimize.optimize`.
    """
    model, image = _check_inputs(model, image)
    epsilon = check_float(epsilon, "epsilon", low=0.0, high=1.0, low_inclusive=False)
    if step_size is None:
        step_size = min(1 / LEVELS, epsilon)
    step_size = check_float(step_size, "step_size", low=0.0, high=1.0, low_inclusive=False)
    if steps is None:
        steps = max(1, round(min(LEVELS * epsilon + 4, 1.25 * LEVELS * epsilon)))
    steps = check_int(steps, "steps", low=1)
    attacked = _resolve_target(model, image, target, targeted)
    lower, upper = (image - epsilon).clamp(min=0.0), (image + epsilon).clamp(max=1.0)

    start = image
    if random_start:
        noise = torch.rand(image.shape, generator=make_generator(seed), device="cpu").to(image.device)
        start = (image + epsilon * (2 * noise - 1)).clamp(lower, upper)
    labels = torch.tensor([attacked], device=model.device)
    sign = -1.0 if targeted else 1.0  # untargeted: raise the loss of the label; targeted: lower the target's
    objective = CustomObjective(
        f"{'-' if targeted else ''}cross-entropy of {model.categories[attacked]!r}",
        [LOGITS],
        lambda activations: sign * F.cross_entropy(activations[LOGITS], labels),
    )
    outcome = run(
        model, start, objective, steps=steps, lr=step_size,
        optimizer=lambda params: SignGradientDescent(params, step_size),
        after_step=[lambda pixels, _: pixels.clamp(lower, upper)], seed=0,
    )
    return _result(model, image, outcome.last_image, attacked, targeted=targeted, steps=outcome.steps)


# --------------------------------------------------------------------------------------------------------------
# Fooling images: normalized-gradient ascent on a class score
# --------------------------------------------------------------------------------------------------------------


def classic_fooling_lr(model: VizModel) -> float:
    """The CS231n fooling step (L2 length 1 in normalized input units) in pixel units: the mean of ``model.std``.

    The model sees ``(pixels - mean) / std``, so a step of length 1 in normalized units is a step of length
    ``std`` in pixels (exact when the channels share one std, as GlyphNet's 0.25; within 2% for ImageNet's
    0.229, 0.224, 0.225, where this gives 0.226). For a 224x224 image that is a per-pixel RMS change of
    ``0.226 / sqrt(3 * 224 * 224)``, about 0.00058 (0.15 grey levels) per step.
    """
    return sum(model.std) / len(model.std)


def _fooling_run(
    model: VizModel,
    start: torch.Tensor,
    target: int,
    objective: Objective,
    *,
    lr: float,
    max_steps: int,
    confidence: float | None,
    should_stop: Callable[[Progress], bool | None] | None,
) -> Run[FoolingResult]:
    """Normalized-gradient ascent ``x <- clip(x + lr * g / ||g||_2, 0, 1)`` on ``objective`` in the shared loop,
    until the model predicts ``target`` (with at least ``confidence``, when set) or ``should_stop`` says so."""

    def reached(pixels: torch.Tensor) -> bool:
        probabilities = model.predict(pixels)[0]
        if confidence is None:
            return int(probabilities.argmax()) == target
        return float(probabilities[target]) >= confidence

    def stop(progress: Progress) -> bool:
        asked = should_stop is not None and bool(should_stop(progress))  # the caller sees every step
        return reached(progress.image) or asked

    optimization = optimize(
        model, start, objective, steps=0 if reached(start) else max_steps, optimizer="sgd", lr=lr,
        normalize_gradient="l2", clamp=True, should_stop=stop, seed=0,
    )

    def finish(outcomes: list[OptimizationResult]) -> FoolingResult:
        last = outcomes[-1].last_image
        return _result(model, start, last, target, targeted=True, steps=outcomes[-1].steps, success=reached(last))

    return Run(optimization, finish)


def fooling_image_optimization(
    model: VizModel,
    image: torch.Tensor,
    target: int | str | None = None,
    *,
    lr: float | None = None,
    max_steps: int = 100,
    should_stop: Callable[[Progress], bool | None] | None = None,
) -> Run[FoolingResult]:
    """Make ``image`` be classified as ``target`` by a small change (Szegedy et al. 2014; CS231n's exercise), live.

    Gradient ascent on the target's class score (logit) with steps of fixed L2 length ``lr`` in pixel units
    (``x <- clip(x + lr * g / ||g||_2, 0, 1)``) until the model predicts ``target``, at most ``max_steps``
    steps (or until ``should_stop(progress)`` returns True). The default ``lr`` is the classic setting, 1 in
    normalized input units (:func:`classic_fooling_lr`). The :class:`FoolingResult` reports the steps taken,
    success, and the perturbation's L2 / L-inf size; see lecture ``09_adversarial`` and :func:`plot_fooling`.
    """
    model, image = _check_inputs(model, image)
    if target is None:
        raise ValueError("A fooling image needs a target class: pass target=<class index or name>.")
    target = model.class_index(target)
    lr = classic_fooling_lr(model) if lr is None else check_float(lr, "lr", low=0.0, low_inclusive=False)
    max_steps = check_int(max_steps, "max_steps", low=0)
    return _fooling_run(model, image, target, ClassScore(target), lr=lr, max_steps=max_steps, confidence=None,
                        should_stop=should_stop)


fooling_image = finished(fooling_image_optimization, "fooling_image")


def unrecognizable_image_optimization(
    model: VizModel,
    image: torch.Tensor | None = None,
    target: int | str | None = None,
    *,
    confidence: float = 0.99,
    lr: float | None = None,
    max_steps: int = 200,
    should_stop: Callable[[Progress], bool | None] | None = None,
    seed: int | None = 0,
) -> Run[FoolingResult]:
    """An image unrecognizable to people that the model calls ``target`` with >= ``confidence`` probability, live.

    Nguyen, Yosinski & Clune 2015 ("Deep neural networks are easily fooled") found such images off the data
    manifold; here by normalized-gradient ascent on the target's log-probability (their gradient-ascent
    variant), from ``image`` (``None``: uniform noise at the model's input size, drawn with ``seed``; pass
    ``torch.full((1, 3, S, S), 0.5)`` to start from grey). The default ``lr`` is 10x :func:`classic_fooling_lr`.
    ``result.original`` is the starting image.
    """
    if image is None:
        model = check_model(model)
        image = torch.rand((1, 3, model.input_size, model.input_size), generator=make_generator(seed),
                           device="cpu").to(model.device)
    model, image = _check_inputs(model, image)
    if target is None:
        raise ValueError("An unrecognizable image needs a target class: pass target=<class index or name>.")
    target = model.class_index(target)
    confidence = check_float(confidence, "confidence", low=0.0, high=1.0, low_inclusive=False)
    lr = 10 * classic_fooling_lr(model) if lr is None else check_float(lr, "lr", low=0.0, low_inclusive=False)
    max_steps = check_int(max_steps, "max_steps", low=0)
    objective = CustomObjective(
        f"log p({model.categories[target]})", [LOGITS],
        lambda activations: F.log_softmax(activations[LOGITS], dim=1)[:, target].sum(),
    )
    return _fooling_run(model, image, target, objective, lr=lr, max_steps=max_steps, confidence=confidence,
                        should_stop=should_stop)


unrecognizable_image = finished(unrecognizable_image_optimization, "unrecognizable_image")


# --------------------------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------------------------


def plot_fooling(
    result: FoolingResult,
    image: None = None,
    *,
    ax: Sequence[Axes] | None = None,
    scale: float = 10.0,
) -> Figure:
    """Original | adversarial | magnified difference, titled with predicted classes and probabilities.

    The difference panel is :func:`magnified_difference` (grey = unchanged). ``ax``: three axes to draw the
    panels into (the figure's title is then left to the caller); None makes a new figure.
    """
    from viztools.data import to_numpy_image
    from viztools.plotting import new_figure

    if not isinstance(result, FoolingResult):
        raise TypeError(f"plot_fooling takes a FoolingResult (from fooling_image, fgsm, ...); got {type(result)}.")
    own_figure = ax is None
    if own_figure:
        figure = new_figure((10, 3.8))
        axes = figure.subplots(1, 3)
    elif len(ax) != 3:
        raise ValueError(f"plot_fooling draws three panels; pass three axes, got {len(ax)}.")
    else:
        axes, figure = ax, ax[0].figure
    panels = [
        (result.original, f"original: {result.original_name}\n({result.original_probability:.1%})"),
        (result.adversarial, f"{'fooled' if result.success else 'attacked'}: {result.prediction_name}\n"
                             f"({result.probability:.1%})"),
        (magnified_difference(result.original, result.adversarial, scale=scale),
         f"difference x{scale:g}\nL-inf {result.linf_levels:.1f}/255, RMS {result.rms * LEVELS:.2f}/255"),
    ]
    for axis, (pixels, title) in zip(axes, panels, strict=True):
        axis.imshow(to_numpy_image(pixels), interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.set_axis_off()
    if own_figure:
        goal = f"target: {result.attacked_name}" if result.targeted else f"away from: {result.attacked_name}"
        figure.suptitle(f"{goal}, {result.steps} step(s), {'success' if result.success else 'failed'}", fontsize=11)
    return figure


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _check_inputs(model: object, image: object) -> tuple[VizModel, torch.Tensor]:
    model = check_model(model)
    return model, check_image(image, "image", pixels=True, model=model).detach().float()


def _resolve_target(model: VizModel, image: torch.Tensor, target: int | str | None, targeted: bool) -> int:
    if not isinstance(targeted, bool):
        raise TypeError(f"targeted must be True or False; got {targeted!r}.")
    if target is None and targeted:
        raise ValueError("A targeted attack needs a target class: pass target=<class index or name>.")
    return model.resolve_target(target, image)


@torch.no_grad()
def _result(
    model: VizModel,
    original: torch.Tensor,
    adversarial: torch.Tensor,
    attacked: int,
    *,
    targeted: bool,
    steps: int,
    success: bool | None = None,
) -> FoolingResult:
    """Predictions for both images; ``success`` defaults to "predicted as the target" / "not as the label"."""
    probabilities = model.predict(torch.cat([original, adversarial]))
    confidence, predicted = probabilities.max(dim=1)
    prediction = int(predicted[1])
    return FoolingResult(
        original=original,
        adversarial=adversarial.detach(),
        attacked_class=attacked,
        targeted=targeted,
        steps=steps,
        success=(prediction == attacked) == targeted if success is None else success,
        original_prediction=int(predicted[0]),
        original_probability=float(confidence[0]),
        prediction=prediction,
        probability=float(confidence[1]),
        categories=tuple(model.categories),
    )
