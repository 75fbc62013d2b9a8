"""Run time of each lecture notebook, top to bottom on a fresh kernel, with and without ImageNet weights.

    python benchmarks/bench_lectures.py                       # every lecture, both models, 1 torch thread
    python benchmarks/bench_lectures.py 03 05 --threads 2
    python benchmarks/bench_lectures.py --models glyphnet

"ImageNet" runs with ``$VIZTOOLS_WEIGHTS_DIR`` as set (or ``../shared/weights`` beside the repository), so
``load_model("auto")`` picks the SqueezeNet weights found there; "GlyphNet" runs with an empty weights folder, as a
student without ImageNet weights would. Each run is a fresh kernel of this interpreter (nbclient), with
``OMP_NUM_THREADS`` set to the thread count. The table (markdown) is what docs/instructor.md quotes.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "lectures"


def imagenet_weights_dir() -> str | None:
    """The folder of ImageNet weights to use, or None when there is none."""
    candidates = [os.environ.get("VIZTOOLS_WEIGHTS_DIR", ""), str(ROOT.parent / "shared" / "weights")]
    return next((folder for folder in candidates if folder and any(Path(folder).glob("squeezenet*.pth"))), None)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_lecture(path: Path, weights_dir: str, threads: int, timeout: int) -> tuple[float, float]:
    """Execute one lecture in a fresh kernel: (wall-clock, kernel CPU) seconds. Raises if a cell fails.

    The kernel is a child process that ends with the run, so its CPU time (user + system) is known; on a loaded
    machine it is the steadier number, and on an idle one with 1 thread it is close to the wall-clock time.
    """
    notebook = nbformat.read(path, as_version=4)
    saved = {key: os.environ.get(key) for key in ("VIZTOOLS_WEIGHTS_DIR", "OMP_NUM_THREADS")}
    os.environ.update(VIZTOOLS_WEIGHTS_DIR=weights_dir, OMP_NUM_THREADS=str(threads))
    try:
        client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        start, cpu_start = time.perf_counter(), children_cpu_seconds()
        client.execute()
        return time.perf_counter() - start, children_cpu_seconds() - cpu_start
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lectures", nargs="*", help="lecture numbers (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS); default 1")
    parser.add_argument("--models", nargs="+", default=["imagenet", "glyphnet"], choices=["imagenet", "glyphnet"])
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args()

    paths = sorted(LECTURES.glob("[0-9][0-9]_*.ipynb"))
    if args.lectures:
        wanted = {number.zfill(2) for number in args.lectures}
        paths = [path for path in paths if path.name[:2] in wanted]
    imagenet = imagenet_weights_dir()
    models = [model for model in args.models if model == "glyphnet" or imagenet]
    if "imagenet" in args.models and not imagenet:
        print("No ImageNet weights found (set VIZTOOLS_WEIGHTS_DIR): GlyphNet only.")

    with tempfile.TemporaryDirectory() as empty:
        folders = {"imagenet": imagenet, "glyphnet": empty}
        rows = []
        for path in paths:
            times = {model: run_lecture(path, folders[model], args.threads, args.timeout) for model in models}
            rows.append((path.stem, times))
            print(f"  {path.stem}: " + ", ".join(f"{m} {wall:.0f} s (CPU {cpu:.0f} s)"
                                                 for m, (wall, cpu) in times.items()), flush=True)

    print(f"\nLecture run time, fresh kernel, {args.threads} torch thread(s), {platform.processor() or 'CPU'}, "
          f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f} at the end\n")
    names = {"imagenet": "ImageNet SqueezeNet", "glyphnet": "GlyphNet (no weights)"}
    print("| lecture | " + " | ".join(f"{names[m]}: wall | CPU" for m in models) + " |")
    print("|---|" + "---:|---:|" * len(models))
    for stem, times in rows:
        print(f"| {stem} | " + " | ".join(f"{times[m][0]:.0f} s | {times[m][1]:.0f} s" for m in models) + " |")
    totals = [[sum(times[m][i] for _, times in rows) / 60 for i in (0, 1)] for m in models]
    print("| all | " + " | ".join(f"{wall:.1f} min | {cpu:.1f} min" for wall, cpu in totals) + " |")


if __name__ == "__main__":
    main()
