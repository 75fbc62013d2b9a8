"""The one optimization loop behind class visualization, feature inversion, DeepDream, neural style and fooling.

Image optimization in three pieces, after Lucid's ``optvis`` (objectives.py, render.py) and lucent's
``transform.py``:

* **Objectives** are small composable objects that are *maximized*: :class:`ClassScore`, :class:`ChannelMean`,
  :class:`LayerDream`, :class:`FeatureMatch` (and, in ``viztools.style``, a Gram match built on :class:`Objective`).
  They add and scale (``0.8 * a + 0.2 * b``, ``a - b``) and report named terms, so a widget can plot each one.
* **Regularizers** are penalties on the pixels, *minimized* with a non-negative weight: :class:`L2Penalty`,
  :class:`TotalVariation`.
* **Transforms** (``Tensor -> Tensor``, differentiable) change the image the network sees at each step, e.g.
  :class:`Jitter` (a random roll); **after-step operations** ``(pixels, step) -> pixels`` change the optimized
  pixels between steps, e.g. :func:`blur_every`. Pixels are clamped to [0, 1] after every step (``clamp=True``):
  a projection outside the optimizer's closure, since clamping inside an L-BFGS closure makes it diverge
  (pytorch/tutorials #143).
* **Parametrizations** say what the optimizer changes: the pixels themselves (``parametrization="pixels"``, the
  classic ascent), or, as in Olah et al. 2017 ("Feature Visualization", Distill) and Lucid's ``param.image``, the
  coefficients of a Fourier basis scaled by 1 / frequency in a decorrelated colour space (``"fourier"``), with
  :func:`robust_transforms` (pad, jitter, random scale and rotation) for transformation robustness.

The sign convention lives in one place: the optimizer minimizes ``loss = -objective + sum(regularizers)``.
:func:`optimize` yields :class:`Progress` records and never displays anything; :func:`run` drains it and returns
an :class:`OptimizationResult` holding the best image. A KeyboardInterrupt (Ctrl-C, the notebook's stop button)
inside :func:`run` returns the best image so far, as Lucid's ``render_vis`` does.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, ParamSpec, TypeVar

import torch

from viztools._validation import (
    check_choice,
    check_float,
    check_image,
    check_int,
    check_model,
    check_stop_callback,
    make_generator,
)
from viztools.data import gaussian_blur
from viztools.hooks import LOGITS, forward_activations
from viztools.models import VizModel

Activations = Mapping[str, torch.Tensor]
P = ParamSpec("P")
ResultT = TypeVar("ResultT")

# --------------------------------------------------------------------------------------------------------------
# Objectives (maximized)
# --------------------------------------------------------------------------------------------------------------


class Objective:
    """A scalar to maximize, computed from the activations of named layers.

    Subclasses call ``super().__init__(name, layers)`` and implement :meth:`value`. ``layers`` are
    ``model.layers`` keys or dotted module paths; :data:`LOGITS` stands for the model's output. The loop runs one
    forward pass per step that records every layer needed (and stops early when the logits are not needed).
    """

    def __init__(self, name: str, layers: Sequence[str]) -> None:
        if isinstance(layers, str):
            layers = [layers]
        self.name = name
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(layers))

    def value(self, activations: Activations) -> torch.Tensor:
        """The objective's scalar value (to maximize) from ``{layer: activation}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement value(activations).")

    def terms(self, activations: Activations) -> dict[str, torch.Tensor]:
        """Named scalar terms whose sum is the objective (one term for a simple objective)."""
        return {self.name: self.value(activations)}

    def __call__(self, activations: Activations) -> torch.Tensor:
        return sum(self.terms(activations).values())

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return SumObjective([self, other])

    def __radd__(self, other: object) -> Objective:
        if isinstance(other, (int, float)) and other == 0:  # sum([a, b, c]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return SumObjective([self, ScaledObjective(other, -1.0)])

    def __mul__(self, factor: float) -> Objective:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            return NotImplemented
        return ScaledObjective(self, float(factor))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return ScaledObjective(self, -1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SumObjective(Objective):
    """The sum of objectives; reports each part's terms (a repeated name gets a ``#2`` suffix)."""

    def __init__(self, parts: Sequence[Objective]) -> None:
        flat: list[Objective] = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, SumObjective) else [part])
        self.parts = flat
        super().__init__(" + ".join(p.name for p in flat), [layer for p in flat for layer in p.layers])

    def terms(self, activations: Activations) -> dict[str, torch.Tensor]:
        merged: dict[str, torch.Tensor] = {}
        for part in self.parts:
            for name, term in part.terms(activations).items():
                merged[_unique_name(name, merged)] = term
        return merged


class ScaledObjective(Objective):
    """An objective times a constant weight; its terms keep their names and are scaled."""

    def __init__(self, base: Objective, weight: float) -> None:
        if isinstance(base, ScaledObjective):
            base, weight = base.base, base.weight * weight
        self.base, self.weight = base, weight
        super().__init__(base.name, base.layers)

    def terms(self, activations: Activations) -> dict[str, torch.Tensor]:
        return {name: self.weight * term for name, term in self.base.terms(activations).items()}

    def __repr__(self) -> str:
        return f"{self.weight:g} * {self.base!r}"


class CustomObjective(Objective):
    """Any function of the activations, e.g. ``CustomObjective("log p", [LOGITS], lambda a: ...)``."""

    def __init__(self, name: str, layers: Sequence[str], function: Callable[[Activations], torch.Tensor]) -> None:
        super().__init__(name, layers)
        self.function = function

    def value(self, activations: Activations) -> torch.Tensor:
        return self.function(activations)


