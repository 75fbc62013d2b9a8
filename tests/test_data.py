"""Example images, files, arrays and tensors become (1, 3, S, S) pixel tensors; bad input gets a clear error.

Also the image collections (PhotoCrops, ImageSource) that the data-set-level techniques read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import viztools
from viztools.data import ImageSource, PhotoCrops, load_image, to_numpy_image


@pytest.mark.parametrize("name", viztools.example_image_names())
def test_every_example_image_loads(name):
    pixels = load_image(name, size=64)
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == torch.float32
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 1


def test_greyscale_examples_become_rgb():
    pixels = load_image("camera", size=32)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])


def test_center_crop_follows_torchvision_eval_transform():
    array = viztools.example_image("coffee")  # 400 x 600
    pixels = load_image(array, size=224)
    reference = torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255
    import torchvision.transforms.functional as TF

    reference = TF.center_crop(TF.resize(reference, 256, antialias=True), [224, 224])
    torch.testing.assert_close(pixels, reference.clamp(0, 1))
    squashed = load_image(array, size=50, crop=False)
    assert squashed.shape == (1, 3, 50, 50)
    assert load_image(array, size=None).shape == (1, 3, 400, 600)


def test_files_arrays_pil_and_tensors_agree(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    expected = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    for source in (path, str(path), Image.fromarray(array), array, array / 255.0, expected[0]):
        torch.testing.assert_close(load_image(source, size=None), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(to_numpy_image(expected), array / 255.0, atol=1e-6)


def test_missing_file_suggests_example_names():
    with pytest.raises(FileNotFoundError, match=r"No image file 'kat\.png'.*Check the path"):
        load_image("kat.png")
    with pytest.raises(FileNotFoundError, match="Did you mean 'coffee'"):
        load_image("cofee")


def test_unreadable_and_malformed_images(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(ValueError, match=r"Cannot read .* as an image"):
        load_image(fake)
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, 3\).*transpose"):
        load_image(np.zeros((3, 8, 8, 2)))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        load_image(np.full((8, 8, 3), 3.5))
    with pytest.raises(ValueError, match="single image"):
        load_image(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        load_image(torch.rand(1, 4, 8, 8))
    with pytest.raises(TypeError, match="Cannot make an image from int"):
        load_image(42)
    with pytest.raises(ValueError, match=r"size must be an integer"):
        load_image("cat", size=0)
    with pytest.raises(ValueError, match="Unknown example image"):
        viztools.example_image("dog")


def test_to_numpy_image_rejects_batches():
    with pytest.raises(ValueError, match="Index one image"):
        to_numpy_image(torch.rand(2, 3, 4, 4))


def test_tensor_pixels_are_checked_like_every_image():
    with pytest.raises(ValueError, match=r"must hold pixel values in \[0, 1\].*divide by 255"):
        load_image(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="looks normalized"):
        load_image(torch.rand(3, 8, 8) - 0.5)


def test_photo_crops_are_deterministic_pixels() -> None:
    crops = PhotoCrops(4, size=32, seed=5)
    again = PhotoCrops(4, size=32, seed=5)
    assert crops[3].shape == (3, 32, 32) and crops[3].min() >= 0 and crops[3].max() <= 1
    assert torch.equal(crops[3], again[3])
    assert not torch.equal(crops[3], PhotoCrops(4, size=32, seed=6)[3])
    with pytest.raises(IndexError):
        crops[4]
    with pytest.raises(ValueError, match="example image names"):
        PhotoCrops(2, photos=["kat"])


def test_image_source_reads_tensors_data_sets_and_checks_pixels() -> None:
    images = torch.rand(5, 3, 8, 8)
    source = ImageSource(images)
    assert len(source) == 5 and torch.equal(source.image(3), images[3])
    batches = list(source.batches(2))
    assert [start for start, _, _ in batches] == [0, 2, 4] and all(labels is None for _, _, labels in batches)
    dataset = [(images[i], i % 2) for i in range(5)]
    (_, pixels, labels), *_ = ImageSource(dataset).batches(5)
    assert torch.equal(pixels, images) and labels.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="empty"):
        ImageSource(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match=r"images 0\.\.1 contains NaN"):
        list(ImageSource(torch.full((2, 3, 4, 4), float("nan"))).batches(4))


def test_the_generated_painting_is_deterministic_and_looks_like_a_night_sky_of_strokes() -> None:
    """viztools.artwork.starry_strokes: same seed, same picture; blue sky, yellow stars, brush-stroke texture."""
    from scipy import ndimage

    from viztools.artwork import starry_strokes

    painting = viztools.example_image("starry_strokes")
    assert painting.shape == (512, 512, 3) and painting.dtype == np.uint8
    assert np.array_equal(painting, starry_strokes(512, seed=0))
    assert not np.array_equal(starry_strokes(128, seed=0), starry_strokes(128, seed=1))
    painting[0, 0] = 0  # a copy: the cached painting is not changed
    assert np.array_equal(starry_strokes()[1:], painting[1:])
    red, green, blue = painting.reshape(-1, 3).astype(float).T
    assert (blue > red + 40).mean() > 0.5, "mostly blue"
    assert ((red > 180) & (green > 140) & (blue < 120)).mean() > 0.01, "yellow stars"
    grey = painting.mean(axis=2)
    detail = np.abs(grey - ndimage.gaussian_filter(grey, 2)).mean()
    assert detail > 4, "strokes and their relief, not a smooth gradient"
    with pytest.raises(ValueError, match=r"size must be an integer in \[64, 4096\]"):
        starry_strokes(8)
