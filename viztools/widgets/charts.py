"""Loss curves drawn with PIL, fast enough for a live optimization's every frame (matplotlib takes ~100 ms)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from viztools.widgets._common import BACKGROUND, TEXT_COLOUR, colormap_lut, font

#: Distinct colours for up to 10 curves (matplotlib's tab10); the total is drawn in black.
_TAB10 = colormap_lut("tab10")[np.linspace(0, 255, 10).astype(int)]


def loss_curves(
    history: Sequence[Mapping[str, float]],
    size: tuple[int, int],
    *,
    font_size: int = 12,
    title: str = "losses per step",
    log: bool = True,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Each loss term of ``history`` (one ``{name: value}`` dict per step) as a line, with a legend.

    ``size`` is ``(height, width)``. With ``log`` the y axis is logarithmic (non-positive values are skipped);
    ``names`` picks and orders the curves (default: every name of the first step). Returns ``(H, W, 3)`` uint8.
    """
    height, width = size
    canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    text_font, small = font(font_size), font(max(font_size - 2, 8))
    draw.text((width / 2, 2), title, fill=TEXT_COLOUR, font=text_font, anchor="mt")
    names = list(names if names is not None else (history[0] if history else {}))
    series = {name: [record.get(name, math.nan) for record in history] for name in names}
    values = [v for line in series.values() for v in line if math.isfinite(v) and (v > 0 or not log)]
    transform = (lambda v: math.log10(v)) if log else (lambda v: v)
    low, high = (transform(min(values)), transform(max(values))) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    tick_labels = {v: f"{10 ** v:.2g}" if log else f"{v:.3g}" for v in (low, high)}
    left = 8 + max(5 * font_size // 2, *(round(small.getlength(text)) for text in tick_labels.values())) + 8
    top = font_size + 10
    legend_height = (font_size + 4) * math.ceil(len(names) / 2) if names else 0
    bottom, right = height - font_size - 8 - legend_height, width - 8
    if bottom - top < 10 or right - left < 10:  # too small to draw a chart in
        return np.asarray(canvas)
    draw.rectangle((left, top, right, bottom), outline=TEXT_COLOUR)
    if not values:
        return np.asarray(canvas)
    steps = max(len(history) - 1, 1)

    def point(step: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * step / steps
        y = bottom - (bottom - top) * (transform(value) - low) / (high - low)
        return x, y

    for label_value, text in tick_labels.items():
        y = bottom - (bottom - top) * (label_value - low) / (high - low)
        draw.text((left - 4, y), text, fill=TEXT_COLOUR, font=small, anchor="rm")
    draw.text((left, bottom + 3), "1", fill=TEXT_COLOUR, font=small, anchor="lt")
    draw.text((right, bottom + 3), f"step {len(history)}", fill=TEXT_COLOUR, font=small, anchor="rt")
    for index, name in enumerate(names):
        colour = (0, 0, 0) if name == "total" else tuple(int(c) for c in _TAB10[index % 10])
        points = [point(step, v) for step, v in enumerate(series[name]) if math.isfinite(v) and (v > 0 or not log)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3 if name == "total" else 2)
        elif points:
            x, y = points[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        column, row = index % 2, index // 2
        x = left + column * (right - left) / 2
        y = height - legend_height + row * (font_size + 4)
        draw.line((x, y + font_size / 2, x + 14, y + font_size / 2), fill=colour, width=3)
        draw.text((x + 18, y), name, fill=TEXT_COLOUR, font=small, anchor="lt")
    return np.asarray(canvas)
