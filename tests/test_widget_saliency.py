"""SaliencyExplorer without a browser: set control values, assert on image bytes, the cache, supersession, errors."""

from __future__ import annotations

import datetime
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import viztools
from viztools.hooks import has_hooks
from viztools.widgets import SaliencyExplorer
from viztools.widgets import saliency as saliency_widget
from viztools.widgets._common import decode_png
from viztools.widgets.controls import UPLOADED


@pytest.fixture(scope="module")
def star() -> torch.Tensor:
    images, labels = viztools.make_glyphworld(1, start=6)
    assert viztools.GLYPHWORLD_CLASSES[int(labels[0])] == "star"
    return images


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each map the widget computes (the real techniques still run)."""
    made: list[str] = []
    for name, function in list(saliency_widget._CLASS_MAPS.items()):
        def counting(model, image, target, name=name, function=function):
            made.append(name)
            return function(model, image, target)
        monkeypatch.setitem(saliency_widget._CLASS_MAPS, name, counting)
    real_neuron = saliency_widget.neuron_gradient

    def neuron(model, image, **options):
        made.append(f"neuron {options.get('rule')}")
        return real_neuron(model, image, **options)

    monkeypatch.setattr(saliency_widget, "neuron_gradient", neuron)
    return made


def upload(explorer: SaliencyExplorer, content: bytes, name: str) -> None:
    explorer.image_picker.upload.value = ({"name": name, "type": "image/png", "size": len(content),
                                           "content": memoryview(content), "last_modified": datetime.datetime.now()},)


def test_map_beside_image_with_top5_and_display_settings_from_the_cache(glyphnet, star, calls):
    explorer = SaliencyExplorer(glyphnet, star, scale=0.5).wait()
    assert explorer.last_error is None and calls == ["saliency"]
    side = explorer.panel
    picture = decode_png(explorer.png())
    assert picture.shape[1] == 2 * side + 10 and picture.shape[0] > side, "image | map"
    assert "<b>star</b>" in explorer.summary.value and "Top-5" in explorer.side.value
    assert explorer.class_picker.options[0] == "star" and explorer.progress.bar.bar_style == "success"
    first = explorer.png()
    explorer.clip_slider.value = 95.0
    assert explorer.png() != first, "a lower clip saturates more pixels"
    explorer.clip_slider.value = 99.0
    assert explorer.png() == first and calls == ["saliency"], "display settings redraw from the cache"
    explorer.method_picker.value = "guided backprop"
    explorer.wait()
    guided = explorer.png()
    explorer.method_picker.value = "saliency"
    assert explorer.png() == first and calls == ["saliency", "guided backprop"], "revisits come from the cache"
    explorer.compare_box.value = True
    explorer.wait()
    assert decode_png(explorer.png()).shape[1] > decode_png(guided).shape[1], "compare all: image and six maps"
    assert calls[2:] == ["saliency", "guided backprop", "deconvnet", "Grad-CAM", "SmoothGrad", "Integrated Gradients"]
    explorer.close()


def test_grad_cam_smooth_grad_and_integrated_gradients_are_offered(glyphnet, star):
    """The methods practitioners use today: the widget shows exactly the library's maps (lecture 04, section 6)."""
    from viztools.grad_cam import grad_cam
    from viztools.integrated_gradients import integrated_gradients
    from viztools.smooth_grad import smooth_grad

    explorer = SaliencyExplorer(glyphnet, star, method="Grad-CAM", scale=0.5).wait()
    target, pixels = explorer.shown_key[1], explorer.shown.image
    expected = {
        "Grad-CAM": grad_cam(glyphnet, pixels, target).attribution,
        "SmoothGrad": smooth_grad(glyphnet, pixels, target, samples=16).saliency,
        "Integrated Gradients": integrated_gradients(glyphnet, pixels, target, steps=20).attribution.abs().sum(dim=0),
    }
    pictures = set()
    for method, reference in expected.items():
        explorer.method_picker.value = method
        explorer.wait()
        assert explorer.last_error is None and list(explorer.shown.maps) == [method]
        np.testing.assert_allclose(explorer.shown.maps[method], reference.numpy(), rtol=1e-4, atol=1e-6)
        assert f"{method} " in explorer.summary.value
        pictures.add(explorer.png())
    assert len(pictures) == 3
    explorer.close()


def test_held_colour_scale_keeps_a_weak_map_weak(glyphnet, star):
    explorer = SaliencyExplorer(glyphnet, star, scale=0.5).wait()
    own = dict(explorer._scales)
    explorer.hold_box.value = True
    explorer.class_picker.value = "umbrella"
    explorer.wait()
    assert explorer.last_error is None and explorer._scales == own, "held: the star's scale is kept"
    assert "(held)" in explorer.summary.value
    held = explorer.png()
    explorer.hold_box.value = False
    assert explorer._scales != own and explorer.png() != held, "released: the map's own scale"
    explorer.close()


