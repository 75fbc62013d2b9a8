"""Adversarial examples: fooling images, FGSM and its iterative variant (lecture ``09_adversarial``).

* :func:`fooling_image`: a correctly classified image is nudged by normalized-gradient steps on a target class
  score until the network predicts the target (Szegedy et al. 2014, "Intriguing properties of neural
  networks"; the CS231n fooling-image exercise).
* :func:`fgsm`: one step of size epsilon along the sign of the loss gradient (Goodfellow, Shlens & Szegedy
  2015, "Explaining and harnessing adversarial examples").
* :func:`iterative_fgsm`: many small sign steps, each projected back to the epsilon ball and to [0, 1]
  (Kurakin, Goodfellow & Bengio 2017, "Adversarial examples in the physical world"; Madry et al. 2018's PGD
  adds the random start).

All sizes are in pixel units: images are in [0, 1], so ``epsilon=2/255`` changes each pixel by at most two of
the 256 grey levels. Every function returns a :class:`FoolingResult`, which :func:`plot_fooling` draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from viztools._validation import check_float, check_image, check_int
from viztools.models import VizModel

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
        return self.categories[self.attacked_class]

    @property
    def original_name(self) -> str:
        return self.categories[self.original_prediction]

    @property
    def prediction_name(self) -> str:
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
    original = _check_pixels(original, "original")
    adversarial = _check_pixels(adversarial, "adversarial")
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
    label: int | str | None = None,
    *,
    epsilon: float,
    targeted: bool = False,
) -> FoolingResult:
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015): one step of size ``epsilon`` per pixel.

    Untargeted: ``x + epsilon * sign(grad_x CE(model(x), label))``, moving away from ``label`` (default: the
    model's own prediction, which avoids "label leaking", Kurakin et al. 2017). Targeted: ``x - epsilon *
    sign(grad_x CE(model(x), label))``, moving towards ``label``. ``epsilon`` is in pixel units (``2/255`` is
    two grey levels); the result is clipped to [0, 1], so it stays in the epsilon ball.
    """
    return iterative_fgsm(model, image, label, epsilon=epsilon, step_size=epsilon, steps=1, targeted=targeted)


def iterative_fgsm(
    model: VizModel,
    image: torch.Tensor,
    label: int | str | None = None,
    *,
    epsilon: float,
    step_size: float | None = None,
    steps: int | None = None,
    targeted: bool = False,
    random_start: bool = False,
    seed: int | None = None,
) -> FoolingResult:
    """Basic iterative method (Kurakin, Goodfellow & Bengio 2017), a.k.a. iterative FGSM or PGD (L-inf).

    Repeats FGSM steps of ``step_size``, each followed by projection to the L-inf ball of radius ``epsilon``
    around the original and to [0, 1]. Defaults follow Kurakin et al.: ``step_size = 1/255`` (capped at
    ``epsilon``) and ``steps = min(255 * epsilon + 4, 1.25 * 255 * epsilon)``, rounded. With ``random_start``
    the search starts from a uniform random point of the ball (Madry et al. 2018), drawn with ``seed``.
    """
    image = _check_pixels(image, "image")
    epsilon = check_float(epsilon, "epsilon", low=0.0, high=1.0)
    step_size = min(1 / LEVELS, epsilon) if step_size is None else check_float(
        step_size, "step_size", low=0.0, high=1.0
    )
    if steps is None:
        steps = max(1, round(min(LEVELS * epsilon + 4, 1.25 * LEVELS * epsilon)))
    steps = check_int(steps, "steps", low=1)
    if not isinstance(targeted, bool):
        raise TypeError(f"targeted must be True or False; got {targeted!r}.")
    attacked = _resolve_label(model, image, label, targeted)
    labels = torch.tensor([attacked])
    direction = -1.0 if targeted else 1.0
    lower, upper = (image - epsilon).clamp(min=0.0), (image + epsilon).clamp(max=1.0)

    adversarial = image.clone()
    if random_start:
        generator = torch.Generator().manual_seed(0 if seed is None else check_int(seed, "seed", low=0))
        noise = torch.rand(image.shape, generator=generator).to(image) * 2 - 1
        adversarial = torch.clamp(image + epsilon * noise, lower, upper)
    for _ in range(steps):
        gradient = _input_gradient(model, adversarial, lambda logits: F.cross_entropy(logits, labels))
        adversarial = torch.clamp(adversarial + direction * step_size * gradient.sign(), lower, upper)
    return _result(model, image, adversarial, attacked, targeted=targeted, steps=steps)


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _check_pixels(image: object, name: str) -> torch.Tensor:
    image = check_image(image, name).detach().float()
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} must hold pixels in [0, 1]; got values in [{low:.3g}, {high:.3g}]. Use viztools.load_image(...) "
            "or model.preprocess(...), or .clamp(0, 1) the tensor."
        )
    return image


def _resolve_label(model: VizModel, image: torch.Tensor, label: int | str | None, targeted: bool) -> int:
    if label is None and targeted:
        raise ValueError("A targeted attack needs a target class: pass label=<class index or name>.")
    return model.resolve_target(label, image)


def _input_gradient(model: VizModel, pixels: torch.Tensor, objective) -> torch.Tensor:
    """Gradient of ``objective(model(pixels))`` with respect to the pixels (the model is left untouched)."""
    pixels = pixels.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective(model(pixels)), pixels)
    return gradient


@torch.no_grad()
def _result(
    model: VizModel, original: torch.Tensor, adversarial: torch.Tensor, attacked: int, *, targeted: bool, steps: int
) -> FoolingResult:
    probabilities = model.predict(torch.cat([original, adversarial]))
    confidence, predicted = probabilities.max(dim=1)
    prediction = int(predicted[1])
    return FoolingResult(
        original=original,
        adversarial=adversarial.detach(),
        attacked_class=attacked,
        targeted=targeted,
        steps=steps,
        success=(prediction == attacked) == targeted,
        original_prediction=int(predicted[0]),
        original_probability=float(confidence[0]),
        prediction=prediction,
        probability=float(confidence[1]),
        categories=tuple(model.categories),
    )
