"""Grading a class: many notebooks in parallel, a gradebook (CSV and JSON) written as results arrive, a summary.

Each notebook is graded in its own process (forked from this one, so torch and viztools are imported once), and
its kernel in its own sandbox. Only this parent process writes results: after every finished notebook it rewrites
the CSV gradebook and the JSON report atomically (a temporary file renamed into place), so a run that is stopped
keeps every result that was finished. A grading process that dies, or overruns its time, is a row with an error.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from viztools.grading.report import REPORT_FORMAT, GradeReport
from viztools.grading.sandbox import Limits, kill_marked, new_marker

#: Extra seconds a grading process gets beyond its notebook's wall-clock budget (start-up, reference values).
PROCESS_SLACK = 120.0
FIXED_COLUMNS = ["student", "file", "exercise", "status"]
TAIL_COLUMNS = ["total", "max", "error"]


class GradebookError(ValueError):
    """A shard spec or gradebook that cannot be used; the message says why."""


def collect(paths: Iterable[str | Path]) -> list[Path]:
    """The notebooks named by ``paths`` (folders are searched recursively; checkpoints skipped), sorted, unique."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found |= {p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}
        else:
            found.add(path)
    return sorted(found, key=lambda p: str(p))


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``1 <= i <= n``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise GradebookError(f"--shard takes i/n, such as 2/8; got {text!r}.") from None
    if not 1 <= index <= count:
        raise GradebookError(f"--shard i/n needs 1 <= i <= n; got {text!r}.")
    return index, count


def shard(paths: list[Path], index: int, count: int) -> list[Path]:
    """The ``index``-th of ``count`` shards (1-based) of the sorted paths: every count-th path, deterministic."""
    return sorted(paths, key=lambda p: str(p))[index - 1 :: count]


def student_ids(paths: list[Path]) -> dict[Path, str]:
    """A student id per notebook: its file name without ``.ipynb``, with the folder when two names collide."""
    stems = Counter(path.stem for path in paths)
    return {path: path.stem if stems[path.stem] == 1 else f"{path.parent.name}/{path.stem}" for path in paths}


@dataclass
class Options:
    """How each notebook is graded."""

    cell_timeout: float
    limits: Limits
    seed: int | None = None


def _grade_child(connection: Connection, path: Path, options: Options, marker: str, hide: list[Path]) -> None:
    """In the forked grading process: grade one notebook and send its report."""
    from viztools.grading.grade import grade_notebook

    os.setsid()
    report = grade_notebook(path, cell_timeout=options.cell_timeout, limits=options.limits, seed=options.seed,
                            hide=hide, marker=marker)
    connection.send(report.to_dict())
    connection.close()


def _warm_up() -> None:
    """Import the grader, IPython's cell transformer and GlyphNet once here, so that no forked process pays."""
    from viztools.grading import grade, static
    from viztools.models import load_model

    static.to_python("%matplotlib inline")
    load_model("glyphnet", quiet=True, device="cpu")  # grading runs on the CPU (no GPU context before the fork)
    del grade


def _error_report(path: Path, message: str, exit_status: int | None) -> GradeReport:
    return GradeReport(path=str(path), status="error", message=message, exit_status=exit_status)


def grade_many(paths: list[Path], options: Options, *, jobs: int = 1, hide: Iterable[Path] = (),
               on_result: Callable[[GradeReport], None] | None = None) -> list[GradeReport]:
    """Grade ``paths`` with up to ``jobs`` processes; ``on_result`` sees each report as it finishes (in order of
    finishing); returns the reports in the order of ``paths``."""
    _warm_up()
    ids = student_ids(paths)
    hide = [*hide, *{path.resolve().parent for path in paths}]
    context = multiprocessing.get_context("fork")
    pending = list(paths)
    running: dict[object, tuple[Path, multiprocessing.Process, Connection, str, float]] = {}
    results: dict[Path, GradeReport] = {}
    limit = options.limits.wall_seconds + PROCESS_SLACK
    while pending or running:
        while pending and len(running) < max(1, jobs):
            path = pending.pop(0)
            receive, send = context.Pipe(duplex=False)
            marker = new_marker()
            process = context.Process(target=_grade_child, args=(send, path, options, marker, hide), daemon=True)
            process.start()
            send.close()
            running[process.sentinel] = (path, process, receive, marker, time.monotonic())
        ready = wait(list(running), timeout=1.0)
        now = time.monotonic()
        for sentinel in list(running):
            path, process, receive, marker, started = running[sentinel]
            if sentinel not in ready and now - started < limit:
                continue
            report = None
            with contextlib.suppress(EOFError, OSError):
                if receive.poll():
                    report = GradeReport.from_dict(receive.recv())
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
            kill_marked(marker)  # a kernel the dead process left behind
            if report is None:
                status = process.exitcode
                reason = (f"took longer than {limit:g} s and was stopped" if now - started >= limit
                          else f"ended abnormally (exit status {status})")
                report = _error_report(path, f"the grading process {reason}; no score.", status)
            report.student = ids[path]
            results[path] = report
            receive.close()
            del running[sentinel]
            if on_result is not None:
                on_result(report)
    return [results[path] for path in paths]