class ClassScore(Objective):
    """The unnormalized class score (logit) of class ``target`` (Simonyan et al. 2014), summed over the batch.

    Maximizing the logit rather than the softmax probability avoids winning by lowering the other classes.
    ``target`` must already be an index; use ``model.class_index(name)`` to resolve a class name.
    """

    def __init__(self, target: int) -> None:
        self.target = check_int(target, "target class index", low=0)
        super().__init__(f"class {self.target} score", [LOGITS])

    def value(self, activations: Activations) -> torch.Tensor:
        logits = activations[LOGITS]
        if self.target >= logits.shape[1]:
            raise ValueError(
                f"target class index must be below the number of classes ({logits.shape[1]}); got {self.target}."
            )
        return logits[:, self.target].sum()


class ChannelMean(Objective):
    """The mean activation of one channel (feature map) of a layer (Erhan et al. 2009; Lucid's ``channel``)."""

    def __init__(self, layer: str, channel: int) -> None:
        self.layer, self.channel = layer, check_int(channel, "channel", low=0)
        super().__init__(f"{layer} channel {self.channel}", [layer])

    def value(self, activations: Activations) -> torch.Tensor:
        activation = activations[self.layer]
        if self.channel >= activation.shape[1]:
            raise ValueError(
                f"channel must be below the number of channels of {self.layer!r} ({activation.shape[1]}); "
                f"got {self.channel}."
            )
        return activation[:, self.channel].mean()


class LayerDream(Objective):
    """DeepDream's objective: half the sum of squared activations of a layer (Mordvintsev et al. 2015).

    Its gradient with respect to the activations is the activations themselves ("amplify whatever the layer
    already sees").
    """

    def __init__(self, layer: str) -> None:
        self.layer = layer
        super().__init__(f"dream {layer}", [layer])

    def value(self, activations: Activations) -> torch.Tensor:
        return 0.5 * activations[self.layer].pow(2).sum()


class FeatureMatch(Objective):
    """Negative normalized squared distance to target features, ``-||F(x) - F0||^2 / ||F0||^2``.

    The objective of feature inversion (Mahendran & Vedaldi 2015) and of neural style's content term (Gatys et
    al. 2016). Normalizing by ``||F0||^2`` makes weights comparable across layers; 0 is a perfect match.
    """

    def __init__(self, layer: str, target_features: torch.Tensor) -> None:
        if not isinstance(target_features, torch.Tensor):
            raise TypeError(
                f"target_features must be a torch.Tensor (e.g. from viztools.get_activations); "
                f"got {type(target_features).__name__}."
            )
        self.layer = layer
        self.target_features = target_features.detach()
        self._norm = self.target_features.pow(2).sum().clamp_min(1e-12)
        super().__init__(f"feature match {layer}", [layer])

    def value(self, activations: Activations) -> torch.Tensor:
        features = activations[self.layer]
        if features.shape != self.target_features.shape:
            raise ValueError(
                f"The features of {self.layer!r} have shape {tuple(features.shape)} but the target features have "
                f"shape {tuple(self.target_features.shape)}; use an image of the same size as the target's."
            )
        return -(features - self.target_features).pow(2).sum() / self._norm


def _unique_name(name: str, taken: Mapping[str, object]) -> str:
    if name not in taken:
        return name
    index = 2
    while f"{name} #{index}" in taken:
        index += 1
    return f"{name} #{index}"


# --------------------------------------------------------------------------------------------------------------
# Regularizers (penalties on the pixels, minimized)
# --------------------------------------------------------------------------------------------------------------


class Regularizer:
    """A weighted penalty on the optimized pixels; the loop adds ``weight * penalty(pixels)`` to the loss."""

    def __init__(self, name: str, weight: float) -> None:
        self.name = name
        self.weight = check_float(weight, f"{name} weight", low=0.0)

    def penalty(self, pixels: torch.Tensor) -> torch.Tensor:
        """The unweighted penalty (a non-negative scalar)."""
        raise NotImplementedError(f"{type(self).__name__} must implement penalty(pixels).")

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.weight * self.penalty(pixels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight:g})"


class L2Penalty(Regularizer):
    """``weight * sum(((pixels - center) / scale)^2)``: keeps the image small (Simonyan et al. 2014).

    With ``center=model.mean`` and ``scale=model.std`` this is the squared norm of the *normalized* image, as in
    CS231n's class visualization; the defaults penalize raw pixels.
    """

    def __init__(
        self,
        weight: float,
        *,
        center: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__("L2", weight)
        self.center = _per_channel(center, "center")
        self.scale = _per_channel(scale, "scale")
        if (self.scale <= 0).any():
            raise ValueError(f"scale must be positive; got {self.scale.flatten().tolist()}.")

    def penalty(self, pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels - self.center.to(pixels)) / self.scale.to(pixels)).pow(2).sum()


class TotalVariation(Regularizer):
    """Total variation ``sum((dx^2 + dy^2)^(beta / 2))`` over neighbouring pixels (Mahendran & Vedaldi 2015).

    ``beta=2`` is the sum of squared differences (smooth images); ``beta=1`` the classic TV norm (sharp edges).
    """

    def __init__(self, weight: float, *, beta: float = 2.0) -> None:
        super().__init__("total variation", weight)
        self.beta = check_float(beta, "beta", low=0.0, low_inclusive=False)

    def penalty(self, pixels: torch.Tensor) -> torch.Tensor:
        dx = pixels[..., :-1, 1:] - pixels[..., :-1, :-1]
        dy = pixels[..., 1:, :-1] - pixels[..., :-1, :-1]
        squared = dx.pow(2) + dy.pow(2)
        if self.beta == 2.0:
            return squared.sum()
        return (squared + 1e-8).pow(self.beta / 2).sum()


