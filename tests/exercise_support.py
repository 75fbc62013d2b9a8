"""Running an exercise's hidden checks in this process, against its solution or a wrong variant of it.

The grader runs a student's functions in a sandboxed kernel; for the exercise tests the same hidden checks call
functions of a local namespace through :class:`LocalStudent`, which treats arguments and results as the kernel
does (a ``torch.save`` / ``torch.load(weights_only=True)`` round trip, model specs built with the kernel's own
code, exceptions turned into :class:`~viztools.grading.proxy.StudentError`).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import nbformat
import torch

from viztools.grading import _kernel
from viztools.grading.proxy import Returned, StudentError, hidden_checks

REPO = Path(__file__).resolve().parents[1]


class LocalStudent:
    """The grader's ``Student`` proxy, calling functions of ``namespace`` the way the kernel calls them."""

    def __init__(self, namespace: dict) -> None:
        self.namespace, self.models, self.check = namespace, {}, ""

    def call(self, function: str, *args: object, count_passes: bool = False, **kwargs: object) -> Returned:
        inputs = _round_trip({"args": list(args), "kwargs": kwargs})
        args = [_kernel.Kernel.model(self, a) if isinstance(a, dict) and "model" in a else a for a in inputs["args"]]
        try:
            result = self.namespace[function](*args, **inputs["kwargs"])
        except Exception as error:
            raise StudentError(function, _kernel._error(error)) from error
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        returned = _round_trip({"result": _kernel._plain(result), "tensor_args": _kernel._plain(tensors)})
        return Returned(returned["result"], returned["tensor_args"], None)


def _round_trip(value: object) -> object:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def solution_cells(exercise: str) -> dict[str, str]:
    """``{cell id: source}`` of the code cells of ``solutions/<exercise>.ipynb``."""
    notebook = nbformat.read(REPO / "solutions" / f"{exercise}.ipynb", as_version=4)
    return {cell.id: cell.source for cell in notebook.cells if cell.cell_type == "code"}


def solution_namespace(
    exercise: str,
    *,
    replace: dict[str, object] | None = None,
    edits: dict[str, list[tuple[str, str]]] | None = None,
    namespace: dict | None = None,
) -> dict:
    """The solution's ``task-*`` and ``helper-*`` cells run in a fresh namespace (``namespace`` gives its starting
    names); ``edits`` applies ``(old, new)`` text changes to named cells first (a wrong variant), ``replace``
    overrides functions afterwards."""
    namespace = {"torch": torch, **(namespace or {})}
    edits = dict(edits or {})
    for cell_id, source in solution_cells(exercise).items():
        if cell_id.startswith(("task-", "helper-")):
            for old, new in edits.pop(cell_id, []):
                assert old in source, f"the solution's cell {cell_id} no longer contains {old!r}"
                source = source.replace(old, new)
            exec(compile(source, f"<{cell_id}>", "exec"), namespace)  # our own solution notebook
    assert not edits, f"no such task cells: {sorted(edits)}"
    namespace.update(replace or {})
    return namespace


def run_hidden_check(exercise: str, check: str, namespace: dict, seed: int = 0) -> list[str]:
    """The problems hidden check ``check`` (an id such as ``check-step``) finds in ``namespace``'s functions."""
    student = LocalStudent(namespace)
    student.check = check
    return hidden_checks(exercise)[check.replace("-", "_")](student, random.Random(f"{seed}:{check}"))
