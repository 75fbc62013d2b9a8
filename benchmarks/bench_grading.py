"""Grading speed: start-up, one notebook (solution, blank), and a class of copies graded with ``--jobs``.

    OMP_NUM_THREADS=1 python benchmarks/bench_grading.py                 # a class of 10, --jobs 2
    OMP_NUM_THREADS=1 python benchmarks/bench_grading.py --class-size 20 --jobs 2

Cases: a fresh ``python -c 'import viztools.grading.grade'`` (the grader's start-up); starting a sandboxed kernel
until it is ready (it loads torch first); grading the solution and the blank exercise of 03 in this process; and
``viztools grade FOLDER --jobs N --csv ...`` on a class of copies (half solutions, half blanks), as a fresh command.
The class time per notebook, times 100, estimates a class of 100 (target: under 10 minutes on 2 cores); on a
shared machine the CPU time of each notebook's grader and kernel processes (``cpu_seconds`` in the report), summed
and divided by the cores used, is the steadier estimate (it leaves out the command's own start-up, once per class).
Kernels always run with one torch thread; the table says how many threads the grader itself used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from viztools.grading.grade import grade_notebook
from viztools.grading.kernel import StudentKernel
from viztools.grading.sandbox import Limits, isolation_summary, make_scratch

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "03_occlusion.ipynb"
BLANK = REPO / "exercises" / "03_occlusion.ipynb"
TARGET_CLASS, TARGET_SECONDS = 100, 600.0


def fresh_import() -> float:
    """Seconds for a fresh interpreter to import the grader."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import viztools.grading.grade"], check=True)
    return time.perf_counter() - start


def kernel_start() -> float:
    """Seconds from starting a sandboxed kernel to its ready message."""
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as folder:
        scratch, ids = make_scratch(Path(folder))
        start = time.perf_counter()
        with StudentKernel(scratch, ids, limits=Limits(), hide=[], log=Path(folder) / "log") as kernel:
            kernel.wait_ready(120)
            return time.perf_counter() - start


def grade_once(path: Path) -> tuple[float, str]:
    """Seconds to grade ``path`` in this process, and its score."""
    start = time.perf_counter()
    report = grade_notebook(path, seed=0)
    seconds = time.perf_counter() - start
    if report.status != "graded":
        raise SystemExit(f"{path} could not be graded: {report.message}")
    return seconds, f"{report.score}/{report.max_score}"


def grade_class(size: int, jobs: int) -> tuple[float, float, str]:
    """Wall seconds of `viztools grade` on ``size`` copies (half solutions) with ``jobs`` processes, the CPU seconds
    of their grading and kernel processes (from the report), and its summary line."""
    command = Path(sys.executable).parent / "viztools"
    with tempfile.TemporaryDirectory(prefix="bench-class-") as folder:
        submissions = Path(folder) / "class"
        submissions.mkdir()
        for index in range(size):
            shutil.copy(SOLUTION if index % 2 == 0 else BLANK, submissions / f"student{index:03d}.ipynb")
        report = Path(folder) / "report.json"
        start = time.perf_counter()
        result = subprocess.run([str(command), "grade", str(submissions), "--jobs", str(jobs), "--csv",
                                 str(Path(folder) / "gradebook.csv"), "--report", str(report)],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        summary = next((line for line in result.stdout.splitlines() if " notebooks: " in line), result.stderr[-200:])
        cpu = sum(r.get("cpu_seconds") or 0.0 for r in json.loads(report.read_text())["results"])
    return seconds, cpu, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--class-size", type=int, default=10, help="notebooks in the class run (default: 10)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel gradings in the class run (default: 2)")
    args = parser.parse_args()

    rows = [("grader start-up: fresh `import viztools.grading.grade`", fresh_import(), "")]
    rows.append(("sandboxed kernel: start until ready (loads torch)", kernel_start(), ""))
    for name, path in (("solution", SOLUTION), ("blank exercise", BLANK)):
        seconds, score = grade_once(path)
        rows.append((f"one notebook, in-process: 03 {name}", seconds, score))
    seconds, cpu, summary = grade_class(args.class_size, args.jobs)
    rows.append((f"class of {args.class_size} (half solutions), `viztools grade --jobs {args.jobs}`", seconds,
                 summary))
    rows.append(("  per notebook: wall time / size", seconds / args.class_size, ""))
    rows.append(("  per notebook: CPU time (its grader and kernel processes)", cpu / args.class_size, ""))
    for what, estimate in (("wall time", seconds / args.class_size * TARGET_CLASS),
                           (f"CPU time on {args.jobs} idle cores", cpu / args.class_size * TARGET_CLASS / args.jobs)):
        verdict = "meets" if estimate < TARGET_SECONDS else "misses"
        rows.append((f"  {TARGET_CLASS} notebooks, extrapolated from {what}", estimate,
                     f"{verdict} the {TARGET_SECONDS / 60:.0f}-minute target"))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Grading speed: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load:.1f}; torch {torch.__version__}; grader threads {torch.get_num_threads()}, kernels 1 thread; "
          f"isolation: {isolation_summary()}")
    print()
    print("| case | seconds | result |")
    print("|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value:.1f} | {note} |")


if __name__ == "__main__":
    main()