def _per_channel(value: float | Sequence[float], name: str) -> torch.Tensor:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3:
        raise ValueError(f"{name} must be a number or 3 per-channel numbers (R, G, B); got {value!r}.")
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device="cpu").view(1, 3, 1, 1)


# --------------------------------------------------------------------------------------------------------------
# Transforms (before the forward pass) and after-step operations
# --------------------------------------------------------------------------------------------------------------

#: A differentiable ``Tensor -> Tensor`` map applied to the pixels before each forward pass.
Transform = Callable[[torch.Tensor], torch.Tensor]
#: ``(pixels, step) -> pixels``, applied without gradients to the optimized pixels after step ``step`` (1-based).
AfterStep = Callable[[torch.Tensor, int], torch.Tensor]


class RandomTransform:
    """A transform that draws random numbers from a ``torch.Generator``.

    Inside :func:`optimize` it draws from the loop's generator (seeded by ``seed``), with the same draw for every
    closure call of one step (L-BFGS evaluates several times per step). Called on its own it uses a generator of
    its own, seeded by ``seed``.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._own_generator = make_generator(seed)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(pixels, generator or self._own_generator)

    def apply(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The transformed pixels, drawing randomness from ``generator``."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply(pixels, generator).")


class Jitter(RandomTransform):
    """Roll the image by a random offset in ``[-max_shift, max_shift]`` pixels along each axis.

    Jitter (CS231n; Mordvintsev et al. 2015) stops the image from exploiting one pixel alignment, which removes
    high-frequency noise. Rolling wraps around, so the gradient is exactly "unrolled" by autograd.
    """

    def __init__(self, max_shift: int, *, seed: int | None = None) -> None:
        super().__init__(seed)
        self.max_shift = check_int(max_shift, "max_shift", low=0)

    def apply(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.max_shift == 0:
            return pixels
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=generator, device="cpu")
        return torch.roll(pixels, shifts=(int(shifts[0]), int(shifts[1])), dims=(-2, -1))

    def __repr__(self) -> str:
        return f"Jitter({self.max_shift})"


class Compose:
    """Apply transforms in order (random ones draw from the generator the loop passes)."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for transform in self.transforms:
            pixels = _apply_transform(transform, pixels, generator)
        return pixels


def compose(transforms: Sequence[Transform]) -> Compose:
    """One transform that applies ``transforms`` in order (lucent's ``compose``)."""
    return Compose(transforms)


def _apply_transform(transform: Transform, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if isinstance(transform, (RandomTransform, Compose)):
        return transform(pixels, generator)
    return transform(pixels)


def blur_every(every: int, sigma: float = 0.5) -> AfterStep:
    """An after-step operation: Gaussian-blur the pixels after every ``every``-th step (Yosinski et al. 2015)."""
    every = check_int(every, "blur every", low=1)
    sigma = check_float(sigma, "sigma", low=0.0)

    def blur(pixels: torch.Tensor, step: int) -> torch.Tensor:
        return gaussian_blur(pixels, sigma) if step % every == 0 else pixels

    blur.__name__ = blur.__qualname__ = f"blur_every({every}, sigma={sigma:g})"
    return blur


class Pad:
    """Pad the image by ``width`` pixels of a constant grey on every side (Lucid's ``pad``, before jitter)."""

    def __init__(self, width: int, value: float = 0.5) -> None:
        self.width = check_int(width, "pad width", low=0)
        self.value = check_float(value, "pad value", low=0.0, high=1.0)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.width == 0:
            return pixels
        return torch.nn.functional.pad(pixels, (self.width,) * 4, mode="constant", value=self.value)

    def __repr__(self) -> str:
        return f"Pad({self.width}, value={self.value:g})"


class Crop:
    """Remove ``width`` pixels from every side (undoes :class:`Pad`, so the network sees the image's own size)."""

    def __init__(self, width: int) -> None:
        self.width = check_int(width, "crop width", low=0)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.width == 0:
            return pixels
        if min(pixels.shape[-2:]) <= 2 * self.width:
            raise ValueError(f"Cannot crop {self.width} px from each side of a {tuple(pixels.shape[-2:])} image; "
                             "use a smaller crop width.")
        return pixels[..., self.width:-self.width, self.width:-self.width]

    def __repr__(self) -> str:
        return f"Crop({self.width})"


class RandomAffine(RandomTransform):
    """Scale by a factor drawn from ``scales`` and rotate by an angle (degrees) drawn from ``angles``, about the centre.

    One bilinear resampling (``affine_grid`` + ``grid_sample``, differentiable), keeping the image size; the
    corners a rotation uncovers repeat the border. Transformation robustness (Olah et al. 2017, "Feature
    Visualization"; Lucid's ``random_scale`` and ``random_rotate``): the image has to excite the class at every
    scale and angle it is shown at, which suppresses the high-frequency patterns that only work in one alignment.
    """

    def __init__(self, scales: Sequence[float] = (1.0,), angles: Sequence[float] = (0.0,), *,
                 seed: int | None = None) -> None:
        super().__init__(seed)
        self.scales = [check_float(s, "scale", low=0.0, low_inclusive=False) for s in scales]
        self.angles = [check_float(a, "angle (degrees)") for a in angles]
        if not self.scales or not self.angles:
            raise ValueError("RandomAffine needs at least one scale and one angle, e.g. scales=(1.0,), angles=(0,).")

    def apply(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=generator, device="cpu"))]
        angle = math.radians(self.angles[int(torch.randint(len(self.angles), (1,), generator=generator,
                                                           device="cpu"))])
        if scale == 1.0 and angle == 0.0:
            return pixels
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale  # output -> input sampling coordinates
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=pixels.dtype, device=pixels.device)
        grid = torch.nn.functional.affine_grid(theta.expand(pixels.shape[0], 2, 3), list(pixels.shape),
                                               align_corners=False)
        return torch.nn.functional.grid_sample(pixels, grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)

    def __repr__(self) -> str:
        return f"RandomAffine(scales={self.scales}, angles={self.angles})"


