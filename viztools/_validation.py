"""Argument checks whose error messages say what to do (in the spirit of scikit-learn's param validation)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from numbers import Integral, Real

import torch


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


def check_image(image: object, name: str = "image", *, batch: bool = False) -> torch.Tensor:
    """Check a pixel tensor and return it as ``(N, 3, H, W)`` float.

    Accepts ``(3, H, W)`` (a batch dimension is added) or ``(N, 3, H, W)``; with ``batch=False`` N must be 1.
    """
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
    return image


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
