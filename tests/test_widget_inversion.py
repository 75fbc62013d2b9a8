"""InversionExplorer without a browser: live frames, the cache, comparing two layers, supersession, Stop, errors."""

from __future__ import annotations

import datetime
import time

import pytest
import torch

import viztools
from viztools.hooks import has_hooks
from viztools.widgets import InversionExplorer
from viztools.widgets import inversion as inversion_widget
from viztools.widgets._common import decode_png

STEPS = 20


@pytest.fixture(scope="module")
def heart() -> torch.Tensor:
    images, labels = viztools.make_glyphworld(1, start=5)
    assert viztools.GLYPHWORLD_CLASSES[int(labels[0])] == "heart"
    return images


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The layers the widget inverts, in order (the real optimization still runs)."""
    layers: list[str] = []
    real = inversion_widget.invert_features_optimization

    def counting(model, image, **options):
        layers.append(options["layer"])
        return real(model, image, **options)

    monkeypatch.setattr(inversion_widget, "invert_features_optimization", counting)
    return layers


def make(model, image, **options) -> InversionExplorer:
    return InversionExplorer(model, image, **{"steps": STEPS, "layer": "conv2", "scale": 0.5, **options})


def test_reconstruction_beside_original_and_curves_display_setting_and_cache(glyphnet, heart, calls):
    explorer = make(glyphnet, heart).wait()
    assert explorer.last_error is None and explorer.final and calls == ["conv2"]
    result = explorer.shown.result
    assert result.layer == "conv2" and result.steps == STEPS and "RMS pixel error" in explorer.summary.value
    picture = decode_png(explorer.png())
    assert picture.shape[1] > 3 * explorer.panel, "original | reconstruction | loss curves"
    assert set(result.history[0]) >= {"feature match conv2", "total variation"}
    first = explorer.png()
    explorer.log_box.value = False
    assert explorer.png() != first and calls == ["conv2"], "the chart's scale is display-only"
    explorer.log_box.value = True
    assert explorer.png() == first
    explorer.steps_slider.value = 30
    explorer.wait()
    assert explorer.shown.result.steps == 30 and calls == ["conv2", "conv2"]
    explorer.steps_slider.value = STEPS
    assert explorer.png() == first and len(calls) == 2, "revisited settings come from the cache"
    explorer.close()


def test_compare_reconstructs_the_second_layer_after_the_first(glyphnet, heart, calls):
    explorer = make(glyphnet, heart, compare="conv4")
    assert not explorer.second_picker.disabled
    explorer.wait()
    assert calls == ["conv2", "conv4"] and explorer.last_error is None
    shown = explorer.shown
    assert isinstance(shown, inversion_widget.SecondFrame) and shown.final
    assert shown.first.result.layer == "conv2" and shown.result.layer == "conv4"
    assert "from conv2" in explorer.summary.value and "from conv4" in explorer.summary.value
    other = make(glyphnet, heart).wait()
    assert decode_png(explorer.png()).shape[1] > decode_png(other.png()).shape[1], "a third panel"
    other.close()
    explorer.compare_box.value = False
    assert explorer.second_picker.disabled
    explorer.wait()
    assert explorer.shown_key[2] is None and calls[-1] == "conv2"
    explorer.close()


def test_newer_setting_supersedes_the_running_optimization(glyphnet, heart, calls):
    explorer = make(glyphnet, heart, steps=1000)
    time.sleep(0.3)
    explorer.layer_picker.value = "conv1"
    explorer.steps_slider.value = STEPS
    explorer.wait(60)
    assert explorer.last_error is None and explorer.shown.result.layer == "conv1"
    assert [key[1] for key in explorer._cache] == ["conv1"], "the stopped run is not cached"
    explorer.close()


def test_stop_in_the_second_run_pauses_with_both_layers_shown(glyphnet, heart, monkeypatch):
    real = inversion_widget.invert_features_optimization

    def short_first(model, image, **options):  # a quick first layer, a long second one
        return real(model, image, **{**options, "steps": STEPS if options["layer"] == "conv2" else 1000})

    monkeypatch.setattr(inversion_widget, "invert_features_optimization", short_first)
    explorer = make(glyphnet, heart, compare="conv4")
    deadline = time.time() + 30
    while not isinstance(explorer.shown, inversion_widget.SecondFrame) and time.time() < deadline:
        time.sleep(0.05)
    explorer.stop()
    while not explorer.shown.paused and time.time() < deadline:
        time.sleep(0.05)
    assert isinstance(explorer.shown, inversion_widget.SecondFrame) and explorer.shown.first.result.layer == "conv2"
    paused = explorer.png()
    explorer.resume()
    explorer.compare_box.value = False  # a newer request ends the long run
    explorer.wait(60)
    assert explorer.png() != paused and explorer.last_error is None and explorer.shown.result.layer == "conv2"
    explorer.close()


def test_errors_show_in_the_widget(glyphnet, heart, monkeypatch):
    explorer = make(glyphnet, heart).wait()
    explorer.image_picker.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 4,
                                           "content": memoryview(b"text"), "last_modified": datetime.datetime.now()},)
    assert isinstance(explorer.last_error, ValueError) and "not an image" in str(explorer.last_error)

    def broken(model, image, **options):
        raise RuntimeError("inversion failed")

    monkeypatch.setattr(inversion_widget, "invert_features_optimization", broken)
    explorer.tv_slider.value = 10.0
    explorer.wait()
    assert isinstance(explorer.last_error, RuntimeError) and "inversion failed" in explorer.errors.value
    explorer.close()


def test_close_mid_run_leaves_no_hooks_and_the_model_unchanged(glyphnet, heart):
    weights = {name: value.clone() for name, value in glyphnet.network.state_dict().items()}
    explorer = make(glyphnet, heart, steps=1000, compare="conv3")
    time.sleep(0.3)
    explorer.close()
    explorer.wait(30)
    assert not explorer.busy and not has_hooks(glyphnet.network) and not glyphnet.network.training
    assert all(torch.equal(value, weights[name]) for name, value in glyphnet.network.state_dict().items())
    assert not any(p.requires_grad for p in glyphnet.network.parameters())
