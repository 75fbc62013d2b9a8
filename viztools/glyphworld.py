"""GlyphWorld: a data set of icons on photographs that viztools generates itself, deterministically.

Each sample is a 64x64 RGB image: one icon glyph from the DejaVu Sans font that ships with matplotlib, in a
random colour, size, rotation and position, composited onto a random crop of a natural photograph from
scikit-image or scikit-learn. Sample ``i`` of seed ``s`` depends only on ``(s, i)``, so every machine
generates the same images, which is what lets graded exercises give identical results offline.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from viztools._validation import check_int
from viztools.data import cached_example_image

#: Class name -> Unicode code point of its glyph in DejaVu Sans.
GLYPHS: dict[str, str] = {
    "sun": "\u2600",
    "umbrella": "\u2602",
    "telephone": "\u260e",
    "knight": "\u265e",
    "airplane": "\u2708",
    "heart": "\u2665",
    "star": "\u2605",
    "smiley": "\u263a",
    "anchor": "\u2693",
    "music note": "\u266b",
}
CLASS_NAMES: tuple[str, ...] = tuple(GLYPHS)
IMAGE_SIZE = 64
BACKGROUNDS: tuple[str, ...] = (
    "cat", "coffee", "astronaut", "rocket", "camera", "china", "flower", "hubble", "brick", "grass", "gravel",
)


def _font_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@cache
def glyph_mask(name: str, resolution: int = 192) -> Image.Image:
    """The glyph of class ``name`` as a tightly cropped greyscale coverage mask (mode ``"L"``)."""
    font = ImageFont.truetype(str(_font_path()), resolution)
    canvas = Image.new("L", (resolution * 2, resolution * 2), 0)
    ImageDraw.Draw(canvas).text((resolution // 2, resolution // 2), GLYPHS[name], fill=255, font=font)
    return canvas.crop(canvas.getbbox())


def _sample_rng(index: int, seed: int) -> np.random.Generator:
    """The random stream of sample ``index`` of ``seed``; its first draw picks the background photograph."""
    return np.random.default_rng([check_int(seed, "seed", low=0), check_int(index, "index", low=0)])


def _pick_background(rng: np.random.Generator) -> str:
    return BACKGROUNDS[rng.integers(len(BACKGROUNDS))]


def background_of(index: int, seed: int = 0) -> str:
    """The name of the photograph (one of :data:`BACKGROUNDS`) behind sample ``index`` of ``seed``."""
    return _pick_background(_sample_rng(index, seed))


def _random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    photo = cached_example_image(_pick_background(rng))
    height, width = photo.shape[:2]
    side = int(rng.integers(size, min(height, width) // 2 + 1))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose luminance differs from the background's mean by at least 0.3 (when possible)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    background_luma = float(background.reshape(-1, 3).mean(axis=0) @ weights)
    colour = rng.random(3).astype(np.float32)
    for _ in range(20):
        if abs(float(colour @ weights) - background_luma) >= 0.3:
            break
        colour = rng.random(3).astype(np.float32)
    return colour


def render_sample(index: int, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, int]:
    """Sample ``index`` of GlyphWorld with ``seed``: an ``(size, size, 3)`` float32 image in [0, 1] and its label.

    Labels cycle through the classes (``index % 10``), so any 10 consecutive samples hold each class once; the
    background's photograph is :func:`background_of` ``(index, seed)``.
    """
    index = check_int(index, "index", low=0)
    rng = _sample_rng(index, seed)
    label = index % len(CLASS_NAMES)
    background = _random_background(rng, size)
    mask = glyph_mask(CLASS_NAMES[label]).rotate(
        float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC, expand=True
    )
    extent = float(rng.uniform(0.45, 0.85)) * size
    scale = extent / max(mask.size)
    width, height = max(1, round(mask.size[0] * scale)), max(1, round(mask.size[1] * scale))
    mask = mask.resize((width, height), Image.Resampling.LANCZOS)
    left, top = int(rng.integers(size - width + 1)), int(rng.integers(size - height + 1))
    alpha = np.zeros((size, size, 1), dtype=np.float32)
    alpha[top : top + height, left : left + width, 0] = np.asarray(mask, dtype=np.float32) / 255.0
    colour = _contrasting_colour(rng, background)
    image = background * (1 - alpha) + colour * alpha
    return np.clip(image, 0.0, 1.0), label


def make_glyphworld(n: int, seed: int = 0, *, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``start .. start + n - 1`` of GlyphWorld: pixels ``(n, 3, 64, 64)`` in [0, 1] and labels ``(n,)``."""
    n = check_int(n, "n", low=0)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for offset in range(n):
        images[offset], labels[offset] = render_sample(start + offset, seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


class GlyphWorld(torch.utils.data.Dataset):
    """GlyphWorld as a map-style torch Dataset of ``(pixels (3, 64, 64), label)``, generated on access."""

    classes = CLASS_NAMES

    def __init__(self, n: int, seed: int = 0, *, start: int = 0) -> None:
        self.n = check_int(n, "n", low=0)
        self.seed = check_int(seed, "seed", low=0)
        self.start = check_int(start, "start", low=0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = render_sample(self._sample_index(index), self.seed)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), label

    def background(self, index: int) -> str:
        """The name of the photograph behind item ``index`` (see :func:`background_of`)."""
        return background_of(self._sample_index(index), self.seed)

    def _sample_index(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(f"GlyphWorld index {index} out of range for {self.n} samples.")
        return self.start + index
