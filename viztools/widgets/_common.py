"""Shared pieces of the viztools widgets: fast PNG panels, an error box, progress, and background work.

Widgets redraw by sending PNG bytes to an ``ipywidgets.Image``: about 40 ms per redraw in a browser, against
150-240 ms for ipympl, plotly or an Output with a new figure. Panels are composited with numpy and PIL; matplotlib
only lends its colormap lookup tables (a ``savefig`` alone costs about 100 ms). Long computations run in a
:class:`BackgroundRunner` so that the kernel keeps answering slider events, and a newer request supersedes
older ones (ipywidgets' docs: "Asynchronous Widgets"; the kernel does not process widget messages while a handler
runs).
"""

from __future__ import annotations

import html
import io
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import ipywidgets
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from viztools.data import to_numpy_image

# --------------------------------------------------------------------------------------------------------------
# Images: arrays -> uint8 RGB panels -> PNG bytes
# --------------------------------------------------------------------------------------------------------------

BACKGROUND = 255
TEXT_COLOUR = (40, 40, 40)


@cache
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a ``(256, 3)`` uint8 lookup table (so colouring is one numpy indexing)."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as error:
        raise ValueError(f"Unknown colormap {name!r}. Use a matplotlib colormap name such as 'viridis'.") from error
    lut = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    lut.flags.writeable = False
    return lut


@cache
def font(size: int = 13) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px, for titles and tick labels."""
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def to_rgb_uint8(image: object) -> np.ndarray:
    """A pixel tensor ``(1, 3, H, W)`` / ``(3, H, W)`` or an ``(H, W, 3)`` / ``(H, W)`` array -> ``(H, W, 3)`` uint8.

    Float input is taken to lie in [0, 1] and is clipped.
    """
    array = to_numpy_image(image) if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Expected an RGB image of shape (H, W, 3); got {array.shape}.")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    return (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, *, cmap: str = "viridis", vmin: float, vmax: float) -> np.ndarray:
    """Map a 2-D array to ``(H, W, 3)`` uint8 colours, ``vmin`` -> the colormap's start, ``vmax`` -> its end."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"colorize expects a 2-D array; got shape {values.shape}.")
    span = vmax - vmin if vmax > vmin else 1.0
    indices = np.clip((values - vmin) / span * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return colormap_lut(cmap)[indices]


def resize_rgb(image: np.ndarray, size: tuple[int, int], *, smooth: bool = True) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image to ``size = (height, width)`` (bilinear, or nearest when not smooth)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def resize_values(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D float array to ``size = (height, width)`` with bilinear interpolation."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == tuple(size):
        return values
    height, width = size
    return np.asarray(Image.fromarray(values, mode="F").resize((width, height), Image.Resampling.BILINEAR))


def overlay(
    image: np.ndarray, values: np.ndarray, *, cmap: str, vmin: float, vmax: float, alpha: float
) -> np.ndarray:
    """Blend the colour-mapped ``values`` over an ``(H, W, 3)`` uint8 image: ``(1 - alpha) * image + alpha * colour``.

    ``values`` is resized to the image first, so a heatmap computed at model resolution can be drawn on a
    larger display copy. NaN values (no data) leave the image uncovered.
    """
    values = resize_values(values, image.shape[:2])
    known = np.isfinite(values)
    colours = colorize(np.where(known, values, vmin), cmap=cmap, vmin=vmin, vmax=vmax).astype(np.float32)
    weight = np.where(known, np.float32(alpha), np.float32(0.0))[:, :, None]
    blended = (1.0 - weight) * image.astype(np.float32) + weight * colours
    return (blended + 0.5).astype(np.uint8)


def _nice_ticks(vmin: float, vmax: float, count: int = 5) -> list[float]:
    span = vmax - vmin
    if span <= 0:
        return [vmin]
    raw = span / max(count - 1, 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = np.ceil(vmin / step - 1e-9) * step
    ticks = np.arange(first, vmax + step * 1e-6, step)
    return [0.0 if abs(t) < step * 1e-6 else float(t) for t in ticks]


def _format_tick(value: float, step: float) -> str:
    decimals = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * max(abs(step), 1.0)), 6)
    return f"{value:.{decimals}f}"


def colorbar(
    height: int, *, cmap: str, vmin: float, vmax: float, bar_width: int = 14, label: str | None = None,
    font_size: int = 11,
) -> np.ndarray:
    """A vertical colour bar ``height`` px tall with tick labels (``vmax`` at the top), as ``(H, W, 3)`` uint8."""
    ticks = _nice_ticks(vmin, vmax)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    labels = [_format_tick(t, step) for t in ticks]
    tick_font = font(font_size)
    text_width = max(int(tick_font.getlength(text)) for text in labels)
    label_room = font_size + 5 if label else 0
    width = bar_width + 8 + text_width + 6 + label_room
    canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    margin = 6  # room for the half-height of the top and bottom tick labels
    bar_height = max(height - 2 * margin, 2)
    gradient = np.linspace(1.0, 0.0, bar_height, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
    canvas.paste(Image.fromarray(colorize(gradient, cmap=cmap, vmin=0.0, vmax=1.0)), (0, margin))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, margin, bar_width - 1, margin + bar_height - 1), outline=TEXT_COLOUR)
    span = vmax - vmin if vmax > vmin else 1.0
    for tick, text in zip(ticks, labels, strict=True):
        y = margin + round((vmax - tick) / span * (bar_height - 1))
        draw.line((bar_width, y, bar_width + 3, y), fill=TEXT_COLOUR)
        draw.text((bar_width + 8, y), text, fill=TEXT_COLOUR, font=tick_font, anchor="lm")
    if label:
        strip = Image.new("RGB", (height, label_room), (BACKGROUND,) * 3)
        ImageDraw.Draw(strip).text((height / 2, label_room / 2), label, fill=TEXT_COLOUR, font=tick_font, anchor="mm")
        canvas.paste(strip.rotate(90, expand=True), (width - label_room, 0))
    return np.asarray(canvas)


