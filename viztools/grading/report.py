"""What ``viztools grade`` reports: per-check results, problems in the student's cells, notes and the score."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

REPORT_FORMAT = 2
#: Check statuses. "failed": the student's function returned wrong values; "error": it raised; "timeout": it did
#: not return in time; "forbidden": the task's code uses an off-limits library call; "not-run": no hidden check.
CHECK_STATUSES = ("passed", "failed", "error", "timeout", "forbidden", "not-run")
#: Printed with every graded report, so students know what counts.
HOW_GRADED = ("Graded by hidden checks: the grader calls your functions on inputs you have not seen and compares "
              "the results outside your notebook. The check cells in the notebook (and anything printed) do not "
              "count, so copying or editing them changes nothing.")


@dataclass
class CheckResult:
    """The outcome of one check (``status`` is one of :data:`CHECK_STATUSES`)."""

    id: str
    title: str
    points: int
    score: int
    status: str
    feedback: str


@dataclass
class CellProblem:
    """A student cell (``cell``: 1-based among the notebook's code cells) that raised or timed out."""

    cell: int
    first_line: str
    status: str
    feedback: str


@dataclass
class GradeReport:
    """The grading of one notebook; ``status`` is "graded", or "error" when it could not be graded (no score)."""

    path: str
    status: str
    student: str = ""
    exercise: str | None = None
    exercise_version: int | None = None
    score: int = 0
    max_score: int = 0
    checks: list[CheckResult] = field(default_factory=list)
    cell_problems: list[CellProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    message: str | None = None
    exit_status: int | None = None
    seed: int | None = None
    seconds: float = 0.0
    cpu_seconds: float | None = None  # grader and kernel CPU time, for sizing a class (the kernel's part is its word)

    @property
    def passed(self) -> bool:
        """True when the notebook was graded and every check passed."""
        return self.status == "graded" and bool(self.checks) and all(c.status == "passed" for c in self.checks)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> GradeReport:
        """The inverse of :meth:`to_dict`."""
        data = {k: v for k, v in data.items() if k != "passed"}
        data["checks"] = [CheckResult(**c) for c in data.get("checks", [])]
        data["cell_problems"] = [CellProblem(**p) for p in data.get("cell_problems", [])]
        return cls(**data)


def report_as_json(reports: list[GradeReport]) -> str:
    """The machine-readable report of ``viztools grade --json``: ``{"format": 2, "results": [...]}``."""
    return json.dumps({"format": REPORT_FORMAT, "results": [r.to_dict() for r in reports]}, indent=2)


_LABELS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "timeout": "TIMEOUT", "forbidden": "FORBID",
           "not-run": "NOT RUN"}


def report_as_text(report: GradeReport) -> str:
    """Per-check PASS/FAIL lines with feedback, the student's failing cells, notes, and the score."""
    header = f"Grading {report.path}"
    if report.exercise:
        header += f" (exercise {report.exercise}, version {report.exercise_version})"
    lines = [header]
    if report.status != "graded":
        lines.append(f"  Could not grade (a grading error, not a score): {report.message}")
        return "\n".join(lines)
    width = max((len(c.id) for c in report.checks), default=0)
    for check in report.checks:
        lines.append(f"  {_LABELS[check.status]:<7} {check.id:<{width}}  {check.score}/{check.points}  {check.title}")
        if check.status != "passed":
            lines += [f"          {line}" for line in check.feedback.splitlines()]
    if report.cell_problems:
        lines.append("  Problems in your cells:")
        for problem in report.cell_problems:
            lines.append(f"    code cell {problem.cell} (`{problem.first_line}`): {problem.status}")
            lines += [f"      {line}" for line in problem.feedback.splitlines()]
    lines += [f"  Note: {note}" for note in report.notes]
    lines.append(f"  {HOW_GRADED}")
    passed = sum(c.status == "passed" for c in report.checks)
    lines.append(f"  Score: {report.score}/{report.max_score} points ({passed} of {len(report.checks)} checks passed)")
    return "\n".join(lines)
