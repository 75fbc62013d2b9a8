"""The ``build-exercises``, ``grade`` and ``gradebook`` subcommands; ``viztools.cli`` adds them with
:func:`add_commands`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from viztools.grading.sandbox import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_GB,
    DEFAULT_WALL_SECONDS,
)

# The grading machinery (nbformat, torch) is imported inside the subcommands; sandbox holds only the standard
# library and the defaults shown in --help.

#: Exit codes of ``viztools grade``: every check passed / some check failed / a notebook could not be graded.
EXIT_PASSED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2



def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def run_grade(args: argparse.Namespace) -> int:
    """Grade notebooks (in parallel with ``--jobs``); print a report or a class summary; write the gradebook.

    Exit 0 only when every check of every notebook passed, 1 when some failed, 2 when a notebook could not be graded.
    """
    import time

    from viztools.grading import classroom
    from viztools.grading.report import report_as_json, report_as_text
    from viztools.grading.sandbox import Limits

    try:
        paths = classroom.collect(args.paths)
        if args.shard:
            paths = classroom.shard(paths, *classroom.parse_shard(args.shard))
    except classroom.GradebookError as error:
        print(f"grade: {error}", file=sys.stderr)
        return EXIT_ERROR
    if not paths:
        print("grade: no notebooks to grade (no .ipynb files in the given folders, or an empty shard).",
              file=sys.stderr)
        return EXIT_ERROR
    options = classroom.Options(args.timeout, Limits(args.memory, args.processes, args.wall), args.seed)
    outputs = [Path(p).resolve().parent for p in (args.csv, args.report) if p]
    class_mode = len(paths) > 1 or args.csv or args.report
    finished: list = []
    started = time.monotonic()

    def on_result(report: object) -> None:
        finished.append(report)
        if args.csv:
            classroom.write_gradebook(finished, args.csv)
        if args.report:
            classroom.write_report(finished, args.report)
        if class_mode and not args.json:
            score = f"{report.score}/{report.max_score}" if report.status == "graded" else "ERROR"
            print(f"[{len(finished)}/{len(paths)}] {report.student}: {score}", flush=True)

    reports = classroom.grade_many(paths, options, jobs=args.jobs, hide=outputs, on_result=on_result)
    if args.json:
        print(report_as_json(reports))
    elif class_mode:
        print(classroom.summary(reports, time.monotonic() - started))
    else:
        print("\n\n".join(report_as_text(report) for report in reports))
    if any(report.status != "graded" for report in reports):
        return EXIT_ERROR
    return EXIT_PASSED if all(report.passed for report in reports) else EXIT_FAILED


def run_merge(args: argparse.Namespace) -> int:
    """Join shard gradebooks into one CSV."""
    from viztools.grading.classroom import GradebookError, merge_gradebooks

    try:
        count = merge_gradebooks(args.gradebooks, args.output)
    except (GradebookError, OSError) as error:
        print(f"gradebook merge: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {args.output} ({count} students)")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-exercises``, ``grade`` and ``gradebook`` to a ``viztools`` argument parser."""
    build = subparsers.add_parser(
        "build-exercises",
        help="generate exercises/ and the grading keys from solutions/",
        description="Generate exercises/NN_*.ipynb (solutions stubbed, outputs cleared) and the grading keys "
        "(points, tasks, off-limits calls) from solutions/NN_*.ipynb; the solution is run once to check that its "
        "visible checks pass, and every check needs a hidden check in viztools/grading/hidden/.",
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
        help="grade exercise notebooks (one, or a whole class in parallel)",
        description="Grade notebooks with the exercise's hidden checks. Each notebook runs in its own sandboxed "
        "kernel (a private folder, memory, process and time limits; bubblewrap where it works) and is never "
        "modified. Exit code 0: all checks passed; 1: some failed; 2: a notebook could not be graded.",
    )
    grade.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                       help="notebooks, or folders searched for .ipynb files")
    grade.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                       help="notebooks graded at the same time (default: %(default)s)")
    grade.add_argument("--csv", type=Path, default=None, metavar="FILE",
                       help="gradebook: one row per student, points per check, total, error (rewritten as "
                       "results arrive)")
    grade.add_argument("--report", type=Path, default=None, metavar="FILE",
                       help="JSON report with every check's feedback per student (rewritten as results arrive)")
    grade.add_argument("--json", action="store_true", help="print the machine-readable report instead of text")
    grade.add_argument("--shard", default=None, metavar="I/N",
                       help="grade only the I-th of N deterministic parts of the sorted notebooks")
    grade.add_argument("--timeout", type=_positive_number, default=DEFAULT_CELL_TIMEOUT, metavar="SECONDS",
                       help="seconds each cell and each call of a student's function may run (default: %(default)g)")
    grade.add_argument("--wall", type=_positive_number, default=DEFAULT_WALL_SECONDS, metavar="SECONDS",
                       help="seconds one notebook's whole grading may take (default: %(default)g)")
    grade.add_argument("--memory", type=_positive_number, default=DEFAULT_MEMORY_GB, metavar="GB",
                       help="address-space limit of a kernel in GB (default: %(default)g; torch alone maps ~3.2)")
    grade.add_argument("--processes", type=_positive_int, default=DEFAULT_MAX_PROCESSES, metavar="N",
                       help="processes and threads a kernel may run (default: %(default)s)")
    grade.add_argument("--seed", type=int, default=None, metavar="N",
                       help="seed of the hidden checks' inputs (default: a fresh one per notebook, in the report)")
    grade.set_defaults(run=run_grade)

    gradebook = subparsers.add_parser("gradebook", help="work with gradebook CSV files",
                                      description="Work with the CSV gradebooks written by 'viztools grade --csv'.")
    actions = gradebook.add_subparsers(dest="action", required=True, metavar="ACTION")
    merge = actions.add_parser("merge", help="join the gradebooks of shards into one",
                               description="Join gradebooks written by 'viztools grade --shard I/N --csv ...' into "
                               "one CSV (columns united, rows sorted by student; shards must not overlap).")
    merge.add_argument("gradebooks", nargs="+", type=Path, metavar="CSV", help="the shard gradebooks")
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="CSV", help="the merged gradebook")
    merge.set_defaults(run=run_merge)


def main(argv: list[str] | None = None) -> int:
    """``python -m viztools.grading``: the grading subcommands without the rest of the viztools CLI."""
    parser = argparse.ArgumentParser(prog="python -m viztools.grading")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)