def titled(panel: np.ndarray, title: str, *, size: int = 13) -> np.ndarray:
    """``panel`` with ``title`` centred in a strip above it (text that does not fit is shortened with '...')."""
    title_font = font(size)
    width = panel.shape[1]
    while title and title_font.getlength(title) > width - 4 and len(title) > 4:
        title = title[:-4] + "..."
    strip = Image.new("RGB", (width, size + 8), (BACKGROUND,) * 3)
    ImageDraw.Draw(strip).text((width / 2, (size + 8) / 2), title, fill=TEXT_COLOUR, font=title_font, anchor="mm")
    return np.concatenate([np.asarray(strip), panel], axis=0)


def hstack(panels: list[np.ndarray], *, gap: int = 10) -> np.ndarray:
    """Place ``(H, W, 3)`` uint8 panels side by side, bottom-aligned, on a white background."""
    height = max(panel.shape[0] for panel in panels)
    width = sum(panel.shape[1] for panel in panels) + gap * (len(panels) - 1)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    left = 0
    for panel in panels:
        canvas[height - panel.shape[0] :, left : left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 image as PNG (fast compression: widgets redraw often)."""
    buffer = io.BytesIO()
    Image.fromarray(to_rgb_uint8(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> ``(H, W, 3)`` uint8 (for tests and notebooks that inspect what a widget shows)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------------------------------------------
# Error box and progress
# --------------------------------------------------------------------------------------------------------------

_ERROR_STYLE = (
    "border:1px solid #d9534f;background:#fdf2f2;color:#a94442;padding:6px 10px;border-radius:4px;"
    "font-family:var(--jp-ui-font-family, sans-serif);font-size:13px;max-width:720px;white-space:normal"
)


class ErrorBox(ipywidgets.HTML):
    """An HTML box that shows the last error of a widget (empty when all is well) and keeps it in ``last_error``.

    Unlike ipywidgets' callbacks, which log and swallow exceptions, our widgets show every error where the user
    looks and record it so tests can fail on it.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(value="", **kwargs)
        self.last_error: BaseException | None = None
        self.last_traceback: str = ""

    def show(self, error: BaseException, context: str = "") -> None:
        """Display ``error`` (type, message and what was being done) and record it."""
        self.last_error = error
        self.last_traceback = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        prefix = f"{html.escape(context)}: " if context else ""
        self.value = (
            f'<div class="viztools-error" style="{_ERROR_STYLE}"><b>{prefix}{type(error).__name__}</b>: '
            f"{html.escape(str(error))}</div>"
        )

    def clear(self) -> None:
        """Hide the box (``last_error`` keeps the last error for inspection)."""
        self.value = ""

    @contextmanager
    def capture(self, context: str = "") -> Iterator[None]:
        """Run the ``with`` body; show any exception it raises instead of letting it vanish in a callback."""
        try:
            yield
        except Exception as error:
            self.show(error, context)


class ProgressBar(ipywidgets.HBox):
    """A progress bar with a caption, safe to update from a background thread (updates only when they show)."""

    def __init__(self, **kwargs: object) -> None:
        self.bar = ipywidgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=ipywidgets.Layout(width="220px"))
        self.caption = ipywidgets.Label(value="")
        super().__init__([self.bar, self.caption], **kwargs)
        self._lock = threading.Lock()

    def start(self, caption: str) -> None:
        with self._lock:
            self.bar.bar_style = "info"
            self.bar.value = 0.0
            self.caption.value = caption

    def update(self, done: int, total: int, caption: str | None = None) -> None:
        """Set the bar to ``done / total``; skips changes under 1% so a fast loop sends few messages."""
        fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        with self._lock:
            if abs(fraction - self.bar.value) >= 0.01 or fraction in (0.0, 1.0):
                self.bar.value = fraction
            if caption is not None and caption != self.caption.value:
                self.caption.value = caption

    def finish(self, caption: str, *, failed: bool = False) -> None:
        with self._lock:
            self.bar.value = 1.0
            self.bar.bar_style = "danger" if failed else "success"
            self.caption.value = caption


