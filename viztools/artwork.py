"""A painting made by the course itself: thick brush strokes along swirling flow, in a night-sky palette.

No public-domain painting ships with scikit-image, scikit-learn or matplotlib, and the course runs offline, so
the style image of lecture ``08_neural_style`` is generated: a sky of blues around yellow stars and a moon, a dark
cypress and hills (after van Gogh's *The Starry Night*, 1889, in spirit, not a copy). Every stroke follows a
divergence-free flow (vortices around the stars, a spiral in the middle of the sky, curl noise), is 10-30 px long
at 512 px, takes its colour from the scene with some jitter, and carries impasto relief (a ridge across the
stroke, bristle grooves along it) lit from the top left. Deterministic for a seed; about 0.3 s at 512 px.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy import ndimage

from viztools._validation import check_int

# A night-sky palette (RGB in [0, 1]).
_NIGHT = np.array([0.05, 0.10, 0.30])
_BLUE = np.array([0.12, 0.25, 0.58])
_LIGHT_BLUE = np.array([0.40, 0.60, 0.85])
_PALE = np.array([0.78, 0.86, 0.80])
_YELLOW = np.array([0.98, 0.85, 0.25])
_ORANGE = np.array([0.93, 0.62, 0.12])
_CYPRESS = np.array([0.05, 0.09, 0.07])
_CYPRESS_LIGHT = np.array([0.16, 0.21, 0.10])
_HILLS = np.array([0.10, 0.20, 0.35])

# Stars as (x, y, radius) in units of the image side; the last one is the moon.
_STARS = np.array([[0.10, 0.13, 0.04], [0.31, 0.08, 0.035], [0.49, 0.16, 0.035], [0.63, 0.07, 0.03],
                   [0.92, 0.40, 0.035], [0.70, 0.33, 0.035], [0.30, 0.40, 0.03], [0.84, 0.14, 0.08]])


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise with unit standard deviation and about ``cells`` blobs across: filtered white noise on a
    64 x 64 grid, enlarged to ``size`` (cheap at any size)."""
    noise = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 64 / cells, mode="wrap")
    noise = ndimage.zoom(noise, size / 64, order=1, mode="grid-wrap", grid_mode=True)
    return noise / noise.std()