def robust_transforms(size: int) -> list[Transform]:
    """Lucid's ``standard_transforms`` for a ``size``-px image (Olah et al. 2017): pad, jitter, scale, rotate, jitter.

    At 128 px: pad 12 px of grey, roll up to 8 px, scale by 0.9-1.1, rotate by -10 to 10 degrees (0 more often),
    roll up to 4 px; the pixel amounts scale with ``size / 128``. Unlike Lucid, the padding is cropped off again at
    the end, so the network sees an image of the original size (classifiers with a fixed input size work too).
    """
    size = check_int(size, "size", low=1)
    pixels = lambda amount: max(1, round(amount * size / 128))  # noqa: E731
    return [
        Pad(pixels(12)),
        Jitter(pixels(8)),
        RandomAffine(scales=[1 + (i - 5) / 50 for i in range(11)], angles=list(range(-10, 11)) + 5 * [0]),
        Jitter(pixels(4)),
        Crop(pixels(12)),
    ]


# --------------------------------------------------------------------------------------------------------------
# Image parametrizations: what the optimizer changes to make the image
# --------------------------------------------------------------------------------------------------------------

#: The square root of ImageNet's 3 x 3 RGB colour covariance (Lucid's ``color_correlation_svd_sqrt``: ``U sqrt(S)``
#: from its SVD). Its columns map decorrelated colour components (roughly luminance, red-blue, green-magenta) to RGB.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
#: The same matrix scaled so that its largest column has unit norm, as Lucid uses it.
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
#: Lucid's ``fft_image`` divides the inverse transform by 4 ("reduces saturation").
FOURIER_DAMPING = 4.0
_SIGMOID_MARGIN = 1e-4  # encoding clamps pixels into [margin, 1 - margin] before the logit


def decorrelated_to_rgb(components: torch.Tensor) -> torch.Tensor:
    """Map ``(N, 3, H, W)`` decorrelated colour components to RGB with :data:`COLOR_CORRELATION` (Lucid)."""
    return torch.einsum("rc,nchw->nrhw", COLOR_CORRELATION.to(components), components)