# --------------------------------------------------------------------------------------------------------------
# Background work: newest request wins
# --------------------------------------------------------------------------------------------------------------


class Job:
    """One request handed to a :class:`BackgroundRunner`; ``should_stop()`` turns True once a newer job arrives."""

    def __init__(self, runner: BackgroundRunner, generation: int) -> None:
        self._runner = runner
        self.generation = generation

    def should_stop(self) -> bool:
        """True when this job has been superseded or cancelled: pass it to the technique's ``should_stop``."""
        return self.generation != self._runner.generation

    def publish(self, apply: Callable[[], None]) -> bool:
        """Run ``apply`` (which updates the widgets) only if this job is still the newest; return whether it ran.

        The check and the update happen under the runner's lock, so a result never lands after a newer request.
        """
        with self._runner.lock:
            if self.should_stop():
                return False
            apply()
            return True


class BackgroundRunner:
    """Runs work in background threads, one job at a time, where a newer job supersedes the older ones.

    ``submit(work)`` bumps a generation counter (so the running job's ``should_stop()`` becomes True), then runs
    ``work(job)`` in a daemon thread once the previous job has finished. A superseded job that has not started is
    skipped. Errors of the newest job go to ``on_error``; a superseded job's errors are dropped. ``wait()`` blocks
    until everything submitted so far is done.
    """

    def __init__(self, on_error: Callable[[BaseException], None], *, name: str = "viztools-worker") -> None:
        self.lock = threading.RLock()
        self.generation = 0
        self._on_error = on_error
        self._name = name
        self._serial = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0

    def submit(self, work: Callable[[Job], None]) -> Job:
        """Start ``work(job)`` in the background, superseding every earlier job."""
        with self.lock:
            self.generation += 1
            job = Job(self, self.generation)
        with self._idle:
            self._pending += 1
        threading.Thread(target=self._run, args=(work, job), name=self._name, daemon=True).start()
        return job

    def cancel(self) -> None:
        """Supersede every submitted job without starting a new one."""
        with self.lock:
            self.generation += 1

    @property
    def busy(self) -> bool:
        """True while a submitted job has not finished."""
        with self._idle:
            return self._pending > 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until all submitted jobs are done; False if ``timeout`` (seconds) ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def _run(self, work: Callable[[Job], None], job: Job) -> None:
        try:
            with self._serial:
                if not job.should_stop():
                    work(job)
        except Exception as error:
            with self.lock:
                if not job.should_stop():
                    self._on_error(error)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
