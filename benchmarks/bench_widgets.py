"""Widget responsiveness without a browser: redraw time, time to the first frame, frames per second.

    OMP_NUM_THREADS=1 python benchmarks/bench_widgets.py             # every widget on GlyphNet, live ones on SqueezeNet
    OMP_NUM_THREADS=1 python benchmarks/bench_widgets.py --quick     # fewer repeats, a shorter live window
    OMP_NUM_THREADS=1 python benchmarks/bench_widgets.py --only EmbeddingExplorer

Each widget is built with the one-liner its lecture ends with, in the Python process (no frontend: the widget
work is measured, not the browser's). A frame is a change of the widget's picture (``ipywidgets.Image`` value);
it is recorded with its time by an observer on every ``ipywidgets.Image`` as it is constructed. Per widget:

* **first frame, new**: from calling the constructor to its first picture;
* **first frame, change**: from setting a compute setting (a value not computed before) to the first picture of
  the new computation; median over ``--repeats`` changes, each started once the previous computation finished;
* **redraw**: a display-only change (a setting the picture is redrawn from the cached result for; ClassVisualizer
  has none, so there it is revisiting a computed setting, shown from the cache); median over ``--repeats`` x 2;
* **live fps**: picture changes per second during a long live optimization, over ``--window`` seconds, and the
  optimization steps per second behind them (frames are throttled to one per ``FRAME_INTERVAL``, 0.25 s).

GlyphNet (64 px) for every widget; ImageNet SqueezeNet 1.0 at each widget's lecture size (its default) for the
live ones when the weights are found (``$VIZTOOLS_WEIGHTS_DIR``, e.g. /work/shared/weights). The issue's targets:
redraw under 100 ms, first frame within 1 s on GlyphNet, several fps on GlyphNet and at least 1 fps on SqueezeNet.

One torch thread by default (``--threads``; also set ``OMP_NUM_THREADS=1``): the CPU is shared, and a widget's
background thread competes with the kernel's own work.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ipywidgets
import torch

import viztools
from viztools.models import find_local_weights
from viztools.widgets import base

# -- frame clock --------------------------------------------------------------------------------------------------

_frames: dict[int, list[tuple[float, int | None]]] = {}
_owners: dict[int, object] = {}


def _on_constructed(widget: ipywidgets.Widget) -> None:
    if isinstance(widget, ipywidgets.Image):
        times = _frames.setdefault(id(widget), [])

        def record(change: dict, times: list = times, key: int = id(widget)) -> None:
            shown = getattr(_owners.get(key), "shown", None)  # a live frame's history has one record per step
            times.append((time.perf_counter(), len(shown.history) if hasattr(shown, "history") else None))

        widget.observe(record, names="value")


ipywidgets.Widget.on_widget_constructed(_on_constructed)


def frames_of(explorer: object, since: float = 0.0) -> list[tuple[float, int | None]]:
    """``(time, steps so far)`` of every picture change of ``explorer`` after ``since``."""
    return [frame for frame in _frames.get(id(explorer.picture), []) if frame[0] > since]


def wait_for_frame(explorer: object, since: float, timeout: float = 120.0) -> float:
    """Seconds from ``since`` to the first picture change after it."""
    deadline = time.perf_counter() + timeout
    while not frames_of(explorer, since):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{type(explorer).__name__}: no picture within {timeout} s")
        if explorer.last_error is not None:
            raise RuntimeError(f"{type(explorer).__name__} failed: {explorer.last_error!r}")
        time.sleep(0.002)
    return frames_of(explorer, since)[0][0] - since


# -- what each widget does ----------------------------------------------------------------------------------------

Setter = Callable[[object, int], None]


@dataclass
class Spec:
    """A widget: its lecture one-liner, the i-th new compute setting, the i-th display-only change, and how to
    start a long live run (None: not a live widget)."""

    name: str
    make: Callable[[viztools.VizModel], object]
    compute: Setter
    display: Setter
    display_note: str
    live: Callable[[object], None] | None = None
    watch: Callable[[object], None] | None = None  # counts frames that are not picture changes


def _count_plots(explorer: object) -> None:
    """EmbeddingExplorer's map is a plotly FigureWidget: a new map is a frame even where the picture beside it
    (the chosen image and its neighbours in feature space) stays the same."""
    plot, times = explorer._plot, _frames.setdefault(id(explorer.picture), [])

    def counted(result: object) -> None:
        plot(result)
        times.append((time.perf_counter(), None))

    explorer._plot = counted


def _labels(explorer: object, picker: str = "class_picker") -> list[str]:
    return list(getattr(explorer, picker).options)


def _layer_setter(explorer: object, index: int) -> None:
    options = list(explorer.layer_picker.options)
    current = options.index(explorer.layer_picker.value)
    explorer.layer_picker.value = options[(current + 1) % len(options)]


def _toggle(control: ipywidgets.Widget) -> None:
    if isinstance(control.value, bool):
        control.value = not control.value
        return
    options = [option[1] if isinstance(option, tuple) else option for option in control.options]
    control.value = options[(options.index(control.value) + 1) % len(options)]


def glyphnet_specs(star: torch.Tensor) -> list[Spec]:
    from viztools.widgets import (
        AdversarialExplorer,
        ClassVisualizer,
        DeepDreamExplorer,
        EmbeddingExplorer,
        InversionExplorer,
        LayerExplorer,
        OcclusionExplorer,
        SaliencyExplorer,
        StyleExplorer,
    )

    return [
        Spec("LayerExplorer", lambda m: LayerExplorer(m), _layer_setter,
             lambda w, i: setattr(w.channel_slider, "value", (w.channel_slider.value + 1) % (w.channel_slider.max + 1)),
             "channel"),
        Spec("EmbeddingExplorer", lambda m: EmbeddingExplorer(m),
             lambda w, i: setattr(w.perplexity_slider, "value", 10.0 + 3 * i),
             lambda w, i: w.select(i + 1), "hover a point", watch=_count_plots),
        Spec("OcclusionExplorer", lambda m: OcclusionExplorer(m, star, patch_size=12, stride=4),
             lambda w, i: setattr(w.patch_slider, "value", 6 + i),
             lambda w, i: setattr(w.alpha_slider, "value", 0.3 if i % 2 else 0.6), "opacity"),
        Spec("SaliencyExplorer", lambda m: SaliencyExplorer(m, "cat"),
             lambda w, i: setattr(w.class_picker, "value", _labels(w)[i + 1]),
             lambda w, i: setattr(w.clip_slider, "value", 95.0 + 0.5 * i), "clip percentile"),
        Spec("ClassVisualizer", lambda m: ClassVisualizer(m, "heart", steps=60),
             lambda w, i: setattr(w.l2_slider, "value", 10 ** (-5 + 0.25 * i)),
             lambda w, i: setattr(w.l2_slider, "value", 10 ** (-5 + 0.25 * (i % 2))), "computed setting (cache)",
             lambda w: setattr(w.steps_slider, "value", 1000)),
        Spec("InversionExplorer", lambda m: InversionExplorer(m, "cat"),
             lambda w, i: setattr(w.tv_slider, "value", 10 ** (-2 + 0.25 * i)),
             lambda w, i: _toggle(w.log_box), "log scale",
             lambda w: setattr(w.steps_slider, "value", 1000)),
        Spec("DeepDreamExplorer", lambda m: DeepDreamExplorer(m, "cat"),
             lambda w, i: setattr(w.lr_slider, "value", 10 ** (-2.5 + 0.125 * i)),
             lambda w, i: _toggle(w.view_toggle), "dream / added detail",
             lambda w: setattr(w.steps_slider, "value", 50)),
        Spec("StyleExplorer", lambda m: StyleExplorer(m, "cat", "starry_strokes"),
             lambda w, i: setattr(w.content_slider, "value", 10 ** (-1 + 0.25 * i)),
             lambda w, i: _toggle(w.log_box), "log scale",
             lambda w: setattr(w.steps_slider, "value", 500)),
        Spec("AdversarialExplorer", lambda m: AdversarialExplorer(m, "cat"),
             lambda w, i: setattr(w.class_picker, "value", _labels(w)[-1 - i]),
             lambda w, i: setattr(w.magnify_slider, "value", 10 + 5 * (i + 1)), "magnify",
             lambda w: setattr(w.class_picker, "value", _labels(w)[1])),
    ]


def imagenet_specs() -> list[Spec]:
    """The live widgets, built as on ImageNet in the lectures (defaults: each widget's lecture size)."""
    from viztools.widgets import (
        AdversarialExplorer,
        ClassVisualizer,
        DeepDreamExplorer,
        InversionExplorer,
        StyleExplorer,
    )

    return [
        Spec("ClassVisualizer", lambda m: ClassVisualizer(m, "tarantula"),
             lambda w, i: setattr(w.l2_slider, "value", 10 ** (-5 + 0.25 * i)),
             lambda w, i: setattr(w.l2_slider, "value", 10 ** (-5 + 0.25 * (i % 2))), "computed setting (cache)",
             lambda w: setattr(w.steps_slider, "value", 1000)),
        Spec("InversionExplorer", lambda m: InversionExplorer(m, "cat"),
             lambda w, i: setattr(w.tv_slider, "value", 10 ** (-2 + 0.25 * i)),
             lambda w, i: _toggle(w.log_box), "log scale",
             lambda w: setattr(w.steps_slider, "value", 1000)),
        Spec("DeepDreamExplorer", lambda m: DeepDreamExplorer(m, "cat"),
             lambda w, i: setattr(w.lr_slider, "value", 10 ** (-2.5 + 0.125 * i)),
             lambda w, i: _toggle(w.view_toggle), "dream / added detail",
             lambda w: setattr(w.steps_slider, "value", 50)),
        Spec("StyleExplorer", lambda m: StyleExplorer(m, "cat", "starry_strokes"),
             lambda w, i: setattr(w.content_slider, "value", 10 ** (-1 + 0.25 * i)),
             lambda w, i: _toggle(w.log_box), "log scale",
             lambda w: setattr(w.steps_slider, "value", 500)),
        Spec("AdversarialExplorer", lambda m: AdversarialExplorer(m, "cat"),
             lambda w, i: setattr(w.class_picker, "value", _labels(w)[-1 - i]),
             lambda w, i: setattr(w.magnify_slider, "value", 10 + 5 * (i + 1)), "magnify",
             lambda w: setattr(w.class_picker, "value", _labels(w)[2])),
    ]


# -- measuring ----------------------------------------------------------------------------------------------------


@dataclass
class Row:
    widget: str
    model: str
    first_new: float = float("nan")
    first_change: list[float] = field(default_factory=list)
    redraw: list[float] = field(default_factory=list)
    redraw_note: str = ""
    unchanged_redraws: int = 0
    fps: float | None = None
    steps_per_s: float | None = None
    live_note: str = ""
    error: str = ""


def measure(spec: Spec, model: viztools.VizModel, model_name: str, *, repeats: int, window: float,
            timings: bool = True) -> Row:
    row = Row(spec.name, model_name, redraw_note=spec.display_note)
    started = time.perf_counter()
    explorer = spec.make(model)
    row.model = f"{model_name} {getattr(explorer, 'size', model.input_size)} px"
    try:
        _owners[id(explorer.picture)] = explorer
        if spec.watch is not None:
            spec.watch(explorer)
        row.first_new = wait_for_frame(explorer, started)
        explorer.wait(300)
        if timings:
            for index in range(repeats):
                explorer.wait(300)
                since = time.perf_counter()
                spec.compute(explorer, index)
                row.first_change.append(wait_for_frame(explorer, since))
            explorer.wait(300)
            for index in range(2 * repeats):
                before = len(frames_of(explorer))
                since = time.perf_counter()
                spec.display(explorer, index)
                row.redraw.append(time.perf_counter() - since)
                row.unchanged_redraws += len(frames_of(explorer)) == before
                explorer.wait(300)
        if spec.live is not None:
            explorer.wait(300)
            since = time.perf_counter()
            spec.live(explorer)
            time.sleep(window)
            frames = frames_of(explorer, since)
            if explorer.busy:
                frames = [frame for frame in frames if frame[0] <= since + window]
            else:
                row.live_note = f"run ended after {frames[-1][0] - since:.1f} s" if frames else "no frames"
                frames = frames[:-1]  # the final frame follows the last step at once
            if len(frames) >= 2:
                span = frames[-1][0] - frames[0][0]
                row.fps = (len(frames) - 1) / span
                steps = [step for _, step in frames if step is not None]
                if len(steps) >= 2:
                    row.steps_per_s = (steps[-1] - steps[0]) / span
    except Exception as error:  # one failing widget must not hide the others' figures
        row.error = f"{type(error).__name__}: {error}"[:200]
    finally:
        if explorer.last_error is not None and not row.error:
            row.error = f"widget error: {explorer.last_error!r}"[:200]
        explorer.close()
    return row


def _median(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{statistics.median(values) * scale:.{digits}f}" if values else "-"


def print_table(rows: list[Row], repeats: int) -> None:
    header = ["widget", "model", "first frame, new (s)", "first frame, change (s)", "redraw (ms)",
              "display change", "live fps", "steps/s"]
    lines = []
    for row in rows:
        fps = "-" if row.fps is None else f"{row.fps:.1f}"
        if row.live_note:
            fps += f" ({row.live_note})"
        lines.append([row.widget, row.model, f"{row.first_new:.2f}", _median(row.first_change),
                      _median(row.redraw, 1000, 0), row.redraw_note if row.redraw else "-", fps,
                      "-" if row.steps_per_s is None else f"{row.steps_per_s:.0f}"])
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]
    for number, cells in enumerate([header, *lines]):
        print("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        if row.error:
            print(f"\n{row.widget} on {row.model}: {row.error}")
        if row.unchanged_redraws:
            print(f"\n{row.widget} on {row.model}: {row.unchanged_redraws} display changes left the picture unchanged")
    print(f"\nMedians over {repeats} compute changes and {2 * repeats} display changes per widget; first frame, new "
          "includes the constructor.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats and a 2 s live window")
    parser.add_argument("--repeats", type=int, default=5, help="compute changes per widget (default 5)")
    parser.add_argument("--window", type=float, default=4.0, help="seconds of live frames counted (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the docstring)")
    parser.add_argument("--no-imagenet", action="store_true", help="GlyphNet only")
    parser.add_argument("--only", nargs="+", metavar="WIDGET", help="measure only these widgets (class names)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.window = 3, 2.0
    torch.set_num_threads(args.threads)

    glyphnet = viztools.load_model("glyphnet")
    images, _ = viztools.make_glyphworld(10, seed=0)
    rows = []
    chosen = (lambda specs: [spec for spec in specs if spec.name in args.only]) if args.only else (lambda specs: specs)
    for spec in chosen(glyphnet_specs(images[6:7])):
        print(f"GlyphNet: {spec.name} ...", flush=True)
        rows.append(measure(spec, glyphnet, "GlyphNet", repeats=args.repeats, window=args.window))
    weights = None if args.no_imagenet else find_local_weights("squeezenet1_0")
    if weights is not None:
        squeezenet = viztools.load_model("squeezenet1_0", weights=weights)
        for spec in chosen(imagenet_specs()):
            print(f"SqueezeNet: {spec.name} ...", flush=True)
            rows.append(measure(spec, squeezenet, "SqueezeNet 1.0", repeats=max(2, args.repeats // 2),
                                window=2 * args.window))

    print(f"\nWidget benchmark: torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs "
          f"({platform.machine()}); load average before {LOAD_BEFORE}, after "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; frames at most every {base.FRAME_INTERVAL} s.")
    if weights is None:
        print("SqueezeNet rows skipped: no squeezenet1_0 weights in $VIZTOOLS_WEIGHTS_DIR.")
    print()
    print_table(rows, args.repeats)


LOAD_BEFORE = ", ".join(f"{x:.1f}" for x in os.getloadavg())

if __name__ == "__main__":
    main()
