"""Example images, files, arrays and tensors become (1, 3, S, S) pixel tensors; bad input gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import viztools
from viztools.data import load_image, to_numpy_image


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
    with pytest.raises(ValueError, match="shape"):
        load_image(torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="Cannot make an image from int"):
        load_image(42)
    with pytest.raises(ValueError, match=r"size must be an integer"):
        load_image("cat", size=0)
    with pytest.raises(ValueError, match="Unknown example image"):
        viztools.example_image("dog")


def test_to_numpy_image_rejects_batches():
    with pytest.raises(ValueError, match="Index one image"):
        to_numpy_image(torch.rand(2, 3, 4, 4))