def rgb_to_decorrelated(rgb: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`decorrelated_to_rgb`."""
    return torch.einsum("cr,nrhw->nchw", torch.linalg.inv(COLOR_CORRELATION).to(rgb), rgb)


def fourier_scale(
    height: int, width: int, decay_power: float = 1.0, *, device: str | torch.device | None = None
) -> torch.Tensor:
    """``1 / frequency^decay_power`` for each coefficient of a real 2-D FFT of an ``height x width`` image (Lucid).

    Frequencies are in cycles per pixel (``torch.fft.fftfreq`` / ``rfftfreq``); the constant term gets the value
    of the lowest frequency, ``max(height, width)``. Natural images' spectra fall off about as ``1 / frequency``, so
    a unit step on every coefficient gives an image with a natural image's balance of coarse and fine detail.
    """
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    frequency = (fx.pow(2) + fy.pow(2)).sqrt().clamp_min(1.0 / max(height, width))
    return frequency.pow(-decay_power)


class ParametrizedImage:
    """An image made from parameters the optimizer changes; :meth:`image` is differentiable in them.

    The pixel parametrization (``parameters == [pixels]``) is the identity: the loop clamps its pixels to [0, 1]
    after each step. The others end in a sigmoid, so every parameter value gives a valid image.
    """

    def __init__(self, parameters: list[torch.Tensor], *, bounded: bool) -> None:
        self.parameters = parameters
        self.bounded = bounded  # True: image() is always in [0, 1] (no clamping needed)

    def image(self) -> torch.Tensor:
        """The ``(N, 3, H, W)`` pixels in [0, 1] made from the parameters (differentiable)."""
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor) -> None:
        """Set the parameters so that :meth:`image` gives ``pixels`` (clamped into (0, 1) where a sigmoid ends it)."""
        raise NotImplementedError


class _Pixels(ParametrizedImage):
    def __init__(self, start: torch.Tensor) -> None:
        super().__init__([start.detach().clone().requires_grad_(True)], bounded=False)

    def image(self) -> torch.Tensor:
        return self.parameters[0]

    def encode(self, pixels: torch.Tensor) -> None:
        with torch.no_grad():
            self.parameters[0].copy_(pixels)


class _SigmoidImage(ParametrizedImage):
    """``sigmoid(colour(spatial(parameters)))``: Lucid's ``to_valid_rgb(..., sigmoid=True)``."""

    def __init__(self, start: torch.Tensor, *, fourier: bool, decorrelate: bool, decay_power: float) -> None:
        self.fourier, self.decorrelate = fourier, decorrelate
        self.size = tuple(start.shape[-2:])
        self.scale = fourier_scale(*self.size, decay_power, device=start.device) if fourier else None
        super().__init__([], bounded=True)
        self.parameters = [self._encoded(start).requires_grad_(True)]

    def image(self) -> torch.Tensor:
        values = self.parameters[0]
        if self.fourier:
            spectrum = torch.view_as_complex(values) * self.scale
            values = torch.fft.irfftn(spectrum, s=self.size, norm="ortho") / FOURIER_DAMPING
        if self.decorrelate:
            values = decorrelated_to_rgb(values)
        return torch.sigmoid(values)

    def encode(self, pixels: torch.Tensor) -> None:
        with torch.no_grad():
            self.parameters[0].copy_(self._encoded(pixels))

    def _encoded(self, pixels: torch.Tensor) -> torch.Tensor:
        values = torch.logit(pixels.detach().clamp(_SIGMOID_MARGIN, 1 - _SIGMOID_MARGIN))
        if self.decorrelate:
            values = rgb_to_decorrelated(values)
        if self.fourier:
            spectrum = torch.fft.rfftn(values * FOURIER_DAMPING, s=self.size, norm="ortho") / self.scale
            values = torch.view_as_real(spectrum)
        return values.contiguous().clone()


@dataclass(frozen=True)
class ImageParametrization:
    """How the optimized parameters make the image (Olah et al. 2017, "Feature Visualization", Distill; Lucid's
    ``param.image(size, fft=..., decorrelate=...)``).

    Attributes:
        fourier: optimize the coefficients of a real 2-D Fourier transform scaled by ``1 / frequency^decay_power``
            instead of the pixels: a gradient step then changes coarse structure more than fine detail, which
            steers the ascent away from high-frequency noise (gradient descent in a whitened basis).
        decorrelate: optimize decorrelated colour components, mapped to RGB by the square root of ImageNet's
            colour covariance (:data:`COLOR_CORRELATION`), so a step changes colours as they vary in photographs.
        decay_power: the exponent of the frequency scaling (1 in Lucid).

    Neither option (``"pixels"``) optimizes the pixels themselves, clamped to [0, 1] after each step; with either,
    the image is the sigmoid of the (transformed) parameters. ``"fourier"`` is ``fourier=True, decorrelate=True``.
    """

    fourier: bool = False
    decorrelate: bool = False
    decay_power: float = 1.0

    def build(self, start: torch.Tensor) -> ParametrizedImage:
        """The parametrized image, with parameters set to give ``start`` (``(N, 3, H, W)`` pixels in [0, 1])."""
        if not (self.fourier or self.decorrelate):
            return _Pixels(start)
        check_float(self.decay_power, "decay_power", low=0.0)
        return _SigmoidImage(start, fourier=self.fourier, decorrelate=self.decorrelate, decay_power=self.decay_power)


#: The named parametrizations ``optimize(..., parametrization=name)`` accepts.
PARAMETRIZATIONS: dict[str, ImageParametrization] = {
    "pixels": ImageParametrization(),
    "fourier": ImageParametrization(fourier=True, decorrelate=True),
}


def image_parametrization(parametrization: str | ImageParametrization) -> ImageParametrization:
    """Resolve ``"pixels"``, ``"fourier"`` or an :class:`ImageParametrization` (checked; a clear error otherwise)."""
    if isinstance(parametrization, ImageParametrization):
        return parametrization
    if not isinstance(parametrization, str):
        raise TypeError(
            f"parametrization must be one of {sorted(PARAMETRIZATIONS)} or an ImageParametrization(fourier=..., "
            f"decorrelate=...); got {type(parametrization).__name__}."
        )
    return PARAMETRIZATIONS[check_choice(parametrization, "parametrization", tuple(PARAMETRIZATIONS))]


# --------------------------------------------------------------------------------------------------------------
# Progress records and results
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One step of an optimization, as :func:`optimize` yields it.

    Attributes:
        step: optimizer steps done so far (1-based).
        loss: the total loss evaluated at this step (before the update), ``-objective + penalties``.
        losses: the named parts of ``loss``; objective terms enter negated, penalties weighted; they sum to
            ``loss``. Lower is better for every entry.
        image: the pixels after this step (a detached clone, safe to keep).
        closure_calls: forward+backward evaluations so far (L-BFGS makes several per step).
        elapsed: seconds since the loop started.
        stage: which stage of a multi-stage run this step belongs to (DeepDream's octave; 0 otherwise).
    """

    step: int
    loss: float
    losses: dict[str, float]
    image: torch.Tensor
    closure_calls: int
    elapsed: float
    stage: int = 0


@dataclass
class OptimizationResult:
    """What :func:`run` (or :meth:`Optimization.result`) returns.

    Attributes:
        image: the best image seen (lowest total loss among every evaluated image, including the final one).
        loss: its total loss; ``best_step`` the number of steps after which it was taken (0 = the start).
        last_image: the pixels after the last step.
        steps: optimizer steps done; ``closure_calls`` forward+backward evaluations done.
        stop_reason: ``"steps"``, ``"time"``, ``"stopped"`` (``stop()`` or ``should_stop``), ``"interrupted"``
            (KeyboardInterrupt), or ``"error"`` (an exception ended an iteration; :func:`run` re-raises it).
        history: every step's ``losses`` plus their ``"total"``, for plotting.
        elapsed: seconds spent.
    """

    image: torch.Tensor
    loss: float
    best_step: int
    last_image: torch.Tensor
    steps: int
    closure_calls: int
    stop_reason: str
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0

    @classmethod
    def extending(cls: type[ResultT], outcome: OptimizationResult, **extra: object) -> ResultT:
        """A technique's result (a subclass) holding ``outcome``'s fields plus the technique's ``extra`` ones."""
        return cls(**{name: getattr(outcome, name) for name in OptimizationResult.__dataclass_fields__}, **extra)


OPTIMIZERS = ("adam", "sgd", "lbfgs")
GRADIENT_NORMALIZATIONS = ("l2", "rms", "mean_abs")
OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class LoopSettings:
    """The options of :func:`optimize`, with their defaults (the one place they are stated).

    Attributes:
        steps: optimizer steps at most.
        optimizer: ``"adam"``, ``"sgd"``, ``"lbfgs"``, or a factory ``params -> torch.optim.Optimizer``;
            ``optimizer_options`` go to its constructor (L-BFGS defaults to ``max_iter=1``: one step, one
            iteration).
        lr: the learning rate, in units of the parametrization's parameters (pixel units for ``"pixels"``).
        parametrization: what the optimizer changes: ``"pixels"`` (the default), ``"fourier"`` (a Fourier basis
            scaled by 1 / frequency, in decorrelated colour; Olah et al. 2017) or an :class:`ImageParametrization`.
        transforms: applied to the pixels before the network sees them at each step (e.g. :class:`Jitter`).
        regularizers: penalties on the pixels (:class:`L2Penalty`, :class:`TotalVariation`).
        after_step: operations ``(pixels, step) -> pixels`` between steps (e.g. :func:`blur_every`).
        clamp: project the pixels into [0, 1] after every step.
        normalize_gradient: ``"l2"``, ``"rms"`` or ``"mean_abs"`` rescales the gradient before each step
            (CS231n / DeepDream style steps with SGD); None keeps it.
        every: yield a :class:`Progress` every ``every`` steps (and after the last).
        time_budget: stop after this many seconds (wall time since the first step).
        should_stop: called as ``should_stop(progress)`` after every step; True stops the loop.
        seed: seeds the random transforms (None: fresh randomness); equal seeds give identical images.
    """

    steps: int = 100
    optimizer: str | OptimizerFactory = "adam"
    lr: float = 0.05
    parametrization: str | ImageParametrization = "pixels"
    transforms: Sequence[Transform] = ()
    regularizers: Sequence[Regularizer] = ()
    after_step: Sequence[AfterStep] = ()
    clamp: bool = True
    normalize_gradient: str | None = None
    optimizer_options: Mapping[str, object] | None = None
    every: int = 1
    time_budget: float | None = None
    should_stop: Callable[[Progress], bool | None] | None = None
    seed: int | None = None


class Optimization(Iterator[Progress]):
    """The running loop returned by :func:`optimize`: iterate it for :class:`Progress`, or call :meth:`result`.

    ``stop()`` asks it to finish after the current step; ``best_image`` is always available. Hooks exist only
    while a step runs, so abandoning the iterator never leaves the model hooked.
    """

    def __init__(self, model: VizModel, image: torch.Tensor, objective: Objective, settings: LoopSettings) -> None:
        model = check_model(model)
        if not isinstance(objective, Objective):
            raise TypeError(
                f"objective must be a viztools.optimize.Objective (e.g. ClassScore(3), LayerDream('conv3')); "
                f"got {type(objective).__name__}."
            )
        image = check_image(image, "image", batch=True)
        for layer in objective.layers:
            if layer != LOGITS:
                model.layer_path(layer)  # raises a helpful ValueError for unknown layers
        for regularizer in settings.regularizers:
            if not isinstance(regularizer, Regularizer):
                raise TypeError(
                    f"regularizers must be Regularizer objects (L2Penalty, TotalVariation); got {regularizer!r}."
                )
        self.model, self.objective = model, objective
        self.steps = check_int(settings.steps, "steps", low=0)
        self.lr = check_float(settings.lr, "lr", low=0.0, low_inclusive=False)
        self.every = check_int(settings.every, "every", low=1)
        self.time_budget = None if settings.time_budget is None else check_float(
            settings.time_budget, "time_budget (seconds)", low=0.0, low_inclusive=False
        )
        if settings.normalize_gradient is not None:
            check_choice(settings.normalize_gradient, "normalize_gradient", GRADIENT_NORMALIZATIONS)
            if settings.optimizer == "lbfgs":
                raise ValueError("normalize_gradient does not combine with L-BFGS (it needs true gradients); use None.")
        self.normalize_gradient = settings.normalize_gradient
        self.transforms = list(settings.transforms)
        self.regularizers = list(settings.regularizers)
        self.after_step = list(settings.after_step)
        self.clamp = bool(settings.clamp)
        self.should_stop = check_stop_callback(settings.should_stop)
        self.generator = make_generator(settings.seed)

        self.parametrized = image_parametrization(settings.parametrization).build(image)
        self.optimizer = _make_optimizer(
            settings.optimizer, self.parametrized.parameters, self.lr, settings.optimizer_options
        )

        self.step = 0
        self.closure_calls = 0
        self.history: list[dict[str, float]] = []
        self.best_loss = math.inf
        self.best_step = 0
        self.best_image = self.image
        self.stop_reason: str | None = None
        self._stop_requested = False
        self._started: float | None = None
        self._elapsed = 0.0

    # -- control ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish after the current step (the result keeps the best image so far)."""
        self._stop_requested = True

    @property
    def finished(self) -> bool:
        return self.stop_reason is not None

    @property
    def image(self) -> torch.Tensor:
        """The current pixels (a detached clone)."""
        with torch.no_grad():
            return self.parametrized.image().detach().clone()

    def __iter__(self) -> Optimization:
        return self

    def __next__(self) -> Progress:
        if self.finished:
            raise StopIteration
        if self._started is None:
            self._started = time.perf_counter()
        try:
            while True:
                reason = self._budget_reason()
                if reason is not None:
                    self._finish(reason)
                    raise StopIteration
                losses = self._take_step()
                due = self.step % self.every == 0 or self.step == self.steps or self._time_is_up()
                progress = self._progress(losses) if due or self.should_stop is not None else None
                if self.should_stop is not None and self.should_stop(progress):
                    self._stop_requested = True
                if due or self._stop_requested:  # the last step is always reported
                    return progress or self._progress(losses)
        except StopIteration:
            raise
        except KeyboardInterrupt:
            self._abort("interrupted")
            raise
        except Exception:
            self._abort("error")
            raise

    def _abort(self, reason: str) -> None:
        self.stop_reason = reason
        self._elapsed = time.perf_counter() - self._started

    def result(self) -> OptimizationResult:
        """Run the remaining steps and return the result; Ctrl-C returns the best image so far."""
        try:
            for _ in self:
                pass
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
        return OptimizationResult(
            image=self.best_image.clone(),
            loss=self.best_loss,
            best_step=self.best_step,
            last_image=self.image,
            steps=self.step,
            closure_calls=self.closure_calls,
            stop_reason=self.stop_reason or "stopped",
            history=list(self.history),
            elapsed=self._elapsed,
        )

    # -- internals -------------------------------------------------------------------------------------------

    def _budget_reason(self) -> str | None:
        if self.step >= self.steps:
            return "steps"
        if self._stop_requested:
            return "stopped"
        if self._time_is_up():
            return "time"
        return None

    def _time_is_up(self) -> bool:
        return self.time_budget is not None and time.perf_counter() - self._started >= self.time_budget

    def _finish(self, reason: str) -> None:
        """Evaluate the final pixels once (they may be the best) and record why the loop stopped."""
        with torch.no_grad():
            loss, _, pixels = self._evaluate()
        self._consider_best(float(loss), self.step, pixels)
        self.stop_reason = reason
        self._elapsed = time.perf_counter() - self._started

    def _take_step(self) -> dict[str, float]:
        step_generator_state = self.generator.get_state()
        first: dict[str, float] = {}

        def closure() -> torch.Tensor:
            self.generator.set_state(step_generator_state)  # one random draw per step, however many calls
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts, pixels = self._evaluate()
            loss.backward()
            self.closure_calls += 1
            if not first:
                first.update(parts)
                self._consider_best(parts["total"], self.step, pixels)
            if self.normalize_gradient is not None:
                for parameter in self.parametrized.parameters:
                    parameter.grad = _normalized(parameter.grad, self.normalize_gradient)
            return loss

        self.optimizer.step(closure)
        self.step += 1
        if self.after_step or (self.clamp and not self.parametrized.bounded):
            with torch.no_grad():
                updated = self.parametrized.image().detach()
                for operation in self.after_step:
                    updated = operation(updated, self.step)
                if self.clamp:
                    updated = updated.clamp(0.0, 1.0)
                self.parametrized.encode(updated)  # a sigmoid parametrization takes the changed image back
        self.history.append(first)
        return first

    def _consider_best(self, loss: float, step: int, pixels: torch.Tensor) -> None:
        if loss < self.best_loss or not math.isfinite(self.best_loss):
            self.best_loss, self.best_step = loss, step
            self.best_image = pixels.detach().clone()

    def _evaluate(self) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """``(total loss, named parts, pixels)`` for the current parameters: one forward pass through the
        parametrization, the transforms and the model."""
        pixels = self.parametrized.image()
        seen = pixels
        for transform in self.transforms:
            seen = _apply_transform(transform, seen, self.generator)
        activations = forward_activations(self.model, seen, self.objective.layers)
        loss_terms: dict[str, torch.Tensor] = {}
        for name, term in self.objective.terms(activations).items():
            loss_terms[_unique_name(name, {"total": None, **loss_terms})] = -term
        for regularizer in self.regularizers:
            loss_terms[_unique_name(regularizer.name, {"total": None, **loss_terms})] = regularizer(pixels)
        total = sum(loss_terms.values())
        parts = {name: float(term.detach()) for name, term in loss_terms.items()}
        parts["total"] = float(total.detach())
        return total, parts, pixels

    def _progress(self, losses: dict[str, float]) -> Progress:
        return Progress(
            step=self.step,
            loss=losses["total"],
            losses={k: v for k, v in losses.items() if k != "total"},
            image=self.image,
            closure_calls=self.closure_calls,
            elapsed=time.perf_counter() - self._started,
        )


def _normalized(gradient: torch.Tensor, how: str) -> torch.Tensor:
    if how == "l2":
        scale = gradient.norm()
    elif how == "rms":
        scale = gradient.pow(2).mean().sqrt()
    else:
        scale = gradient.abs().mean()
    return gradient / (scale + 1e-12)


def _make_optimizer(
    optimizer: str | OptimizerFactory,
    parameters: list[torch.Tensor],
    lr: float,
    options: Mapping[str, object] | None,
) -> torch.optim.Optimizer:
    options = dict(options or {})
    if callable(optimizer) and not isinstance(optimizer, str):
        made = optimizer(list(parameters))
        if not isinstance(made, torch.optim.Optimizer):
            raise TypeError(f"optimizer factory must return a torch.optim.Optimizer; got {type(made).__name__}.")
        return made
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    try:
        if optimizer == "adam":
            return torch.optim.Adam(parameters, lr=lr, **options)
        if optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=lr, **options)
        return torch.optim.LBFGS(parameters, lr=lr, **{"max_iter": 1, **options})
    except TypeError as error:
        raise TypeError(f"Bad optimizer_options for {optimizer!r}: {error}.") from error


# --------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------


def optimize(model: VizModel, image: torch.Tensor, objective: Objective, **settings: object) -> Optimization:
    """Optimize the pixels of ``image`` (a starting point, not modified) to maximize ``objective``.

    The loop minimizes ``-objective(activations of transforms(pixels)) + sum(regularizers(pixels))``; the
    keyword ``settings`` are the fields of :class:`LoopSettings` (steps, optimizer, lr, transforms, regularizers,
    after_step, clamp, normalize_gradient, optimizer_options, every, time_budget, should_stop, seed).

    Returns an :class:`Optimization`: iterate it for a :class:`Progress` every ``every`` steps and after the
    last step (however the loop ends), call ``.stop()`` to end it, or ``.result()`` for the
    :class:`OptimizationResult`.
    """
    unknown = sorted(set(settings) - set(LoopSettings.__dataclass_fields__))
    if unknown:
        raise TypeError(
            f"Unknown optimize() option(s): {', '.join(unknown)}. "
            f"Choose from: {', '.join(LoopSettings.__dataclass_fields__)}."
        )
    return Optimization(model, image, objective, LoopSettings(**settings))


def run(model: VizModel, image: torch.Tensor, objective: Objective, **settings: object) -> OptimizationResult:
    """:func:`optimize` run to the end; returns the best image (Ctrl-C returns the best image so far)."""
    return optimize(model, image, objective, **settings).result()


# --------------------------------------------------------------------------------------------------------------
# A technique's live optimization
# --------------------------------------------------------------------------------------------------------------

class Run(Iterator[Progress], Generic[ResultT]):
    """A technique's optimization as it runs: what every ``<technique>_optimization(...)`` returns.

    Iterate it for :class:`Progress` (the current image and the named loss terms, for a live display), call
    :meth:`stop` to end it after the current step, or :meth:`result` for the technique's result (a Ctrl-C during
    :meth:`result` ends the run with the best image so far). A run is one optimization, or several stages in
    sequence (DeepDream's octaves): ``next_stage(outcome)`` makes the next stage from the previous stage's
    :class:`OptimizationResult`, or returns None when the run is complete. ``finish(outcomes)`` turns the
    stages' outcomes into the technique's result.
    """

    def __init__(
        self,
        first: Optimization,
        finish: Callable[[list[OptimizationResult]], ResultT],
        *,
        next_stage: Callable[[OptimizationResult], Optimization | None] | None = None,
    ) -> None:
        self.current = first
        self.outcomes: list[OptimizationResult] = []
        self._finish, self._next_stage = finish, next_stage
        self._stop_requested = False
        self._complete = False

    @property
    def stage(self) -> int:
        """The index of the running stage (0 for single-stage runs)."""
        return len(self.outcomes)

    @property
    def best_image(self) -> torch.Tensor:
        """The best image of the running stage so far."""
        return self.current.best_image.clone()

    def stop(self) -> None:
        """Finish after the current step; :meth:`result` then returns the best image so far."""
        self._stop_requested = True
        self.current.stop()

    def __iter__(self) -> Run[ResultT]:
        return self

    def __next__(self) -> Progress:
        while not self._complete:
            try:
                progress = next(self.current)
            except StopIteration:
                self._end_stage()
                continue
            return progress if self.stage == 0 else replace(progress, stage=self.stage)
        raise StopIteration

    def _end_stage(self) -> None:
        outcome = self.current.result()  # the stage is finished: this only packs its outcome
        self.outcomes.append(outcome)
        following = None
        if self._next_stage is not None and not self._stop_requested and outcome.stop_reason == "steps":
            following = self._next_stage(outcome)
        if following is None:
            self._complete = True
        else:
            self.current = following

    def result(self) -> ResultT:
        """Run the remaining steps and return the technique's result (Ctrl-C keeps the best image so far)."""
        try:
            for _ in self:
                pass
        except KeyboardInterrupt:
            self._stop_requested = True
            self._end_stage()
        return self._finish(list(self.outcomes))


def finished(live: Callable[P, Run[ResultT]], name: str) -> Callable[P, ResultT]:
    """The finished form of a ``<technique>_optimization`` function: same arguments, returns ``.result()``."""

    @functools.wraps(live)
    def technique(*args: P.args, **kwargs: P.kwargs) -> ResultT:
        return live(*args, **kwargs).result()

    technique.__name__ = technique.__qualname__ = name
    technique.__doc__ = (
        f"Run :func:`{live.__name__}` to the end and return its result (same arguments).\n\n{live.__doc__ or ''}"
    )
    del technique.__wrapped__  # show this function's own return type in help()
    signature = inspect.signature(live)
    technique.__signature__ = signature.replace(  # type: ignore[attr-defined]
        return_annotation=signature.return_annotation.removeprefix("Run[").removesuffix("]")
        if isinstance(signature.return_annotation, str) else inspect.Signature.empty
    )
    return technique