# --------------------------------------------------------------------------------------------------------------
# Gradebook
# --------------------------------------------------------------------------------------------------------------


def check_columns(reports: list[GradeReport]) -> list[tuple[str, str, str]]:
    """``(exercise, check id, column name)`` per graded check; names are check ids, prefixed when exercises mix."""
    seen: dict[tuple[str, str], None] = {}
    for report in reports:
        for check in report.checks:
            seen[(report.exercise or "", check.id)] = None
    exercises = {exercise for exercise, _ in seen}
    return [(exercise, check, check if len(exercises) == 1 else f"{exercise}/{check}") for exercise, check in seen]


def gradebook_rows(reports: list[GradeReport]) -> tuple[list[str], list[dict[str, str]]]:
    """The CSV header and one row per student: per-check points, total, max; an error row has no points."""
    columns = check_columns(reports)
    header = [*FIXED_COLUMNS, *(name for _, _, name in columns), *TAIL_COLUMNS]
    rows = []
    for report in sorted(reports, key=lambda r: (r.student, r.path)):
        row = {"student": report.student, "file": report.path, "exercise": report.exercise or "",
               "status": report.status, "total": "", "max": str(report.max_score or ""), "error": ""}
        scores = {(report.exercise or "", check.id): check.score for check in report.checks}
        for exercise, check, name in columns:
            graded = report.status == "graded" and (exercise, check) in scores
            row[name] = str(scores[(exercise, check)]) if graded else ""
        if report.status == "graded":
            row["total"] = str(report.score)
        else:
            row["error"] = (report.message or "could not be graded").splitlines()[0]
        rows.append(row)
    return header, rows


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)
    os.replace(temporary, path)


def _csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_gradebook(reports: list[GradeReport], path: Path) -> None:
    """Write the CSV gradebook atomically."""
    _write_atomically(path, _csv_text(*gradebook_rows(reports)))


def write_report(reports: list[GradeReport], path: Path) -> None:
    """Write the JSON report (every check's feedback, per student) atomically."""
    data = {"format": REPORT_FORMAT, "results": [r.to_dict() for r in sorted(reports, key=lambda r: r.student)]}
    _write_atomically(path, json.dumps(data, indent=2) + "\n")


def merge_gradebooks(sources: list[Path], output: Path) -> int:
    """Join shard CSVs into one (columns united, rows sorted by student); returns the number of rows."""
    header: list[str] = []
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for source in sources:
        with source.open(encoding="utf-8", newline="") as stream:
            reader = csv.DictReader(stream)
            if not reader.fieldnames or not set(FIXED_COLUMNS + TAIL_COLUMNS) <= set(reader.fieldnames):
                raise GradebookError(f"{source} is not a viztools gradebook (its header lacks "
                                     f"{', '.join(FIXED_COLUMNS + TAIL_COLUMNS)}).")
            header += [name for name in reader.fieldnames if name not in header]
            for row in reader:
                key = (row["student"], row["file"])
                if key in rows:
                    raise GradebookError(f"{source}: {row['student']} ({row['file']}) is also in another gradebook; "
                                         "shards must not overlap.")
                rows[key] = row
    checks = [name for name in header if name not in FIXED_COLUMNS + TAIL_COLUMNS]
    header = [*FIXED_COLUMNS, *checks, *TAIL_COLUMNS]
    ordered = [{name: row.get(name, "") for name in header} for _, row in sorted(rows.items())]
    _write_atomically(output, _csv_text(header, ordered))
    return len(ordered)


def summary(reports: list[GradeReport], seconds: float | None = None) -> str:
    """A few lines for the terminal: counts, a score histogram, the checks most often failed."""
    graded = [r for r in reports if r.status == "graded"]
    lines = [f"{len(reports)} notebooks: {len(graded)} graded, {len(reports) - len(graded)} grading errors"
             + (f" in {seconds:.0f} s" if seconds is not None else "")]
    if graded:
        most = max(r.max_score for r in graded)
        counts = Counter(r.score for r in graded)
        width = max(counts.values())
        lines.append("Scores:")
        for score in range(most + 1):
            bar = "#" * round(30 * counts[score] / width) if counts[score] else ""
            lines.append(f"  {score:>3}/{most}  {counts[score]:>4}  {bar}")
        failed = Counter(c.id for r in graded for c in r.checks if c.status != "passed")
        if failed:
            lines.append("Checks most often failed:")
            lines += [f"  {check}: {count} of {len(graded)}" for check, count in failed.most_common(5)]
    errors = [r for r in reports if r.status != "graded"]
    if errors:
        lines.append("Grading errors (no score; look at these by hand):")
        lines += [f"  {r.student or r.path}: {(r.message or '').splitlines()[0][:300]}" for r in errors[:10]]
    return "\n".join(lines)
