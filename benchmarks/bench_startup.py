"""Start-up time: `import viztools` and the `viztools` command against `import torch`, measured in one run.

    python benchmarks/bench_startup.py              # 7 rounds
    python benchmarks/bench_startup.py --rounds 11

Each case is a fresh Python process (so nothing is cached in memory but the OS file cache); one untimed warm-up
round fills that cache. Rounds are interleaved, so that load from other processes hits all cases alike, and the
table shows the median, best and worst wall-clock time per case and the median minus `import torch`'s.
Targets: `viztools --version` and `--help` under 0.5 s, `import viztools` within 1 s of `import torch`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path


def viztools_command() -> str:
    """The `viztools` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "viztools"
    found = str(beside) if beside.is_file() else shutil.which("viztools")
    if found is None:
        raise SystemExit("No `viztools` command found: install viztools (make install) first.")
    return found


def cases() -> dict[str, list[str]]:
    """Case name -> command line."""
    python, command = sys.executable, viztools_command()
    return {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import torch'": [python, "-c", "import torch"],
        "python -c 'import viztools'": [python, "-c", "import viztools"],
        "python -c 'import viztools.grading'": [python, "-c", "import viztools.grading"],
        "viztools --version": [command, "--version"],
        "viztools --help": [command, "--help"],
        "viztools info": [command, "info"],
    }


def measure(argv: list[str], env: dict[str, str]) -> float:
    """Wall-clock seconds of one run of ``argv``; a failing command stops the benchmark."""
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {result.returncode}:\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed runs of each case (default 7)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    commands = cases()
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_number in range(args.rounds + 1):
        for name, argv in commands.items():
            seconds = measure(argv, env)
            if round_number > 0:  # round 0 warms the file cache
                times[name].append(seconds)
        if round_number > 0:
            print(f"round {round_number}: " + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in commands),
                  flush=True)

    torch_median = statistics.median(times["python -c 'import torch'"])
    print(f"\nStart-up benchmark: medians of {args.rounds} fresh processes per case.")
    print(f"Python {platform.python_version()}, torch {version('torch')}, viztools {version('viztools')}, "
          f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, {os.cpu_count()} CPUs ({platform.machine()}); load average "
          f"{os.getloadavg()[0]:.1f} at the end. The CPU is shared: compare ratios, not seconds.\n")
    table = [("command", "median s", "best s", "worst s", "median - import torch")]
    for name, seconds in times.items():
        median = statistics.median(seconds)
        table.append((name, f"{median:.2f}", f"{min(seconds):.2f}", f"{max(seconds):.2f}",
                      f"{median - torch_median:+.2f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for number, row in enumerate(table):
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        print("| " + " | ".join(cells) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


if __name__ == "__main__":
    main()
