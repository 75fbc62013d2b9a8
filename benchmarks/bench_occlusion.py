"""Occlusion heatmap time: viztools (each method) against Captum's Occlusion, measured in one run.

    python benchmarks/bench_occlusion.py            # full run (Captum's default perturbations_per_eval=1 too)
    python benchmarks/bench_occlusion.py --quick    # skip the two slow one-image-at-a-time rows

Model: ImageNet SqueezeNet 1.0 at 224 px, window 15, stride 8 when the shared weights are present
(/work/shared/weights/squeezenet1_0_imagenet_fp16.pth or $VIZTOOLS_TEST_WEIGHTS), else GlyphNet at 64 px,
window 12, stride 4. Both libraries compute the same thing: the target-class probability, grey (0.5) patches in
pixel space, Captum's patch positions (viztools ``edges="clip"``), heatmap = mean drop over the covering patches.

Every case runs once per round, rounds interleaved so that load from other processes hits all cases alike; the
one-image-at-a-time cases (Captum's default, viztools' naive loop) run in the first round only. The table shows
the best wall-clock and CPU time per case, speed-ups against Captum's fastest setting and its default, and the
largest heatmap difference from Captum's fastest setting.

One torch thread by default (``--threads``): on a CPU shared with other work, OpenMP threads wait for each other
at every operation, which inflates wall-clock times erratically, most for the many small operations of the
incremental method (on an idle machine two threads run it about 1.8x faster than one).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import viztools
from viztools.occlusion import occlusion, occlusion_coarse_to_fine, patch_starts

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "squeezenet1_0_imagenet_fp16.pth"


def load_case() -> tuple[viztools.VizModel, torch.Tensor, int, int, str]:
    """Model, image, window, stride and a description."""
    path = Path(os.environ.get("VIZTOOLS_TEST_WEIGHTS", SHARED_WEIGHTS))
    if path.is_file():
        model = viztools.load_model("squeezenet1_0", weights=path)
        return model, model.preprocess("cat"), 15, 8, "ImageNet SqueezeNet 1.0, chelsea 224 px"
    model = viztools.load_model("glyphnet")
    images, _ = viztools.make_glyphworld(1, seed=0)
    return model, images, 12, 4, "GlyphNet, a GlyphWorld image of 64 px (the shared ImageNet weights are absent)"


@dataclass
class Case:
    name: str
    run: Callable[[], torch.Tensor | None]
    slow: bool = False
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    heatmap: torch.Tensor | None = None

    def measure(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.heatmap = self.run()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip Captum's default and viztools' naive loop")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the fast cases (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from captum.attr import Occlusion

    model, image, window, stride, description = load_case()
    target = model.resolve_target(None, image)

    def probability(pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(pixels), dim=1)[:, target]

    def captum(batch: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            attribution = Occlusion(probability).attribute(
                image, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.5,
                perturbations_per_eval=batch)
            return attribution[0, 0]

        return run

    def ours(method: str) -> Callable[[], torch.Tensor]:
        return lambda: occlusion(model, image, target, patch_size=window, stride=stride, fill="grey",
                                 method=method, edges="clip").heatmap("drop")

    def coarse_first() -> None:
        next(occlusion_coarse_to_fine(model, image, target, patch_size=window, stride=stride, edges="clip"))

    cases = [
        Case("Captum Occlusion, perturbations_per_eval=1", captum(1), slow=True),
        Case("Captum Occlusion, perturbations_per_eval=16", captum(16)),
        Case("Captum Occlusion, perturbations_per_eval=64", captum(64)),
        Case("viztools occlusion, method='naive'", ours("naive"), slow=True),
        Case("viztools occlusion, method='batched'", ours("batched")),
        Case("viztools occlusion, method='incremental'", ours("incremental")),
        Case("viztools occlusion, method='auto'", ours("auto")),
        Case("viztools occlusion_coarse_to_fine, first (coarse) map", coarse_first),
    ]
    if args.quick:
        cases = [case for case in cases if not case.slow]
    for round_number in range(args.rounds):
        for case in cases:
            if round_number == 0 or not case.slow:
                case.measure()
                print(f"round {round_number + 1}: {case.name}: {case.wall[-1]:.2f} s", flush=True)

    captum_cases = [case for case in cases if case.name.startswith("Captum")]
    best = min(captum_cases, key=lambda case: min(case.wall))
    default = next((case for case in captum_cases if case.name.endswith("=1")), None)
    positions = len(patch_starts(image.shape[-1], window, stride, "clip")) ** 2
    print(f"\nOcclusion benchmark: {description}; window {window}, stride {stride}, {positions} patch positions.")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {platform.machine()}; load average "
          f"{os.getloadavg()[0]:.1f} at the end. The CPU is shared: compare ratios, not seconds.\n")
    table = [("method", "wall s", "CPU s", "vs Captum best", "(CPU)", "vs Captum ppe=1", "max |Δ heatmap|")]
    for case in cases:
        wall, cpu = min(case.wall), min(case.cpu)
        table.append((
            case.name,
            f"{wall:.2f}",
            f"{cpu:.2f}",
            f"{min(best.wall) / wall:.1f}x",
            f"{min(best.cpu) / cpu:.1f}x",
            f"{min(default.wall) / wall:.1f}x" if default else "skipped",
            "" if case.heatmap is None else f"{float((case.heatmap - best.heatmap).abs().max()):.1e}",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for number, row in enumerate(table):
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        print("| " + " | ".join(cells) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    print(f"\nCaptum best: {best.name}. Times are the best of {args.rounds} rounds (slow cases: one run); "
          "the heatmap difference is against Captum's best.")


if __name__ == "__main__":
    main()
