"""Occlusion heatmap time: viztools (each method) against Captum's Occlusion, measured in one run.

    python benchmarks/bench_occlusion.py            # full run (Captum's default perturbations_per_eval=1 too)
    python benchmarks/bench_occlusion.py --quick    # skip the two slow one-image-at-a-time rows

Model: ImageNet SqueezeNet 1.0 at 224 px, window 15, stride 8 when the shared weights are present
(/work/shared/weights/squeezenet1_0_imagenet_fp16.pth or $VIZTOOLS_TEST_WEIGHTS), else GlyphNet at 64 px,
window 12, stride 4. Both libraries compute the same thing: the target-class probability, grey (0.5) patches in
pixel space, Captum's patch positions (viztools ``edges="clip"``), heatmap = mean drop over the covering patches.
The table reports seconds, speed-ups against Captum and the largest heatmap difference from Captum's best run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
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


def timed(function: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall-clock time of ``repeats`` runs (a single run when the first one takes over 10 s)."""
    best, result = float("inf"), None
    for attempt in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
        if attempt == 0 and best > 10:
            break
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip Captum's default and viztools' naive loop")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for runs under 10 s (default 3)")
    args = parser.parse_args()

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

    def coarse_first() -> torch.Tensor:
        maps = occlusion_coarse_to_fine(model, image, target, patch_size=window, stride=stride, edges="clip")
        return next(maps).heatmap("drop")

    rows: list[tuple[str, float, torch.Tensor | None]] = []
    captum_batches = (16, 64) if args.quick else (1, 16, 64)
    for batch in captum_batches:
        seconds, heat = timed(captum(batch), args.repeats)
        rows.append((f"Captum Occlusion, perturbations_per_eval={batch}", seconds, heat))
    methods = ("batched", "incremental", "auto") if args.quick else ("naive", "batched", "incremental", "auto")
    for method in methods:
        seconds, heat = timed(ours(method), args.repeats)
        rows.append((f"viztools occlusion, method={method!r}", seconds, heat))
    seconds, _ = timed(coarse_first, args.repeats)
    rows.append(("viztools occlusion_coarse_to_fine, first (coarse) map", seconds, None))

    captum_rows = [row for row in rows if row[0].startswith("Captum")]
    best_name, best_seconds, best_heat = min(captum_rows, key=lambda row: row[1])
    default_seconds = next((s for name, s, _ in captum_rows if name.endswith("=1")), None)

    positions = len(patch_starts(image.shape[-1], window, stride, "clip")) ** 2
    print(f"\nOcclusion benchmark: {description}; window {window}, stride {stride}, {positions} patch positions")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {platform.machine()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end (the CPU is shared: compare ratios, not seconds)\n")
    table = [("method", "seconds", "vs Captum best", "vs Captum ppe=1", "max |Δ heatmap| vs Captum best")]
    for name, seconds, heat in rows:
        table.append((
            name,
            f"{seconds:.2f}",
            f"{best_seconds / seconds:.1f}x",
            f"{default_seconds / seconds:.1f}x" if default_seconds else "skipped",
            "" if heat is None else f"{float((heat - best_heat).abs().max()):.1e}",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for number, row in enumerate(table):
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in
                 enumerate(zip(row, widths, strict=True))]
        print("| " + " | ".join(cells) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    print(f"\nCaptum best: {best_name}.")


if __name__ == "__main__":
    main()
