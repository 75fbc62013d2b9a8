"""Argument checks whose error messages say what to do (in the spirit of scikit-learn's param validation)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a check needs it, so the command line and the grader start fast
    import torch

    from viztools.models import VizModel


def check_int(value: object, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise a ValueError/TypeError naming the accepted range."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__}).")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer in {_range_text(low, high)}; got {value}.")
    return value


def check_float(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float, or raise naming the accepted range."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number; got {value!r} ({type(value).__name__}).")
    value = float(value)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if value != value or too_low or (high is not None and value > high):
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{name} must be a number in {_range_text(low, high, bracket)}; got {value}.")
    return value


def check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise, suggesting the closest choice."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Unknown {name} {value!r}.{_suggest(value, choices)} Choose one of: {', '.join(choices)}.")
    return value


def check_image(
    image: object,
    name: str = "image",
    *,
    batch: bool = False,
    pixels: bool = False,
    model: VizModel | None = None,
) -> torch.Tensor:
    """Check a pixel tensor and return it as ``(N, 3, H, W)`` float.

    Accepts ``(3, H, W)`` (a batch dimension is added) or ``(N, 3, H, W)``; with ``batch=False`` N must be 1.
    ``pixels=True`` (every technique's entry point) also requires finite values in [0, 1]; ``model`` also checks
    that the model's classifier can run at the image's size (:meth:`VizModel.check_input_size`) and returns the
    image on the model's device.
    """
    import torch

    if isinstance(image, str):
        class_hint = f"; if {image!r} is a class, pass it as target={image!r}" if name == "image" else ""
        raise TypeError(
            f"{name} must be a pixel tensor; got the string {image!r}. Load an image with viztools.load_image"
            f"({image!r}) or model.preprocess({image!r}){class_hint}."
        )
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of pixels in [0, 1] with shape (1, 3, H, W); got "
            f"{type(image).__name__}. Use viztools.load_image(...) or model.preprocess(...) to make one."
        )
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (1, 3, H, W) (RGB, channels first); got {tuple(image.shape)}. "
            "Use viztools.load_image(...) or model.preprocess(...) to convert an image."
        )
    if not batch and image.shape[0] != 1:
        raise ValueError(f"{name} must hold a single image (batch size 1); got a batch of {image.shape[0]}.")
    if not image.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1]; got dtype {image.dtype}.")
    if pixels:
        _check_pixel_values(image, name)
    if model is not None:
        model.check_input_size(*image.shape[-2:])
        image = image.to(model.device)  # techniques work where the model is
    return image


def _check_pixel_values(image: torch.Tensor, name: str) -> None:
    import torch

    values = image.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"{name} contains NaN or infinite values; every pixel must be a finite number in [0, 1]. "
            "Check how the image was made (e.g. a division by zero), or reload it with viztools.load_image(...)."
        )
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        hint = (
            " It looks like 0-255 values: divide by 255."
            if high > 1.5 and low >= 0.0
            else " It looks normalized (mean/std): pass raw pixels, or use model.denormalize(...)."
        )
        raise ValueError(f"{name} must hold pixel values in [0, 1]; got values from {low:.3g} to {high:.3g}.{hint}")


def check_model(model: object, name: str = "model") -> VizModel:
    """Return ``model`` if it is a :class:`~viztools.models.VizModel`; otherwise raise saying how to get one."""
    import torch

    from viztools.models import VizModel

    if isinstance(model, VizModel):
        return model
    if isinstance(model, torch.nn.Module):
        raise TypeError(
            f"{name} must be a viztools VizModel, not a plain torch.nn.Module ({type(model).__name__}): techniques "
            "need its normalization, class names and layer names. Use viztools.load_model(name) for a registered "
            "architecture (viztools.MODEL_NAMES), or wrap your network: viztools.wrap_model(module, "
            "categories=[...], mean=..., std=..., input_size=...) (layers are found automatically)."
        )
    raise TypeError(f"{name} must be a VizModel from viztools.load_model(...); got {type(model).__name__}.")


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A random generator: seeded with ``seed`` (a non-negative int), fresh randomness for ``None``, or
    ``seed`` itself when it is already a ``torch.Generator``. The one meaning of ``seed`` across viztools."""
    import torch

    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(check_int(seed, "seed", low=0))
    return generator


def check_stop_callback(should_stop: object) -> Callable[[object], bool | None] | None:
    """Check the ``should_stop(progress)`` callback every long-running technique takes (None: never stop)."""
    if should_stop is not None and not callable(should_stop):
        raise TypeError(
            f"should_stop must be a function of one argument (the progress record) returning True to stop, or "
            f"None; got {type(should_stop).__name__}."
        )
    return should_stop


def suggest(value: object, choices: Sequence[str]) -> str:
    """A " Did you mean 'x'?" hint (empty when nothing is close)."""
    return _suggest(value, choices)


def _suggest(value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def _range_text(low: float | None, high: float | None, bracket: str = "[") -> str:
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{bracket}{lo}, {hi}{']' if high is not None else ')'}"
