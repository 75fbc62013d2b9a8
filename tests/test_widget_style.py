"""StyleExplorer without a browser: live per-layer Gram-matrix and content loss curves, a weight slider per style
layer, display-only redraws, cache, supersession, uploads and errors, and a clean model after close()."""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from PIL import Image

from viztools.hooks import has_hooks
from viztools.models import VizModel
from viztools.style import DEFAULT_STYLE_WEIGHT
from viztools.widgets import StyleExplorer
from viztools.widgets import style as widget_module
from viztools.widgets._common import decode_png
from viztools.widgets.base import Frame
from viztools.widgets.controls import UPLOADED

TERMS = ["content:conv3", "style:conv1", "style:conv2", "style:conv3", "style:conv4", "total variation"]


@pytest.fixture(scope="module")
def model(glyphnet: VizModel) -> VizModel:
    return glyphnet


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records every call of style_transfer_optimization made by the widget (the real one still runs)."""
    calls: list[dict] = []
    real = widget_module.style_transfer_optimization

    def counting(model, content, style, **options):
        calls.append({"content": content, "style": style, **options})
        return real(model, content, style, **options)

    monkeypatch.setattr(widget_module, "style_transfer_optimization", counting)
    return calls


def upload(picker, content: bytes, name: str) -> None:
    picker.upload.value = ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
                            "last_modified": datetime.now(tz=timezone.utc)},)


def png_of(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.01)
    assert condition()


def test_one_weight_slider_per_style_layer_and_every_loss_term_per_step(model, runs):
    explorer = StyleExplorer(model, steps=10).wait()
    assert explorer.last_error is None and explorer.final
    assert (explorer.content_picker.value, explorer.style_picker.value) == ("cat", "starry_strokes"), "a painting"
    assert [slider.description for slider in explorer.style_sliders] == ["conv1", "conv2", "conv3", "conv4"]
    assert all(slider.value == DEFAULT_STYLE_WEIGHT for slider in explorer.style_sliders)
    frame = explorer.shown
    assert isinstance(frame, Frame) and len(frame.history) == 10 and list(frame.history[0]) == TERMS
    assert frame.result.image.shape == (1, 3, 64, 64)
    picture = decode_png(explorer.png())
    assert picture.shape[1] > 2.5 * explorer.panel  # content/style column, current image and curves
    assert all(name in explorer.summary.value for name in TERMS)
    call = runs[0]
    assert (call["optimizer"], call["steps"], call["content_layer"]) == ("lbfgs", 10, "conv3")
    assert call["style_weights"] == [DEFAULT_STYLE_WEIGHT] * 4 and callable(call["should_stop"])
    explorer.close()


@pytest.mark.slow  # 200 style-transfer steps: about 3 s
def test_curves_grow_live_while_the_image_changes(model):
    explorer = StyleExplorer(model, steps=200)
    lengths: list[int] = []
    explorer.picture.observe(lambda change: lengths.append(len(explorer.shown.history)), names="value")
    explorer.wait()
    assert len(lengths) >= 3 and lengths == sorted(lengths) and lengths[-1] == 200
    assert lengths[0] < 200, "frames arrive before the optimization ends"
    explorer.close()


def test_log_scale_redraws_from_the_cache_and_revisits_are_not_recomputed(model, runs):
    explorer = StyleExplorer(model, steps=10).wait()
    first = explorer.png()
    explorer.log_box.value = False
    assert explorer.png() != first and not explorer.busy and len(runs) == 1
    explorer.log_box.value = True
    assert explorer.png() == first
    explorer.style_sliders[0].value = 100.0
    explorer.wait()
    assert len(runs) == 2 and runs[-1]["style_weights"] == [100.0] + [DEFAULT_STYLE_WEIGHT] * 3
    assert explorer.png() != first
    explorer.optimizer_toggle.value = "adam"
    explorer.wait()
    assert len(runs) == 3 and runs[-1]["optimizer"] == "adam"
    explorer.content_slider.value, explorer.tv_slider.value = 10.0, 0.01
    explorer.wait()
    assert (runs[-1]["content_weight"], runs[-1]["tv_weight"]) == (10.0, 0.01)
    explorer.content_slider.value, explorer.tv_slider.value = 1.0, 1.0
    explorer.optimizer_toggle.value = "lbfgs"
    explorer.style_sliders[0].value = DEFAULT_STYLE_WEIGHT
    assert explorer.progress.caption.value == "shown from cache" and explorer.png() == first
    explorer.close()


def test_a_newer_setting_supersedes_the_running_transfer(model, runs):
    explorer = StyleExplorer(model, steps=500)
    shown_weights: list[float] = []
    explorer.picture.observe(lambda change: shown_weights.append(explorer.shown_key[2][1]), names="value")
    wait_for(lambda: explorer.shown is not None)
    explorer.style_sliders[1].value = 0.5
    switched = len(shown_weights)
    explorer.steps_slider.value = 10
    explorer.wait()
    assert explorer.final and explorer.shown.result.steps == 10 and explorer.shown_key[2][1] == 0.5
    assert set(shown_weights[switched:]) == {0.5}, "no stale frame after the switch"
    assert runs[0]["steps"] == 500 and runs[-1]["steps"] == 10 and len(explorer._cache) == 1
    explorer.close()


def test_uploaded_style_is_used_and_bad_files_are_explained(model, runs):
    explorer = StyleExplorer(model, steps=10).wait()
    upload(explorer.style_picker, png_of((200, 30, 30)), "red.png")
    explorer.wait()
    assert explorer.style_picker.key == (UPLOADED, 1) and explorer.content_picker.value == "cat"
    torch.testing.assert_close(runs[-1]["style"][0, :, 0, 0], torch.tensor([200, 30, 30]) / 255)
    upload(explorer.content_picker, b"not a picture", "notes.txt")
    assert isinstance(explorer.last_error, ValueError) and "notes.txt" in explorer.errors.value
    assert explorer.content_picker.value == "cat" and len(runs) == 2
    explorer.close()


def test_errors_are_shown_and_recorded(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the paint dried")

    explorer = StyleExplorer(model, steps=10).wait()
    monkeypatch.setattr(widget_module, "style_transfer_optimization", broken)
    explorer.steps_slider.value = 20
    explorer.wait()
    assert isinstance(explorer.last_error, RuntimeError) and "the paint dried" in explorer.errors.value
    assert explorer.progress.bar.bar_style == "danger"
    explorer.close()


def test_close_leaves_no_hooks_and_the_model_unchanged(model):
    state = {name: value.clone() for name, value in model.network.state_dict().items()}
    explorer = StyleExplorer(model, steps=500)
    wait_for(lambda: explorer.shown is not None)
    explorer.close()
    explorer.wait()
    assert not has_hooks(model.network) and not model.network.training
    assert all(torch.equal(value, state[name]) for name, value in model.network.state_dict().items())
