"""Graded exercises: ``viztools build-exercises`` turns solutions into exercises and keys, ``viztools grade`` marks.

Writing an exercise (``solutions/NN_name.ipynb`` is the single source):

1. Notebook metadata ``"viztools": {"exercise": "NN_name", "version": 1, "title": "..."}``; bump ``version``
   when the checks change, so a student's older copy is reported as such.
2. Put the reference code of each task between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; students get
   ``# YOUR CODE HERE`` and ``raise NotImplementedError("<function> is not written yet: ...")`` instead.
3. After each task add check cells: tag ``check`` and metadata ``"viztools": {"check": "check-...",
   "points": N}``. A check starts with a comment saying what it checks, builds its own inputs (do not rely on
   variables a student may change), and prints only verdict lines with :mod:`viztools.grading.checks`
   (``report``, ``report_close``, ``report_equal``): ``"<what>: OK"`` or ``"<what>: WRONG - <why>"``.
4. Run ``viztools build-exercises``: it executes the solution, refuses checks that fail or print anything but
   verdicts, and writes ``exercises/NN_name.ipynb`` and ``viztools/grading/keys/NN_name.json``. Commit both;
   ``viztools build-exercises --check`` (run by the tests) fails while they are out of date.

Grading (:func:`grade_notebook`, ``viztools grade PATH... [--json] [--timeout S] [--key DIR]``) needs only the
keys, which ship with the package, never the solutions.
"""

from viztools.grading.answer_key import AnswerKey, CheckKey, known_exercises, load_key
from viztools.grading.build import BuildError, build_exercises, check_sync
from viztools.grading.cli import add_commands
from viztools.grading.grade import grade_notebook
from viztools.grading.report import CheckResult, GradeReport

__all__ = [
    "AnswerKey",
    "BuildError",
    "CheckKey",
    "CheckResult",
    "GradeReport",
    "add_commands",
    "build_exercises",
    "check_sync",
    "grade_notebook",
    "known_exercises",
    "load_key",
]
