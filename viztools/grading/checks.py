"""Helpers for the check cells of graded exercises.

A visible check cell prints one line per property, ``"<what>: OK"`` or ``"<what>: WRONG - <what went wrong>"``,
for the student's self-testing; these lines never count for the grade (the grader runs the hidden checks in
:mod:`viztools.grading.proxy`, which share :func:`close_problem`). The ``WRONG`` lines are written for students:
they say what was expected and what their code gave.

Comparisons follow CS231n's habit of checking numbers against a reference within a tolerance, phrased as a
sentence instead of a relative error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from viztools.grading.notebooks import FAIL_WORD, PASS_WORD
from viztools.hooks import attach
from viztools.models import VizModel


def report(what: str, ok: bool, problem: str = "") -> None:
    """Print ``"<what>: OK"`` when ``ok``, else ``"<what>: WRONG - <problem>"``."""
    print(f"{what}: {PASS_WORD}" if ok else f"{what}: {FAIL_WORD} - {problem or 'not as expected'}")


def _format_number(value: float) -> str:
    return f"{value:.4g}"


def _as_tensor(value: object) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64)
    if isinstance(value, (np.ndarray, list, tuple, float, int, np.floating, np.integer)):
        try:
            return torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError):
            return None
    return None


def _describe(value: object) -> str:
    if value is None:
        return "None (does your function end with `return ...`?)"
    return f"a {type(value).__name__}"


def close_problem(got: object, expected: object, *, atol: float = 1e-4, rtol: float = 0.0) -> str | None:
    """None when ``got`` has ``expected``'s shape and matches it within ``atol + rtol * |expected|``, else why not.

    ``got`` may be a tensor, a numpy array or a (nested) list. A mismatch names the shape, or the worst
    element with both values, so the message is useful without printing the whole array.
    """
    reference = _as_tensor(expected)
    if reference is None:
        raise TypeError(f"close_problem needs a numeric reference; got {type(expected).__name__}.")
    answer = _as_tensor(got)
    if answer is None:
        return f"expected a tensor of shape {tuple(reference.shape)}, got {_describe(got)}"
    if tuple(answer.shape) != tuple(reference.shape):
        return f"expected shape {tuple(reference.shape)}, got shape {tuple(answer.shape)}"
    if torch.isnan(answer).any():
        return f"{int(torch.isnan(answer).sum())} of {answer.numel()} values are NaN"
    allowed = atol + rtol * reference.abs()
    excess = (answer - reference).abs() - allowed
    if answer.numel() == 0 or bool((excess <= 0).all()):
        return None
    worst = int(excess.flatten().argmax())
    position = tuple(int(i) for i in np.unravel_index(worst, tuple(answer.shape)))
    wrong = int((excess > 0).sum())
    return (f"{wrong} of {answer.numel()} values differ; the largest difference is at position {position}: "
            f"expected {_format_number(float(reference.flatten()[worst]))}, got "
            f"{_format_number(float(answer.flatten()[worst]))} (allowed difference {atol:g})")


def report_close(what: str, got: object, expected: object, *, atol: float = 1e-4, rtol: float = 0.0) -> None:
    """Report whether ``got`` matches ``expected`` (see :func:`close_problem`)."""
    if _as_tensor(expected) is None:
        raise TypeError(f"report_close needs a numeric reference for {what!r}; got {type(expected).__name__}.")
    problem = close_problem(got, expected, atol=atol, rtol=rtol)
    report(what, problem is None, problem or "")


def report_equal(what: str, got: object, expected: object) -> None:
    """Report whether ``got == expected`` for plain values (ints, strings, lists of ints, ...)."""
    normalized = list(got) if isinstance(got, (tuple, range)) else got
    if isinstance(normalized, list):
        normalized = [int(v) if isinstance(v, (np.integer, torch.Tensor)) else v for v in normalized]
    target = list(expected) if isinstance(expected, (tuple, range)) else expected
    report(what, normalized == target, f"expected {target!r}, got {normalized!r}")


@contextlib.contextmanager
def count_forward_passes(model: VizModel) -> Iterator[list[int]]:
    """Record the batch size of every forward pass through ``model.network`` inside the ``with`` block.

    Uses a forward pre-hook registered with :func:`viztools.hooks.attach`, so it is removed on exit.
    """
    batch_sizes: list[int] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        batch_sizes.append(int(inputs[0].shape[0]))

    with attach(model.network, forward_pre=record):
        yield batch_sizes


class _CornerNet(nn.Module):
    """Logit 0 is the sum over the top-left ``corner`` x ``corner`` pixels of the channel mean; logit 1 is 0."""

    def __init__(self, corner: int) -> None:
        super().__init__()
        self.corner = corner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, :, : self.corner, : self.corner].mean(dim=1).sum(dim=(1, 2))
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def corner_model(corner: int = 2, size: int = 4) -> VizModel:
    """A two-class model whose occlusion map you can compute by hand (for checks and the exercise's warm-up).

    Class 0 ("corner") has the logit ``s`` = sum of the grey values in the top-left ``corner`` x ``corner``
    pixels, class 1 ("rest") the logit 0, so ``P(corner) = sigmoid(s)``. No normalization (mean 0, std 1).
    """
    return VizModel(
        name="corner",
        network=_CornerNet(corner),
        categories=["corner", "rest"],
        input_size=size,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )

