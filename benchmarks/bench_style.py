"""Neural style transfer: time per iteration of viztools.style_transfer vs the classic course loop.

The baseline is a straightforward version of the CS231n style-transfer loop: every iteration runs the whole
feature extractor module by module keeping every output (``extract_features``), computes a Gram matrix per style
layer and takes an Adam step on the image. It optimizes the same objective as viztools (relative content and
style losses, mean-squared TV) in pixel space with the same step size, so both runs can be compared step by
step. The two loops are stepped alternately and each step is timed, so load from other processes hits both
alike; the table shows medians. One torch thread by default: on a CPU shared with other work, multi-threaded
timings swing by seconds.

viztools is faster because its forward pass stops after the deepest layer it needs, its Gram matrix has a
one-product backward (autograd's takes two), and it feeds the network channels-last tensors (faster CPU
convolutions and pooling).

It also times painting the course's style image, ``load_image("starry_strokes")`` (:mod:`viztools.artwork`, made
fresh, not from the cache): the target is under 1 s at 512 px.

Run: ``.venv/bin/python benchmarks/bench_style.py [--size 192] [--steps 40] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import viztools
from viztools.models import VizModel
from viztools.optimize import Progress, TotalVariation, forward_activations
from viztools.style import (
    DEFAULT_LR,
    DEFAULT_STYLE_WEIGHT,
    default_layers,
    style_transfer_objective,
    style_transfer_optimization,
)

#: The shared ImageNet SqueezeNet 1.0 weights the tests use ($VIZTOOLS_TEST_WEIGHTS overrides).
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "squeezenet1_0_imagenet_fp16.pth"


def load_benchmark_model() -> VizModel:
    """ImageNet SqueezeNet 1.0 when the shared test weights exist, else GlyphNet (trained, else random)."""
    path = Path(os.environ.get("VIZTOOLS_TEST_WEIGHTS", SHARED_WEIGHTS))
    if path.is_file():
        return viztools.load_model("squeezenet1_0", weights=path)
    try:
        return viztools.load_model("glyphnet")
    except FileNotFoundError:
        return viztools.load_model("glyphnet", weights="random")


def classic_loop(
    model: VizModel,
    content: torch.Tensor,
    style: torch.Tensor,
    content_layer: str,
    style_layers: list[str],
    style_weight: float,
    tv_weight: float,
    lr: float,
) -> Iterator[tuple[float, float, torch.Tensor]]:
    """The classic course loop as a generator: yields ``(seconds, loss, pixels)`` for each Adam step."""
    extractor = model.network.features
    wanted = {model.layer_path(layer): layer for layer in [content_layer, *style_layers]}

    def extract_features(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        features, current = {}, model.normalize(pixels)
        for name, module in extractor.named_children():
            current = module(current)
            if f"features.{name}" in wanted:
                features[wanted[f"features.{name}"]] = current
        return features

    def gram(features: torch.Tensor) -> torch.Tensor:
        _, channels, height, width = features.shape
        flat = features.view(channels, height * width)
        return flat @ flat.t() / (height * width)

    with torch.no_grad():
        content_target = extract_features(content)[content_layer]
        style_targets = {layer: gram(f) for layer, f in extract_features(style).items() if layer in style_layers}
    pixels = content.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=lr)
    while True:
        started = time.perf_counter()
        optimizer.zero_grad()
        features = extract_features(pixels)
        loss = ((features[content_layer] - content_target) ** 2).sum() / (content_target**2).sum()
        for layer in style_layers:
            target = style_targets[layer]
            loss = loss + style_weight * ((gram(features[layer]) - target) ** 2).sum() / (target**2).sum()
        dx = pixels[..., :-1, 1:] - pixels[..., :-1, :-1]
        dy = pixels[..., 1:, :-1] - pixels[..., :-1, :-1]
        loss = loss + tv_weight * (dx**2 + dy**2).sum() / pixels.numel()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
        yield time.perf_counter() - started, float(loss.detach()), pixels.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192, help="content image side in pixels")
    parser.add_argument("--steps", type=int, default=40, help="iterations per loop")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    time_painting()
    model = load_benchmark_model()
    size = args.size if model.name != "glyphnet" else 64
    content = viztools.load_image("cat", size)
    style = viztools.load_image("stained_cells", size)
    content_layer, style_layers = default_layers(model)
    tv_weight = 1.0
    objective = style_transfer_objective(model, content, style)
    penalty = TotalVariation(tv_weight / content.numel())

    def loss_of(pixels: torch.Tensor) -> float:
        with torch.no_grad():
            return float(-objective(forward_activations(model, pixels, objective.layers)) + penalty(pixels))

    runs = {
        "classic loop (Adam)": classic_loop(model, content, style, content_layer, list(style_layers),
                                            DEFAULT_STYLE_WEIGHT, tv_weight, DEFAULT_LR["adam"]),
        "viztools (Adam)": _timed(style_transfer_optimization(model, content, style, optimizer="adam",
                                                              tv_weight=tv_weight)),
        "viztools (L-BFGS)": _timed(style_transfer_optimization(model, content, style, optimizer="lbfgs",
                                                                tv_weight=tv_weight)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    first_loss: dict[str, float] = {}
    last_image: dict[str, torch.Tensor] = {}
    for _ in range(args.steps):
        for name, loop in runs.items():
            seconds, loss, pixels = next(loop)
            times[name].append(seconds)
            first_loss.setdefault(name, loss)
            last_image[name] = pixels

    baseline = statistics.median(times["classic loop (Adam)"][2:])
    print(f"Neural style transfer, {model.name}, content {size} px, style {size} px, layers {content_layer} / "
          f"{', '.join(style_layers)}, {args.steps} iterations, torch threads {torch.get_num_threads()}")
    print(f"{'loop':<22}{'ms/iteration':>14}{'vs classic':>12}{'loss at start':>15}{'loss at end':>13}")
    for name in runs:
        per_step = statistics.median(times[name][2:])  # the first steps warm up allocators
        print(f"{name:<22}{1000 * per_step:>14.1f}{per_step / baseline:>11.2f}x"
              f"{first_loss[name]:>15.4f}{loss_of(last_image[name]):>13.4f}")
    print("One L-BFGS iteration is one forward/backward pass here (no line search). Loss at end is the same "
          "objective evaluated on each loop's final image.")


def time_painting(rounds: int = 5) -> None:
    """Median wall and CPU time of painting "starry_strokes" from scratch at 512 px (and at 256 px)."""
    from viztools.artwork import _starry_strokes

    for size in (512, 256):
        walls, cpus = [], []
        for _ in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            _starry_strokes.__wrapped__(size, 0)  # past the cache
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(f"painting 'starry_strokes' at {size} px: {statistics.median(walls):.2f} s wall, "
              f"{statistics.median(cpus):.2f} s CPU (median of {rounds})")


def _timed(optimization: Iterator[Progress]) -> Iterator[tuple[float, float, torch.Tensor]]:
    """Step a viztools Optimization; yield ``(seconds, loss evaluated at the step, pixels after it)``."""
    while True:
        started = time.perf_counter()
        progress = next(optimization)
        yield time.perf_counter() - started, progress.loss, progress.image


if __name__ == "__main__":
    main()