def test_neuron_gradient_shows_the_unit_and_its_receptive_field(glyphnet, star, calls):
    explorer = SaliencyExplorer(glyphnet, star, method="neuron gradient", layer="conv2", channel=3, scale=0.5).wait()
    assert explorer.last_error is None and calls == ["neuron plain"]
    assert not explorer.layer_picker.disabled and explorer.class_picker.disabled
    assert "conv2</b> channel 3" in explorer.summary.value and "receptive field" in explorer.summary.value
    explorer.channel_slider.value = 40
    explorer.layer_picker.value = "conv1"  # 24 channels: the unit is clamped
    explorer.wait()
    assert explorer.channel_slider.max == 23 and explorer.channel_slider.value == 23
    assert explorer.shown_key[3] == ("conv1", 23) and explorer.last_error is None
    explorer.compare_box.value = True
    explorer.wait()
    assert calls[-3:] == ["neuron plain", "neuron guided", "neuron deconvnet"]
    explorer.method_picker.value = "deconvnet"
    assert explorer.layer_picker.disabled and not explorer.class_picker.disabled
    explorer.close()


def test_a_newer_setting_supersedes_stale_work(glyphnet, star, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = saliency_widget._CLASS_MAPS["guided backprop"]

    def slow(model, image, target):
        started.set()
        release.wait(10)
        return real(model, image, target)

    monkeypatch.setitem(saliency_widget._CLASS_MAPS, "guided backprop", slow)
    explorer = SaliencyExplorer(glyphnet, star, scale=0.5).wait()
    explorer.method_picker.value = "guided backprop"
    assert started.wait(10)
    explorer.method_picker.value = "deconvnet"
    release.set()
    explorer.wait()
    assert explorer.shown_key[2] == "deconvnet" and explorer.last_error is None
    assert not any(key[2] == "guided backprop" for key in explorer._cache), "stale work is not cached"
    explorer.close()


def test_other_images_and_uploads_rank_the_classes_and_errors_show(glyphnet, star):
    explorer = SaliencyExplorer(glyphnet, star, scale=0.5).wait()
    before = explorer.png()
    explorer.image_picker.dropdown.value = "coffee"
    explorer.wait()
    top = glyphnet.top_k(explorer.image_picker.pixels, k=1)[0][1]
    assert explorer.class_picker.value == top and explorer.shown_key[:2] == ("coffee", glyphnet.class_index(top))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    upload(explorer, buffer.getvalue(), "red.png")
    explorer.wait()
    assert explorer.shown_key[0] == (UPLOADED, 1) and explorer.last_error is None and explorer.png() != before
    upload(explorer, b"not an image", "notes.txt")
    assert isinstance(explorer.last_error, ValueError) and "not an image" in str(explorer.last_error)
    assert "not an image" in explorer.errors.value
    explorer.class_picker.value = "unicorn"
    assert isinstance(explorer.last_error, ValueError) and "unicorn" in str(explorer.last_error)
    explorer.close()


def test_close_leaves_no_hooks_and_the_model_unchanged(glyphnet, star):
    weights = {name: value.clone() for name, value in glyphnet.network.state_dict().items()}
    explorer = SaliencyExplorer(glyphnet, star, method="neuron gradient", compare=True, scale=0.5)
    explorer.class_picker.value = "heart"
    explorer.close()
    explorer.wait()
    assert not has_hooks(glyphnet.network) and not glyphnet.network.training
    assert all(torch.equal(value, weights[name]) for name, value in glyphnet.network.state_dict().items())
    assert not any(p.requires_grad for p in glyphnet.network.parameters())


def test_bad_layer_is_refused_with_the_choices(glyphnet, star):
    with pytest.raises(ValueError, match="conv1"):
        SaliencyExplorer(glyphnet, star, method="neuron gradient", layer="features")


def test_an_all_zero_map_is_drawn_grey_and_said_to_be_zero(glyphnet, star, monkeypatch):
    monkeypatch.setitem(saliency_widget._CLASS_MAPS, "deconvnet", lambda model, image, target: torch.zeros(3, 64, 64))
    explorer = SaliencyExplorer(glyphnet, star, method="deconvnet", scale=0.5).wait()
    assert explorer.last_error is None and "deconvnet (all zero)" in explorer.summary.value
    explorer.hold_box.value = True
    assert explorer.last_error is None and explorer._held == {}, "nothing to hold"
    explorer.close()