def _scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The colour under each pixel, the flow (unit vectors) along which strokes run, and a stroke-width factor."""
    y, x = np.mgrid[0:size, 0:size] / size
    # Stream function: vortices around the stars, a long spiral band across the middle of the sky, curl noise.
    psi = 0.03 * _smooth_noise(size, 10, rng)
    for sx, sy, radius in _STARS:
        psi += 1.6 * radius * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * (2.2 * radius) ** 2))
    for cx, cy, spread, strength in ((0.42, 0.27, 0.10, 0.25), (0.62, 0.24, 0.08, -0.18)):
        psi += strength * spread * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * spread**2))
    psi += 0.02 * np.sin(7 * x + 2.5 * np.sin(5 * y))  # the wave band
    gy, gx = np.gradient(psi)
    flow = np.stack([gy, -gx])  # (dx, dy) = (dpsi/dy, -dpsi/dx): swirls without sources or sinks
    # Where the land is: hills below a wavy horizon, a cypress rising on the left.
    horizon = 0.72 + 0.04 * np.sin(9 * x) + 0.02 * np.sin(23 * x + 1)
    hills = y > horizon
    flame_width = 0.09 * np.clip((1.0 - y) / 0.85, 0, 1) ** 0.6 * (1 + 0.25 * np.sin(40 * y))
    cypress = (np.abs(x - 0.18) < flame_width * np.clip((y - 0.08) / 0.3, 0, 1)) & (y > 0.08)
    flow[:, hills] = np.stack([np.ones_like(x), 0.25 * np.sin(12 * x)])[:, hills]
    flow[:, cypress] = np.stack([0.35 * np.sin(30 * y), -np.ones_like(y)])[:, cypress]
    flow /= np.linalg.norm(flow, axis=0).clip(1e-9)
    # Colours: a sky from night blue (top) to lighter blue, the bright spiral band, stars with halos.
    shade = _smooth_noise(size, 20, rng)
    sky = _NIGHT + (_BLUE - _NIGHT) * np.clip(0.55 + 0.5 * y + 0.15 * shade, 0, 1)[..., None]
    band = np.exp(-((y - 0.27 - 0.05 * np.sin(6 * x)) ** 2) / (2 * 0.05**2)) * np.clip(1 - np.abs(x - 0.5) * 1.4, 0, 1)
    sky = sky + (_LIGHT_BLUE - sky) * np.clip(band * (0.8 + 0.3 * shade), 0, 1)[..., None]
    for sx, sy, radius in _STARS:
        distance = np.hypot(x - sx, y - sy) / radius
        rings = 0.5 + 0.5 * np.cos(2 * np.pi * distance * 1.2)
        halo = np.clip(2.2 - distance, 0, 1) * (0.45 + 0.55 * rings)
        sky = sky + (_PALE - sky) * halo[..., None] * 0.9
        core = np.clip((1.15 - distance) * 3, 0, 1)[..., None]
        sky = sky + (np.where((distance < 0.5)[..., None], _ORANGE, _YELLOW) - sky) * core
    colour = sky
    land = _HILLS + 0.06 * shade[..., None] * np.array([0.5, 1.0, 1.0])
    colour = np.where(hills[..., None], land, colour)
    tree = _CYPRESS + (_CYPRESS_LIGHT - _CYPRESS) * np.clip(0.5 + 0.5 * shade, 0, 1)[..., None]
    colour = np.where(cypress[..., None], tree, colour)
    width = np.where(cypress | hills, 1.1, 1.0)
    return colour, flow, width


def _paint(size: int, rng: np.random.Generator) -> np.ndarray:
    grid = max(size // 2, 64)  # the scene is smooth: computed at half resolution, looked up by nearest cell
    colour, flow, width_factor = _scene(grid, rng)
    cell = grid / size
    unit = size / 512
    count = int(8000 * (size / 512) ** 2)
    starts = rng.uniform(0, size - 1, (count, 2)).astype(np.float32)  # (x, y)
    lengths = rng.uniform(10, 30, count).astype(np.float32) * unit
    step = 2.0 * unit
    steps = int(np.ceil(30 * unit / step)) + 1
    # Trace every stroke along the flow at once (Euler steps of `step` px).
    path = np.empty((steps, count, 2), dtype=np.float32)
    position = starts.copy()
    for index in range(steps):
        path[index] = position
        col, row = np.clip(position * cell, 0, grid - 1).astype(int).T
        position = position + step * flow[:, row, col].T
    used = (np.arange(steps)[:, None] * step) <= lengths[None, :]  # (steps, count): stamps within the length
    col0, row0 = np.clip(starts * cell, 0, grid - 1).astype(int).T
    radius = (rng.uniform(2.4, 3.8, count) * unit * width_factor[row0, col0]).astype(np.float32)
    jitter = rng.normal(0, 0.05, (count, 3)) + rng.normal(0, 0.03, (count, 1))
    stroke_colour = np.clip(colour[row0, col0] + jitter, 0, 1)
    bristle_phase = rng.uniform(0, 2 * np.pi, count).astype(np.float32)
    # Painting order: darker strokes first, so the stars and the bright band lie on top (with some randomness).
    order = np.empty(count, dtype=np.int64)
    order[np.argsort(stroke_colour.mean(axis=1) + rng.normal(0, 0.12, count))] = np.arange(count)
    # Stamp a disc at every point of every stroke; later strokes (and later points) cover earlier ones.
    reach = int(np.ceil(radius.max()))
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    within = dx**2 + dy**2 <= (reach + 0.5) ** 2
    dx, dy = dx[within].astype(np.float32), dy[within].astype(np.float32)
    stroke_index, point = np.nonzero(used.T)  # one stamp per (stroke, point)
    centre = path[point, stroke_index]
    direction = path[np.minimum(point + 1, steps - 1), stroke_index] - path[np.maximum(point - 1, 0), stroke_index]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True).clip(1e-9)
    rounded = np.round(centre)
    offset_x = (rounded[:, 0] - centre[:, 0])[:, None] + dx  # (stamps, disc pixels): offsets from the centre
    offset_y = (rounded[:, 1] - centre[:, 1])[:, None] + dy
    distance2 = (offset_x**2 + offset_y**2) / (radius[stroke_index, None] ** 2)
    stamp, pixel_offset = np.nonzero(distance2 < 1)
    px = rounded[stamp, 0].astype(np.int64) + dx[pixel_offset].astype(np.int64)
    py = rounded[stamp, 1].astype(np.int64) + dy[pixel_offset].astype(np.int64)
    on_canvas = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    stamp, pixel_offset, pixels = stamp[on_canvas], pixel_offset[on_canvas], (py * size + px)[on_canvas]
    owner = stroke_index[stamp]
    key = order[owner] * steps + point[stamp]
    top = np.full(size * size, -1, dtype=np.int64)
    np.maximum.at(top, pixels, key)
    winner = key == top[pixels]
    pixels, owner, stamp, pixel_offset = pixels[winner], owner[winner], stamp[winner], pixel_offset[winner]
    # Impasto relief: a ridge across the stroke with bristle grooves along it, thinning towards the stroke's end.
    d2 = distance2[stamp, pixel_offset]
    across = offset_y[stamp, pixel_offset] * direction[stamp, 0] - offset_x[stamp, pixel_offset] * direction[stamp, 1]
    grooves = 0.75 + 0.25 * np.sin(across * 2.6 / unit + bristle_phase[owner])
    fade = 1 - 0.4 * point[stamp] * step / lengths[owner]
    height = np.zeros(size * size, dtype=np.float32)
    height[pixels] = (1 - d2) * grooves * fade + owner % 7 * 0.02
    nearest = (np.arange(size) * cell).astype(int)
    canvas = colour[nearest[:, None], nearest[None, :]].reshape(-1, 3) * 0.8  # a darker ground where no stroke lands
    canvas[pixels] = stroke_colour[owner] * (0.93 + 0.07 * grooves[:, None])
    height = height.reshape(size, size)
    gy, gx = np.gradient(ndimage.gaussian_filter(height, 0.7 * unit))
    light = np.clip(1 + 1.6 * (-gx - gy) / unit, 0.55, 1.5)  # lit from the top left
    image = canvas.reshape(size, size, 3) * light[..., None]
    image = image + 0.08 * np.clip(light - 1.15, 0, None)[..., None]  # glints on the ridges
    return np.clip(image, 0, 1)


@cache
def _starry_strokes(size: int, seed: int) -> np.ndarray:
    image = np.round(_paint(size, np.random.default_rng(seed)) * 255).astype(np.uint8)
    image.flags.writeable = False
    return image


def starry_strokes(size: int = 512, seed: int = 0) -> np.ndarray:
    """A painting of swirling brush strokes in a night-sky palette, ``(size, size, 3)`` uint8 (see the module
    docstring); the example image ``"starry_strokes"``. The same ``seed`` gives the same painting."""
    size = check_int(size, "size", low=64, high=4096)
    seed = check_int(seed, "seed", low=0)
    return _starry_strokes(size, seed).copy()
