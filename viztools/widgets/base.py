"""The base of every viztools widget: background work, a result cache, progress, errors, live optimizations.

A widget (an *explorer*) supplies only three things: its controls, ``compute(key, job)`` (a generator that yields
results or frames, the last one final, running in a background thread) and ``draw(result)`` (an RGB picture,
drawn from a result and the display settings). :class:`Explorer` owns the rest:

* the :class:`~viztools.widgets._common.BackgroundRunner`, where the newest request supersedes stale work;
* a cache of final results keyed by the compute settings (``compute_key()``), so that revisiting settings, or
  changing a display-only setting, redraws at once;
* the progress bar, the error box (errors are shown and recorded in ``last_error``, never lost), ``wait()``,
  ``busy``, ``close()``;
* a ``scale`` option (1.0 normal, 1.5 for a projector) under which panels and their text grow together.

Optimization techniques run through :meth:`Explorer.live`: it iterates a technique's ``<technique>_optimization``
:class:`~viztools.optimize.Run` in the background and yields throttled :class:`Frame` records (the current image
and every loss term so far); its Stop button pauses the run and shows the best image so far, Continue resumes it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import ipywidgets
import numpy as np
import torch

from viztools._validation import check_float, check_model
from viztools.models import VizModel
from viztools.optimize import Progress, Run
from viztools.widgets._common import BackgroundRunner, ErrorBox, Job, ProgressBar, png_bytes
from viztools.widgets.controls import ImagePicker, header_html

#: Seconds between two frames of a live optimization (a few frames per second keep the kernel responsive).
FRAME_INTERVAL = 0.25


@dataclass
class Frame:
    """One picture of a live optimization: the image now, the loss history so far, and whether it is final.

    ``history`` holds one ``{term: loss}`` dict per step (the :class:`~viztools.optimize.Progress` losses);
    ``result`` is the technique's result once the run has finished (None before).
    """

    image: torch.Tensor
    step: int
    stage: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    paused: bool = False
    result: object | None = None

    @property
    def final(self) -> bool:
        return self.result is not None


class Explorer(ipywidgets.VBox):
    """The base class of the viztools explorers (see the module docstring for what a subclass supplies).

    Subclasses set ``TITLE`` and ``BLURB``, build their controls in ``__init__``, then call
    :meth:`assemble` with them and :meth:`refresh` to start. Compute controls are registered with
    :meth:`on_compute` (a change starts a computation or shows a cached one), display controls with
    :meth:`on_display` (a change only redraws).
    """

    TITLE: ClassVar[str] = "Explorer"
    BLURB: ClassVar[str] = ""
    CACHE_SIZE: ClassVar[int] = 32
    #: Side of an image panel at scale 1.0, in pixels.
    PANEL: ClassVar[int] = 224
    #: Steps of a live optimization per stage, for the progress bar (None: unknown).
    expected_steps: int | None = None

    def __init__(self, model: VizModel, *, scale: float = 1.0) -> None:
        self._runner = BackgroundRunner(self._background_error, name=f"viztools-{type(self).__name__}")
        self._paused = threading.Event()  # both first: close() needs them even when a check below fails
        self.model = check_model(model)
        self.scale = check_float(scale, "scale", low=0.5, high=3.0)
        self.errors = ErrorBox()
        self.progress = ProgressBar()
        self.header = ipywidgets.HTML(header_html(self.TITLE, self.BLURB, self.model, font_size=self.font_size + 2))
        self.picture = ipywidgets.Image(format="png", layout=ipywidgets.Layout(max_width="100%"))
        self.side = ipywidgets.HTML(layout=ipywidgets.Layout(min_width="200px"))
        self.summary = ipywidgets.HTML()
        self.shown: object | None = None
        self.shown_key: Hashable | None = None
        self.final = False
        self._cache: OrderedDict[Hashable, object] = OrderedDict()
        self._requested: Hashable | None = None
        self._live_run: Run | None = None
        super().__init__([])

    # -- what a subclass supplies ---------------------------------------------------------------------------

    def compute_key(self) -> Hashable:
        """The compute settings now (the cache key)."""
        raise NotImplementedError

    def compute(self, key: Hashable, job: Job) -> Iterator[object]:
        """Yield results for ``key`` in the background (previews or frames first; the last one is final)."""
        raise NotImplementedError

    def draw(self, result: object) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 picture of ``result`` (computed for ``self.shown_key``) under the current
        display settings."""
        raise NotImplementedError

    def describe(self, result: object) -> str:
        """HTML under the picture (optional)."""
        return ""

    def is_final(self, result: object, key: Hashable) -> bool:
        """Whether ``result`` is the finished result for ``key`` (a preview or a live frame is not)."""
        return not isinstance(result, Frame) or result.final

    # -- layout ---------------------------------------------------------------------------------------------

    @property
    def font_size(self) -> int:
        """Text size in px at this explorer's scale (13 px at scale 1.0)."""
        return round(13 * self.scale)

    @property
    def panel(self) -> int:
        """Side of one image panel in px at this explorer's scale."""
        return round(self.PANEL * self.scale)

    def assemble(self, controls: list[ipywidgets.Widget], *, live: bool = False,
                 main: ipywidgets.Widget | None = None) -> None:
        """Lay out header, picture and side panel, controls (wrapping to the width), progress, errors.

        ``main`` replaces the picture-and-side-panel row (e.g. a plotly ``FigureWidget`` beside ``self.picture``).
        """
        rows: list[ipywidgets.Widget] = [
            self.header,
            main if main is not None else ipywidgets.HBox(
                [self.picture, self.side], layout=ipywidgets.Layout(flex_flow="row wrap", align_items="center")),
            self.summary,
            ipywidgets.HBox(controls, layout=ipywidgets.Layout(flex_flow="row wrap")),
        ]
        if live:
            self.stop_button = ipywidgets.Button(description="Stop", icon="stop", button_style="warning",
                                                 tooltip="pause and show the best image so far")
            self.continue_button = ipywidgets.Button(description="Continue", icon="play", disabled=True,
                                                     tooltip="resume the optimization")
            self.stop_button.on_click(lambda _: self.stop())
            self.continue_button.on_click(lambda _: self.resume())
            rows.append(ipywidgets.HBox([self.stop_button, self.continue_button, self.progress],
                                        layout=ipywidgets.Layout(flex_flow="row wrap")))
        else:
            rows.append(self.progress)
        rows.append(self.errors)
        self.children = rows
        self.add_class("viztools-explorer")

    def on_compute(self, *controls: ipywidgets.Widget) -> None:
        """A change of any of ``controls`` recomputes (or shows the cached result).

        An :class:`~viztools.widgets.controls.ImagePicker` counts by its dropdown, and its upload button is
        wired to :meth:`~viztools.widgets.controls.ImagePicker.take_upload` (a file that is not an image shows
        its error in the widget).
        """
        for control in controls:
            if isinstance(control, ImagePicker):
                control.upload.observe(lambda change, picker=control: self._guarded(picker.take_upload, "Uploading"),
                                       names="value")
                control = control.dropdown
            control.observe(lambda change: change["new"] is None or self._guarded(self.refresh, "Updating"),
                            names="value")

    def on_display(self, *controls: ipywidgets.Widget) -> None:
        """A change of any of ``controls`` redraws the result on display."""
        for control in controls:
            control.observe(lambda change: self._guarded(self.redraw, "Redrawing"), names="value")

    # -- public API -----------------------------------------------------------------------------------------

    @property
    def last_error(self) -> BaseException | None:
        """The last error shown in the widget (None if none happened)."""
        return self.errors.last_error

    @property
    def busy(self) -> bool:
        """True while a computation runs in the background."""
        return self._runner.busy

    def wait(self, timeout: float | None = 120.0) -> Explorer:
        """Block until background work is done (notebooks, tests); raise TimeoutError after ``timeout`` s."""
        if not self._runner.wait(timeout):
            raise TimeoutError(f"{type(self).__name__} was still computing after {timeout} s.")
        return self

    def png(self) -> bytes:
        """The PNG bytes on display."""
        return self.picture.value

    def close(self) -> None:
        """Stop background work, then close the widget and its children."""
        self._paused.clear()
        self._runner.cancel()
        for child in _descendants(self):
            child.close()
        super().close()

    def refresh(self) -> None:
        """Show the cached result for the current compute settings, or start computing it."""
        key = self.compute_key()
        cached = self._cache.get(key)
        if cached is not None:
            self._runner.cancel()
            self._paused.clear()
            self._requested = key
            with self._runner.lock:
                self._cache.move_to_end(key)
                self.errors.clear()
                self._show(cached, final=True, key=key)
                self.progress.finish("shown from cache")
            return
        if key == self._requested and self._runner.busy:
            return  # being computed already
        self._requested = key
        self._paused.clear()
        self._runner.submit(lambda job: self._compute(key, job))

    def redraw(self) -> None:
        """Draw the result on display again (after a display setting changed)."""
        with self._runner.lock:
            if self.shown is not None:
                self.picture.value = png_bytes(self.draw(self.shown))
                self.summary.value = self.describe(self.shown)

    # -- live optimizations ---------------------------------------------------------------------------------

    def live(self, run_factory: Callable[[Callable[[Progress], bool]], Run], job: Job, *,
             frame: Callable[..., Frame] = Frame) -> Iterator[Frame]:
        """Run ``run_factory(should_stop)`` (a technique's live form) and yield throttled :class:`Frame` s.

        The first step is shown at once, then a frame every :data:`FRAME_INTERVAL` seconds, and the finished
        result last. Stop pauses the run inside ``should_stop`` (the best image so far is shown), Continue
        resumes it, and a newer request ends it. ``frame`` builds every frame, the paused ones too (a
        :class:`Frame` subclass, or a ``functools.partial`` of one that carries more, e.g. an earlier run's result).
        """
        history: list[dict[str, float]] = []
        latest: list[Progress] = []

        def should_stop(progress: Progress) -> bool:
            history.append(dict(progress.losses))
            latest[:] = [progress]
            if self._paused.is_set():
                run = self._live_run
                if run is not None:
                    paused = frame(run.best_image, progress.step, progress.stage, list(history), paused=True)
                    job.publish(lambda: self._show(paused, final=False))
                    job.publish(lambda: self.progress.update(progress.step, progress.step, "paused: best so far"))
                while self._paused.is_set() and not job.should_stop():
                    time.sleep(0.05)
            return job.should_stop()

        run = run_factory(should_stop)
        self._live_run = run
        last_frame = 0.0
        for progress in run:
            now = time.perf_counter()
            if now - last_frame >= FRAME_INTERVAL or progress.step == 1:
                last_frame = now
                yield frame(progress.image, progress.step, progress.stage, list(history))
            if job.should_stop():
                return
        result = run.result()
        final = latest[0] if latest else None
        yield frame(getattr(result, "image", None), 0 if final is None else final.step,
                    0 if final is None else final.stage, list(history), result=result)

    def stop(self) -> None:
        """Pause the running optimization and show its best image so far."""
        self._paused.set()
        if hasattr(self, "continue_button"):
            self.continue_button.disabled = False
            self.stop_button.disabled = True

    def resume(self) -> None:
        """Continue a paused optimization."""
        self._paused.clear()
        if hasattr(self, "continue_button"):
            self.continue_button.disabled = True
            self.stop_button.disabled = False

    # -- internals ------------------------------------------------------------------------------------------

    def _guarded(self, action: Callable[[], None], context: str) -> None:
        with self.errors.capture(context):
            action()

    def _compute(self, key: Hashable, job: Job) -> None:
        started = time.perf_counter()

        def start() -> None:
            self.errors.clear()
            self.progress.start("computing ...")
            if hasattr(self, "continue_button"):
                self.resume()

        if not job.publish(start):
            return
        last = None
        for result in self.compute(key, job):
            if job.should_stop():
                return
            last = result
            final = self.is_final(result, key)
            job.publish(lambda result=result, final=final: self._show(result, final=final, key=key))
            if isinstance(result, Frame) and not result.final:
                job.publish(lambda result=result: self.progress.update(
                    result.step, self.expected_steps or result.step, _step_caption(result)))
        if last is None or job.should_stop() or not self.is_final(last, key):
            return
        with self._runner.lock:
            self._cache[key] = last
            self._cache.move_to_end(key)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        elapsed = time.perf_counter() - started
        job.publish(lambda: self.progress.finish(f"done in {elapsed:.1f} s"))

    def _show(self, result: object, *, final: bool, key: Hashable | None = None) -> None:
        if key is not None:
            self.shown_key = key
        self.shown, self.final = result, final
        self.picture.value = png_bytes(self.draw(result))
        self.summary.value = self.describe(result)

    def _background_error(self, error: BaseException) -> None:
        self.errors.show(error, f"{self.TITLE}: computing")
        self.progress.finish("failed (see the message below)", failed=True)


def _step_caption(frame: Frame) -> str:
    return f"step {frame.step}" + (f" of stage {frame.stage + 1}" if frame.stage else "")


def _descendants(widget: ipywidgets.Widget) -> list[ipywidgets.Widget]:
    found = []
    for child in getattr(widget, "children", ()):
        found.extend([*_descendants(child), child])
    return found
