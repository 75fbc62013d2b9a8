"""Images for the course: example photographs by name, any file or array, as pixel tensors in [0, 1].

Also the image collections several techniques read (top patches, t-SNE): :class:`ImageSource` reads a pixel
tensor, a map-style data set or a folder in batches; :class:`PhotoCrops` makes random crops of the example photos.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError

from viztools._validation import check_float, check_image, check_int, suggest

#: torchvision's ImageNet evaluation crop: Resize(256) then CenterCrop(224).
CROP_FRACTION = 224 / 256


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib

        return np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / filename).convert("RGB"))

    return load


def _artwork(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from viztools import artwork

        return getattr(artwork, name)()

    return load


#: Example images by name: (description, loader). All ship with scikit-image, scikit-learn or matplotlib,
#: or are made here (the painting).
EXAMPLE_IMAGES: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "cat": ("Chelsea the cat (scikit-image)", _skimage("chelsea")),
    "coffee": ("a cup of coffee (scikit-image)", _skimage("coffee")),
    "astronaut": ("astronaut Eileen Collins (scikit-image)", _skimage("astronaut")),
    "rocket": ("a rocket on its launch pad (scikit-image)", _skimage("rocket")),
    "camera": ("the cameraman (scikit-image, greyscale)", _skimage("camera")),
    "china": ("a Chinese temple (scikit-learn)", _sklearn("china.jpg")),
    "flower": ("a flower (scikit-learn)", _sklearn("flower.jpg")),
    "grace_hopper": ("Grace Hopper (matplotlib)", _matplotlib("grace_hopper.jpg")),
    # Textures, for neural style and as backgrounds.
    "hubble": ("texture: the Hubble deep field (scikit-image)", _skimage("hubble_deep_field")),
    "stained_cells": ("texture: stained tissue (scikit-image immunohistochemistry)", _skimage("immunohistochemistry")),
    "starry_strokes": ("painting: swirling brush strokes in a night-sky palette (made by viztools.artwork)",
                       _artwork("starry_strokes")),
    "colorwheel": ("texture: a colour wheel (scikit-image)", _skimage("colorwheel")),
    "brick": ("texture: a brick wall (scikit-image, greyscale)", _skimage("brick")),
    "grass": ("texture: grass (scikit-image, greyscale)", _skimage("grass")),
    "gravel": ("texture: gravel (scikit-image, greyscale)", _skimage("gravel")),
}


def example_image_names() -> list[str]:
    """Names accepted by :func:`example_image` and :func:`load_image`."""
    return list(EXAMPLE_IMAGES)


def example_image(name: str) -> np.ndarray:
    """An example image as an ``(H, W, 3)`` uint8 array."""
    if name not in EXAMPLE_IMAGES:
        raise ValueError(
            f"Unknown example image {name!r}.{suggest(name, list(EXAMPLE_IMAGES))} "
            f"Choose one of: {', '.join(EXAMPLE_IMAGES)}, or pass a file path or an array."
        )
    return _as_rgb_uint8(EXAMPLE_IMAGES[name][1](), name)


@cache
def cached_example_image(name: str) -> np.ndarray:
    """:func:`example_image`, read once and kept (read-only) for data sets that crop the photos many times."""
    array = example_image(name)
    array.flags.writeable = False
    return array


def _as_rgb_uint8(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{what}: an image array must have shape (H, W), (H, W, 3) or (H, W, 4); got {array.shape}. "
            "For a channels-first array use array.transpose(1, 2, 0)."
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
            low, high = float(np.nanmin(array)), float(np.nanmax(array))
            raise ValueError(f"{what}: a float image must have values in [0, 1]; got [{low:g}, {high:g}].")
        array = np.round(array * 255)
    return np.ascontiguousarray(array.astype(np.uint8))


def _read_file(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read {str(path)!r} as an image ({error}). Use a PNG or JPEG file.") from error


def _to_pixels(source: object) -> torch.Tensor:
    """Any supported source -> ``(1, 3, H, W)`` float tensor in [0, 1] at its own size."""
    if isinstance(source, torch.Tensor):
        return check_image(source.detach().float(), "image", pixels=True)
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, str) and source in EXAMPLE_IMAGES:
            array = example_image(source)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                hint = suggest(str(source), list(EXAMPLE_IMAGES))
                raise FileNotFoundError(
                    f"No image file {str(source)!r} (and no example image of that name).{hint} "
                    f"Check the path, or use an example image: {', '.join(EXAMPLE_IMAGES)}."
                )
            array = _read_file(path)
    elif isinstance(source, Image.Image):
        array = np.asarray(source.convert("RGB"))
    elif isinstance(source, np.ndarray):
        array = _as_rgb_uint8(source, "image")
    else:
        raise TypeError(
            f"Cannot make an image from {type(source).__name__}. Pass an example name, a file path, a PIL image, "
            "a numpy array (H, W, 3) or a tensor (3, H, W) in [0, 1]."
        )
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def load_image(source: object, size: int | None = 224, *, crop: bool = True) -> torch.Tensor:
    """Load an image as a ``(1, 3, size, size)`` pixel tensor in [0, 1].

    Args:
        source: an example image name (see :func:`example_image_names`), a file path, a PIL image, an
            ``(H, W[, 3])`` array (uint8, or float in [0, 1]) or a ``(3, H, W)`` tensor in [0, 1].
        size: output side; ``None`` keeps the image's own size.
        crop: resize the shorter side to ``size / 0.875`` and take the central ``size`` square (torchvision's
            Resize(256) / CenterCrop(224)); with ``crop=False`` the whole image is squashed to the square.
    """
    pixels = _to_pixels(source)
    if size is None:
        return pixels
    size = check_int(size, "size", low=1)
    if crop:
        pixels = TF.resize(pixels, round(size / CROP_FRACTION), antialias=True)
        pixels = TF.center_crop(pixels, [size, size])
    else:
        pixels = TF.resize(pixels, [size, size], antialias=True)
    return pixels.clamp(0, 1).contiguous()


def to_numpy_image(pixels: torch.Tensor) -> np.ndarray:
    """A pixel tensor ``(1, 3, H, W)`` or ``(3, H, W)`` -> an ``(H, W, 3)`` float array in [0, 1] for imshow."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"Expected a pixel tensor; got {type(pixels).__name__}.")
    if pixels.dim() == 4:
        if pixels.shape[0] != 1:
            raise ValueError(f"Expected a single image; got a batch of {pixels.shape[0]}. Index one image first.")
        pixels = pixels[0]
    if pixels.dim() != 3 or pixels.shape[0] != 3:
        raise ValueError(f"Expected shape (3, H, W) or (1, 3, H, W); got {tuple(pixels.shape)}.")
    return pixels.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of ``(N, C, H, W)`` pixels with a Gaussian of standard deviation ``sigma`` pixels.

    Separable, kernel radius ``ceil(4 sigma)`` (capped by the image size), reflected borders. The one blur of
    viztools: class visualization's periodic blur and occlusion's blurred fill use it.
    """
    sigma = check_float(sigma, "sigma", low=0.0)
    if sigma == 0:
        return pixels
    height, width = pixels.shape[-2:]
    radius = min(math.ceil(4 * sigma), height - 1, width - 1)
    if radius < 1:
        return pixels
    offsets = torch.arange(-radius, radius + 1, dtype=pixels.dtype, device=pixels.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = pixels.shape[1]
    padded = F.pad(pixels, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


# --------------------------------------------------------------------------------------------------------------
# Image collections
# --------------------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Example photographs that :class:`PhotoCrops` samples from.
PHOTO_NAMES: tuple[str, ...] = ("cat", "coffee", "astronaut", "rocket", "camera", "china", "flower", "grace_hopper")


class PhotoCrops(torch.utils.data.Dataset):
    """Random square crops of the example photographs, resized to ``size``, generated on access.

    Crop ``i`` depends only on ``(seed, i)``: a photo from ``photos``, a side between a third of the photo's
    shorter side and all of it, a random position. Items are pixel tensors ``(3, size, size)`` in [0, 1].
    """

    def __init__(self, n: int, size: int = 224, seed: int = 0, *, photos: Sequence[str] = PHOTO_NAMES) -> None:
        self.n = check_int(n, "n", low=0)
        self.size = check_int(size, "size", low=1)
        self.seed = check_int(seed, "seed", low=0)
        unknown = [name for name in photos if name not in EXAMPLE_IMAGES]
        if not photos or unknown:
            raise ValueError(
                f"photos must be a non-empty list of example image names; unknown: {unknown}. "
                f"Choose from: {', '.join(EXAMPLE_IMAGES)}."
            )
        self.photos = tuple(photos)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.n:
            raise IndexError(f"PhotoCrops index {index} out of range for {self.n} crops.")
        rng = np.random.default_rng([self.seed, index])
        photo = cached_example_image(self.photos[int(rng.integers(len(self.photos)))])
        height, width = photo.shape[:2]
        shorter = min(height, width)
        side = int(rng.integers(max(1, shorter // 3), shorter + 1))
        top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crop = crop.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class ImageSource:
    """A sized collection of pixel images, read in batches (used by the data-set-level tools).

    ``images`` is a pixel tensor ``(N, 3, H, W)`` in [0, 1]; a map-style data set (anything with ``len`` and
    integer indexing, e.g. :class:`~viztools.glyphworld.GlyphWorld` or :class:`PhotoCrops`) whose items are pixel
    tensors ``(3, H, W)`` or ``(pixels, label)`` pairs; or a folder of image files (PNG, JPEG, ...; sorted by
    name, each loaded with :func:`load_image` at ``size``, which is then required).
    """

    def __init__(self, images: object, *, size: int | None = None) -> None:
        self._tensor: torch.Tensor | None = None
        self._dataset: object | None = None
        self._files: list[Path] | None = None
        self.size = size
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images.unsqueeze(0)
            if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
                raise ValueError(
                    f"images must be a float pixel tensor of shape (N, 3, H, W); got {tuple(images.shape)} "
                    f"({images.dtype}). Use viztools.make_glyphworld(n) or viztools.load_image(...) to make one."
                )
            self._tensor = images.detach()
        elif isinstance(images, (str, os.PathLike)):
            folder = Path(images).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"No folder {str(folder)!r}. Pass an existing folder of image files.")
            if size is None:
                raise ValueError("Reading a folder of images needs a size (the model's input size).")
            self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self._files:
                raise ValueError(f"Folder {str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
        elif hasattr(images, "__len__") and hasattr(images, "__getitem__"):
            self._dataset = images
        else:
            raise TypeError(
                f"Cannot read images from {type(images).__name__}. Pass a pixel tensor (N, 3, H, W), a data set "
                "such as viztools.GlyphWorld(n) or PhotoCrops(n), or a folder of image files."
            )
        if len(self) == 0:
            raise ValueError("The image collection is empty; pass at least one image.")

    def __len__(self) -> int:
        if self._tensor is not None:
            return self._tensor.shape[0]
        if self._files is not None:
            return len(self._files)
        return len(self._dataset)

    def item(self, index: int) -> tuple[torch.Tensor, int | None]:
        """Image ``index`` as ``(pixels (3, H, W), label or None)``."""
        if self._tensor is not None:
            return self._tensor[index], None
        if self._files is not None:
            return load_image(self._files[index], size=self.size)[0], None
        item = self._dataset[index]
        label = None
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ValueError(
                    f"Data set items must be pixels or (pixels, label); item {index} has {len(item)} parts."
                )
            item, label = item
            label = int(label)
        if not isinstance(item, torch.Tensor) or item.dim() != 3 or item.shape[0] != 3:
            shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(f"Data set item {index} must be a pixel tensor (3, H, W); got {shape}.")
        return item, label

    def image(self, index: int) -> torch.Tensor:
        """Pixels ``(3, H, W)`` of image ``index``."""
        return self.item(index)[0]

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(start, pixels (B, 3, H, W), labels (B,) or None)`` over the whole collection, in order."""
        batch_size = check_int(batch_size, "batch_size", low=1)
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            if self._tensor is not None:
                pixels, labels = self._tensor[start:stop].float(), None
            else:
                items = [self.item(i) for i in range(start, stop)]
                shapes = {tuple(pixels.shape) for pixels, _ in items}
                if len(shapes) > 1:
                    raise ValueError(f"All images must have the same size; images {start}..{stop - 1} have {shapes}.")
                pixels = torch.stack([pixels for pixels, _ in items]).float()
                found = [label for _, label in items]
                labels = None if None in found else torch.tensor(found, device="cpu")
            check_image(pixels, f"images {start}..{stop - 1}", batch=True, pixels=True)
            yield start, pixels, labels
