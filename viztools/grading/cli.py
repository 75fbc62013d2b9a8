"""The ``build-exercises`` and ``grade`` subcommands; ``viztools.cli`` adds them with :func:`add_commands`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The grading machinery (nbformat, pytest) is imported inside the subcommands, so that building the parser
# (for `viztools --help`) stays quick.

#: Exit codes of ``viztools grade``: every check passed / some check failed / a notebook could not be graded.
EXIT_PASSED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the timeout must be positive; got {text!r}")
    return value


def run_build_exercises(args: argparse.Namespace) -> int:
    """Generate exercises and keys, or with ``--check`` report drift (exit 1) without writing anything."""
    from viztools.grading.build import BuildError, build_exercises, check_sync
    from viztools.grading.notebooks import NotebookError

    try:
        if args.check:
            problems = check_sync(args.solutions, args.exercises, args.keys)
            for problem in problems:
                print(f"out of date: {problem}")
            if problems:
                print("Run `viztools build-exercises` and commit the result.")
                return 1
            print("Exercises and grading keys are in sync with the solutions.")
            return 0
        for path in build_exercises(args.solutions, args.exercises, args.keys):
            print(f"wrote {path}")
        return 0
    except (BuildError, NotebookError) as error:
        print(f"build-exercises: {error}", file=sys.stderr)
        return 2


def run_grade(args: argparse.Namespace) -> int:
    """Grade each notebook; print text (or ``--json``); exit 0 only when every check of every notebook passed."""
    from viztools.grading.grade import DEFAULT_CELL_TIMEOUT, grade_notebook
    from viztools.grading.report import report_as_json, report_as_text

    timeout = DEFAULT_CELL_TIMEOUT if args.timeout is None else args.timeout
    reports = [grade_notebook(path, key_dir=args.key, cell_timeout=timeout) for path in args.paths]
    if args.json:
        print(report_as_json(reports))
    else:
        print("\n\n".join(report_as_text(report) for report in reports))
    if any(report.status != "graded" for report in reports):
        return EXIT_ERROR
    return EXIT_PASSED if all(report.passed for report in reports) else EXIT_FAILED


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-exercises`` and ``grade`` to a ``viztools`` argument parser."""
    build = subparsers.add_parser(
        "build-exercises",
        help="generate exercises/ and the grading keys from solutions/",
        description="Generate exercises/NN_*.ipynb (solutions stubbed, outputs cleared) and the grading keys "
        "(check cells and the outputs the executed solution printed) from solutions/NN_*.ipynb.",
    )
    build.add_argument("--solutions", type=Path, default=Path("solutions"), metavar="DIR",
                       help="solution notebooks (default: %(default)s)")
    build.add_argument("--exercises", type=Path, default=Path("exercises"), metavar="DIR",
                       help="output folder (default: %(default)s)")
    build.add_argument("--keys", type=Path, default=None, metavar="DIR",
                       help="grading keys folder (default: viztools/grading/keys)")
    build.add_argument("--check", action="store_true", help="only report whether exercises and keys are up to date")
    build.set_defaults(run=run_build_exercises)

    grade = subparsers.add_parser(
        "grade",
        help="grade exercise notebooks",
        description="Grade notebooks against the exercise's grading key with nbval. The notebooks are not "
        "modified. Exit code 0: all checks passed; 1: some failed; 2: a notebook could not be graded.",
    )
    grade.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="notebook(s) to grade")
    grade.add_argument("--json", action="store_true", help="print a machine-readable report")
    grade.add_argument("--timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                       help="seconds each cell may run (default: 60)")
    grade.add_argument("--key", type=Path, default=None, metavar="DIR",
                       help="folder of grading keys (default: the built-in keys)")
    grade.set_defaults(run=run_grade)


def main(argv: list[str] | None = None) -> int:
    """``python -m viztools.grading``: the two subcommands without the rest of the viztools CLI."""
    parser = argparse.ArgumentParser(prog="python -m viztools.grading")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)
