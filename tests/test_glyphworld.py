"""GlyphWorld is deterministic, balanced and drawn as described; the shipped GlyphNet classifies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import viztools
from viztools.glyphworld import (
    BACKGROUNDS,
    CLASS_NAMES,
    GLYPHS,
    GlyphWorld,
    background_of,
    glyph_mask,
    make_glyphworld,
    render_sample,
)
from viztools.models import GLYPHNET_WEIGHTS


def test_samples_depend_only_on_seed_and_index():
    first, label = render_sample(7, seed=3)
    again, _ = render_sample(7, seed=3)
    np.testing.assert_array_equal(first, again)
    assert label == 7
    assert not np.array_equal(first, render_sample(7, seed=4)[0])
    images, labels = make_glyphworld(4, seed=3, start=5)
    np.testing.assert_array_equal(images[2].permute(1, 2, 0).numpy(), first)
    assert labels.tolist() == [5, 6, 7, 8]


def test_images_and_labels():
    images, labels = make_glyphworld(20, seed=0)
    assert images.shape == (20, 3, 64, 64) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert torch.bincount(labels, minlength=10).tolist() == [2] * 10
    dataset = GlyphWorld(20, seed=0)
    pixels, label = dataset[13]
    torch.testing.assert_close(pixels, images[13])
    assert label == 3 and len(dataset) == 20 and dataset.classes == CLASS_NAMES
    with pytest.raises(IndexError):
        dataset[20]


def test_background_names_the_photograph_behind_each_sample():
    names = [background_of(index, seed=1) for index in range(40)]
    assert set(names) <= set(BACKGROUNDS) and len(set(names)) > 5
    dataset = GlyphWorld(10, seed=1, start=30)
    assert [dataset.background(i) for i in range(10)] == names[30:]
    with pytest.raises(IndexError):
        dataset.background(10)
    # Greyscale photographs give grey pixels (R = G = B) everywhere but on the coloured glyph; colour photos don't.
    grey_photos = {"camera", "brick", "grass", "gravel"}
    for index, name in enumerate(names):
        image, _ = render_sample(index, seed=1)
        grey = ((image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])).mean()
        assert (grey > 0.3) == (name in grey_photos), (index, name, grey)


def test_every_glyph_renders_from_the_dejavu_font():
    assert len(GLYPHS) == 10 and "music note" in CLASS_NAMES
    sizes = {name: glyph_mask(name).size for name in CLASS_NAMES}
    for name, (width, height) in sizes.items():
        mask = np.asarray(glyph_mask(name))
        assert width > 50 and height > 50, name  # a real glyph, not the empty "missing glyph" box
        assert 0.1 < (mask > 128).mean() < 0.95, name
    assert len({np.asarray(glyph_mask(n)).tobytes() for n in CLASS_NAMES}) == 10


def test_glyphs_stand_out_from_the_background():
    """The glyph's colour is chosen to contrast with the background: the image is not just a photo crop."""
    image, _ = render_sample(0, seed=0)
    assert image.std() > 0.05


def test_shipped_weights_metadata_records_95_percent():
    metadata = json.loads(GLYPHNET_WEIGHTS.with_suffix(".json").read_text())
    assert metadata["held_out_images"] >= 2000 and metadata["held_out_accuracy"] >= 0.95
    assert metadata["categories"] == list(CLASS_NAMES) and metadata["input_size"] == 64


@pytest.mark.slow
def test_glyphnet_accuracy_on_fresh_images(glyphnet):
    images, labels = make_glyphworld(500, seed=2024)
    accuracy = float((glyphnet.predict(images).argmax(dim=1) == labels).float().mean())
    assert accuracy >= 0.93, f"GlyphNet accuracy {accuracy:.3f} on 500 fresh images"


@pytest.mark.slow
def test_training_is_deterministic_and_loadable(tmp_path):
    from viztools.training import train_glyphnet

    kwargs = dict(train_images=256, epochs=1, held_out_images=20, batch_size=64, workers=1, progress=False)
    first = train_glyphnet(tmp_path / "a.pt", **kwargs)
    train_glyphnet(tmp_path / "b.pt", **kwargs)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = viztools.load_model("glyphnet", weights=tmp_path / "a.pt")
    assert model.weights_source == str(tmp_path / "a.pt")
    metadata = json.loads((tmp_path / "a.json").read_text())
    assert metadata["held_out_accuracy"] == first.held_out_accuracy
    assert (model.categories, model.input_size) == (metadata["categories"], metadata["input_size"])
    assert (list(model.mean), list(model.std)) == (metadata["mean"], metadata["std"])
