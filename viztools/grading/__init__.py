"""Graded exercises: ``build-exercises`` turns solutions into exercises and keys, ``grade`` marks notebooks.

See :mod:`viztools.grading.build`, :mod:`viztools.grading.grade` and, for writing check cells,
:mod:`viztools.grading.checks`.
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
