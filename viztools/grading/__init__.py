"""Graded exercises: ``viztools build-exercises`` turns solutions into exercises and keys, ``viztools grade`` marks.

Writing an exercise (``solutions/NN_name.ipynb`` is the single source; ``NN_name`` is the exercise id):

1. Notebook metadata ``"viztools": {"exercise": "NN_name", "version": 1, "title": "..."}``; bump ``version``
   when the checks change, so a student's older copy is reported as such.
2. Put the reference code of each task between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; students get
   ``# YOUR CODE HERE`` and ``raise NotImplementedError("<function> is not written yet: ...")`` instead. The
   student writes functions; only those functions are graded.
3. Where the library already does what the task asks, give the task's code cell the metadata
   ``"viztools": {"forbidden": ["viztools.occlusion.occlusion", ...]}`` and say so in the text: the grader reads
   the student's cells (``ast``, outside the kernel) and fails that task's checks when they use one of them.
4. After each task add visible check cells, for the students' self-testing: tag ``check`` and metadata
   ``"viztools": {"check": "check-...", "points": N}`` (the one place where points are set). A check starts with a
   comment saying what it checks and prints only verdict lines with :mod:`viztools.grading.checks` (``report``,
   ``report_close``, ``report_equal``). A check belongs to the task cell above it.
5. Write the hidden checks, which are the grade, in ``viztools/grading/hidden/NN_name.py``: one function per
   check id (``check-naive-corner`` -> ``def check_naive_corner(student, rng) -> list[str]``). Draw inputs the
   visible checks do not use from ``rng`` (a ``random.Random`` seeded per grading run), call the student's
   functions with ``student.call("name", *args).value`` (tensors, numbers, lists, and ``proxy.model("glyphnet")``
   for a model; ``count_passes=True`` records forward-pass batch sizes), compute the expected values in the check
   itself, and return the problems (``proxy.close``, ``proxy.equal``, ``proxy.require``; empty: passed). Say what
   is wrong and end with a hint. See ``hidden/03_occlusion.py``.
6. Run ``viztools build-exercises``: it executes the solution, refuses visible checks that fail or print anything
   but verdicts, requires a hidden check per check (and a check cell per hidden check), and writes
   ``exercises/NN_name.ipynb`` and ``viztools/grading/keys/NN_name.json``. Commit both; ``viztools
   build-exercises --check`` (run by the tests) fails while they are out of date. Add tests that the solution
   gets full marks, the blank exercise zero, and plausible wrong versions fail the check that names the mistake.

Grading (:func:`grade_notebook`; ``viztools grade PATH... [--jobs N] [--csv FILE] [--report FILE] [--shard I/N]``)
runs each notebook in a sandboxed kernel (:mod:`viztools.grading.sandbox`) and the hidden checks in the grader,
so nothing printed, patched or written in the notebook can change a score (:mod:`viztools.grading.grade`).
Grading runs on the CPU whatever the machine has (the kernel and the hidden checks load their models with
``device="cpu"``; the kernel sees no CUDA device), so a student's score is the same on every machine that grades it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule that defines it. Imported on first use (PEP 562), so that ``viztools --help`` and
# the ``viztools.grading.checks`` helpers a notebook imports do not load the whole grader (nbformat, torch).
_EXPORTS: dict[str, str] = {
    "AnswerKey": "answer_key",
    "CheckKey": "answer_key",
    "known_exercises": "answer_key",
    "load_key": "answer_key",
    "BuildError": "build",
    "build_exercises": "build",
    "check_sync": "build",
    "add_commands": "cli",
    "grade_notebook": "grade",
    "CheckResult": "report",
    "GradeReport": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"viztools.grading.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"viztools.grading.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"viztools.grading.{name}":
            raise
        raise AttributeError(f"module 'viztools.grading' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
