"""The narrow proxy and helpers of hidden checks, the grader's own tests, which never run in the student's kernel.

``viztools/grading/hidden/<exercise>.py`` (a plain folder, not a package; the kernel's sandbox hides it) defines
one function per check of the solution, named after the check id (``check-naive-corner`` ->
``check_naive_corner``)::

    def check_naive_corner(student: Student, rng: random.Random) -> list[str]:
        image = ...                                            # inputs the visible checks do not use
        got = student.call("occlusion_naive", MODEL, image, 3).value
        return close("grey patch", got, reference(image))     # [] when right, else one line per problem

``student.call`` runs the student's function in their kernel and returns what it returned (tensors, numbers,
lists). Expected values are computed here, from the grader's own copy of the library; the kernel never sees them.
A student function that raises or times out ends the check with feedback made by the grader.
"""

from __future__ import annotations

import functools
import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from viztools.grading.answer_key import EXERCISE_NAME
from viztools.grading.checks import close_problem
from viztools.grading.kernel import CallTimeoutError, Reply, StudentKernel
from viztools.models import VizModel

HIDDEN_DIR = Path(__file__).parent / "hidden"

#: A check: (student, rng) -> problem lines (empty: passed).
HiddenCheck = Callable[["Student", random.Random], list[str]]


def model(name: str, **options: object) -> dict:
    """An argument that the kernel turns into ``load_model(name, device="cpu")`` (``checks.corner_model(...)`` for
    "corner")."""
    return {"model": name, **options}


@functools.cache
def reference_model(name: str = "glyphnet", **options: object) -> VizModel:
    """The model a hidden check computes its own expected values with: ``load_model(name, device="cpu")``, as the
    kernel loads the student's, so a score does not depend on the machine that grades it. Loaded once per grader
    process (the grader's reference code never changes a model; students' code never sees this one)."""
    from viztools.models import load_model

    return load_model(name, quiet=True, device="cpu", **options)


class StudentError(Exception):
    """The student's function raised; ``error`` is the kernel's description (type, message, frames)."""

    def __init__(self, function: str, error: dict) -> None:
        super().__init__(f"{error.get('type')}: {error.get('message')}")
        self.function, self.error = function, error


class StudentTimeoutError(Exception):
    """The student's function did not return in time (or timed out earlier in this grading)."""


@dataclass
class Returned:
    """What one call gave: the return value, the tensor arguments after the call, the forward-pass batch sizes."""

    value: object
    tensor_args: list
    passes: list[int] | None


class Student:
    """The narrow proxy a hidden check gets: it can only call the student's functions by name."""

    def __init__(self, kernel: StudentKernel, timeout: float) -> None:
        self._kernel, self._timeout = kernel, timeout
        self.check = ""  # the check now calling, for messages
        self.timed_out: dict[str, str] = {}

    def call(self, function: str, *args: object, count_passes: bool = False, **kwargs: object) -> Returned:
        """Call the student's ``function(*args, **kwargs)`` in their kernel; raises StudentError / StudentTimeoutError.

        Arguments are tensors, numbers, strings, lists and :func:`model` specs. With ``count_passes`` the batch
        size of every forward pass through a model argument is recorded.
        """
        if function in self.timed_out:
            raise StudentTimeoutError(f"not run: {function} did not finish within {self._timeout:g} s in check "
                                  f"{self.timed_out[function]!r}")
        try:
            reply, loaded = self._kernel.call(function, list(args), kwargs, count_passes=count_passes,
                                              timeout=self._timeout, what=f"check {self.check!r} called {function}")
        except CallTimeoutError:
            self.timed_out[function] = self.check
            raise StudentTimeoutError(f"{function} did not finish within {self._timeout:g} s (is there an endless "
                                  "loop, or a very slow one?)") from None
        return _returned(function, reply, loaded)


def _returned(function: str, reply: Reply, loaded: dict | None) -> Returned:
    if reply.error is not None or loaded is None:
        raise StudentError(function, reply.error or {"type": "Error", "message": "no result", "frames": []})
    tensor_args = loaded.get("tensor_args")
    return Returned(loaded.get("result"), tensor_args if isinstance(tensor_args, list) else [], reply.passes)


def describe(value: object) -> str:
    """A short description of a returned value for feedback."""
    if value is None:
        return "None (does your function end with `return ...`?)"
    if isinstance(value, dict) and "__unsupported__" in value:
        return f"a {value['__unsupported__']} (return a tensor, a list or a number)"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{value!r}" if len(repr(value)) < 80 else f"a {type(value).__name__}"


def close(what: str, got: object, expected: torch.Tensor, *, atol: float = 1e-4, rtol: float = 0.0) -> list[str]:
    """``[]`` when ``got`` has ``expected``'s shape and values within ``atol + rtol*|expected|``, else the problem."""
    if isinstance(got, dict):
        return [f"{what}: expected a tensor of shape {tuple(expected.shape)}, got {describe(got)}"]
    problem = close_problem(got, expected, atol=atol, rtol=rtol)
    return [] if problem is None else [f"{what}: {problem}"]


def close_or_hint(what: str, got: object, expected: torch.Tensor, mistakes: list[tuple[torch.Tensor, str]], hint: str,
                  *, atol: float = 1e-4, rtol: float = 0.0) -> list[str]:
    """``close``, plus a hint when it fails: the text of the first known mistake whose result (``mistakes``: the
    expected value computed the wrong way, and what went wrong) ``got`` matches, else the general ``hint``."""
    problems = close(what, got, expected, atol=atol, rtol=rtol)
    if not problems:
        return []
    named = next((text for variant, text in mistakes
                  if isinstance(got, (torch.Tensor, float, int)) and not close("", got, variant, atol=atol, rtol=rtol)),
                 None)
    return [*problems, f"Hint: {named or hint}"]


def equal(what: str, got: object, expected: object) -> list[str]:
    """``[]`` when ``got`` equals ``expected`` (tuples, ranges and lists of ints compare as lists)."""
    if isinstance(got, torch.Tensor) and got.dim() <= 1:
        got = got.tolist()
    normalized = list(got) if isinstance(got, (tuple, range)) else got
    target = list(expected) if isinstance(expected, (tuple, range)) else expected
    return [] if normalized == target else [f"{what}: expected {target!r}, got {describe(normalized)}"]


def require(what: str, ok: bool, problem: str) -> list[str]:
    """``[]`` when ``ok``, else ``["<what>: <problem>"]``."""
    return [] if ok else [f"{what}: {problem}"]


def hidden_checks(exercise: str, folder: Path = HIDDEN_DIR) -> dict[str, HiddenCheck]:
    """The hidden checks of ``exercise`` by function name (``-`` in the check id as ``_``), from ``folder``."""
    if not EXERCISE_NAME.match(exercise):
        raise ValueError(f"{exercise!r} is not an exercise name (two digits, an underscore, lower-case words).")
    path = folder / f"{exercise}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No hidden checks for exercise {exercise!r} ({path} is missing).")
    spec = importlib.util.spec_from_file_location(f"viztools_hidden_checks_{exercise}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: getattr(module, name) for name in dir(module)
            if name.startswith("check_") and callable(getattr(module, name))}


def function_name(check_id: str) -> str:
    """The hidden check function of a check id: ``check-naive-corner`` -> ``check_naive_corner``."""
    return check_id.replace("-", "_")
