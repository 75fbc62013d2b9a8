"""SmoothGrad: average a gradient map over noisy copies of the image (Smilkov, Thorat, Kim, Viégas & Wattenberg
2017, "SmoothGrad: removing noise by adding noise"); lecture notebook ``04_saliency``.

The gradient of a ReLU network jumps from pixel to pixel; its average over a Gaussian neighbourhood of the image is
smooth. Noise has standard deviation ``noise * (max - min)`` of the image's pixel values (the paper's noise level
``sigma / (x_max - x_min)``; 10-20 % works well), and the average runs over ``samples`` copies (the paper: 50).
Any gradient rule of :func:`viztools.saliency.input_gradient` can be smoothed: ``"plain"`` (vanilla gradient) or
``"guided"`` (guided backprop). Captum's ``NoiseTunnel(Saliency(...))`` with ``nt_type="smoothgrad"`` computes the
same average.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from viztools._validation import check_choice, check_float, check_int, make_generator
from viztools.models import VizModel
from viztools.saliency import RULES, _prepare, plot_saliency, score_gradients


@dataclass(frozen=True)
class SmoothGradResult:
    """What :func:`smooth_grad` returns.

    Attributes:
        gradient: ``(3, H, W)`` mean of the (signed) gradients over the noisy copies.
        magnitude: ``(3, H, W)`` mean of their absolute values (what ``Saliency(abs=True)`` averages).
        sigma: the noise's standard deviation in pixel units (``noise * (max - min)`` of the image).
        samples, rule, target: as used.
        image: the ``(1, 3, H, W)`` pixels explained.
    """

    gradient: torch.Tensor
    magnitude: torch.Tensor
    sigma: float
    samples: int
    rule: str
    target: int
    image: torch.Tensor = field(repr=False, compare=False)

    @property
    def saliency(self) -> torch.Tensor:
        """``(H, W)`` SmoothGrad saliency map: the largest mean ``|gradient|`` over the colour channels."""
        return self.magnitude.amax(dim=0)


def noisy_copies(image: torch.Tensor, sigma: float, samples: int, seed: int | torch.Generator | None) -> torch.Tensor:
    """``(samples, 3, H, W)`` copies of ``image`` plus Gaussian noise of standard deviation ``sigma``, drawn in one
    call (not clamped to [0, 1], as in the paper). The same ``seed`` gives the same noise."""
    generator = make_generator(seed)
    noise = torch.randn((samples, *image.shape[1:]), generator=generator, dtype=image.dtype, device="cpu")
    return image + sigma * noise.to(image.device)


def smooth_grad(model: VizModel, image: torch.Tensor, target: int | str | None = None, *, noise: float = 0.15,
                samples: int = 25, rule: str = "plain", seed: int | torch.Generator | None = 0,
                batch_size: int = 25) -> SmoothGradResult:
    """SmoothGrad (Smilkov et al. 2017) of class ``target`` (index or name; None: the top prediction).

    Args:
        noise: the noise level, a fraction of the image's value range ``max - min`` (0 gives the plain gradient).
        samples: number of noisy copies averaged.
        rule: the gradient being smoothed, ``"plain"`` (vanilla gradient), ``"guided"`` (guided backprop) or
            ``"deconvnet"``, as in :func:`viztools.saliency.input_gradient`.
        seed: the noise's seed (None: fresh noise).
        batch_size: copies per forward/backward pass.
    """
    pixels = _prepare(model, image).detach()
    noise = check_float(noise, "noise", low=0.0, high=10.0)
    samples = check_int(samples, "samples", low=1)
    rule = check_choice(rule, "rule", RULES)
    batch_size = check_int(batch_size, "batch_size", low=1)
    target_index = model.resolve_target(target, pixels)
    sigma = noise * float(pixels.max() - pixels.min())
    copies = noisy_copies(pixels, sigma, samples, seed)
    total = torch.zeros_like(pixels[0])
    total_abs = torch.zeros_like(pixels[0])
    for start in range(0, samples, batch_size):
        gradients, _ = score_gradients(model, copies[start:start + batch_size], target_index, rule=rule)
        total += gradients.sum(dim=0)
        total_abs += gradients.abs().sum(dim=0)
    return SmoothGradResult(total / samples, total_abs / samples, sigma, samples, rule, target_index, pixels)


def plot_smooth_grad(result: SmoothGradResult, image: torch.Tensor | None = None, *, ax: Axes | None = None,
                     signed: bool | None = None, title: str | None = None, percentile: float = 99.0) -> Figure:
    """The SmoothGrad map: the saliency heat map for ``rule="plain"``, the signed RGB picture (grey is zero, as
    :func:`viztools.saliency.plot_saliency` draws guided backprop) for the other rules; ``signed`` overrides.
    Pass ``image`` to draw it beside the map."""
    if not isinstance(result, SmoothGradResult):
        raise TypeError(f"plot_smooth_grad takes the result of smooth_grad(...); got {type(result).__name__}.")
    signed = result.rule != "plain" if signed is None else signed
    title = f"SmoothGrad ({result.rule}, {result.samples} samples)" if title is None else title
    return plot_saliency({title: result.gradient if signed else result.saliency}, image, ax=ax,
                         percentile=percentile)
