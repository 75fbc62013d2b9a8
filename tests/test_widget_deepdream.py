"""DeepDreamExplorer without a browser: live frames across octaves, display-only redraws, cache, supersession,
Stop/Continue, uploads and errors, and a clean model after close()."""

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
from viztools.widgets import DeepDreamExplorer
from viztools.widgets import deepdream as widget_module
from viztools.widgets._common import decode_png
from viztools.widgets.base import Frame
from viztools.widgets.controls import UPLOADED

SMALL = {"size": 64, "steps": 3, "octaves": 2}


@pytest.fixture(scope="module")
def model(glyphnet: VizModel) -> VizModel:
    return glyphnet


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records every call of deepdream_optimization made by the widget (the real one still runs)."""
    calls: list[dict] = []
    real = widget_module.deepdream_optimization

    def counting(model, image, **options):
        calls.append({"image": image, **options})
        return real(model, image, **options)

    monkeypatch.setattr(widget_module, "deepdream_optimization", counting)
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


def test_dream_grows_over_octaves_beside_the_original(model, runs):
    explorer = DeepDreamExplorer(model, "cat", "conv2", **SMALL).wait()
    assert explorer.last_error is None and explorer.final
    frame = explorer.shown
    assert isinstance(frame, Frame) and len(frame.history) == 6  # 2 octaves x 3 steps
    assert frame.result.octave_sizes == [(46, 46), (64, 64)] and frame.result.layer == "conv2"
    assert not torch.equal(frame.image, frame.result.original)
    picture = decode_png(explorer.png())
    side = explorer.panel
    assert picture.shape[1] > 2 * side  # original, dream and the objective curve side by side
    original_panel, dream_panel = picture[-side:, :side], picture[-side:, side + 10:2 * side + 10]
    assert np.abs(original_panel.astype(int) - dream_panel).mean() > 1
    assert "grew" in explorer.summary.value and "conv2" in explorer.summary.value
    assert len(runs) == 1 and runs[0]["layer"] == "conv2" and runs[0]["octaves"] == 2
    assert callable(runs[0]["should_stop"])
    assert explorer.layer_picker.options == ("conv1", "conv2", "conv3", "conv4"), "only layers with feature maps"
    explorer.close()


def test_view_redraws_from_the_cache_and_revisits_are_not_recomputed(model, runs):
    explorer = DeepDreamExplorer(model, **SMALL).wait()
    dream = explorer.png()
    explorer.view_toggle.value = "added detail"
    detail = explorer.png()
    assert detail != dream and not explorer.busy and len(runs) == 1
    explorer.view_toggle.value = "dream"
    assert explorer.png() == dream
    explorer.lr_slider.value = 0.05
    explorer.wait()
    assert len(runs) == 2 and runs[-1]["lr"] == 0.05 and explorer.png() != dream
    explorer.octaves_slider.value = 1
    explorer.wait()
    assert len(runs) == 3 and explorer.shown.result.octave_sizes == [(64, 64)]
    explorer.octaves_slider.value = 2
    explorer.lr_slider.value = 0.01
    assert len(runs) == 3 and explorer.progress.caption.value == "shown from cache" and explorer.png() == dream
    explorer.close()


def test_a_newer_setting_supersedes_the_running_dream(model, runs):
    explorer = DeepDreamExplorer(model, "cat", "conv1", size=64, steps=200, octaves=3)
    shown_layers: list[str] = []
    explorer.picture.observe(lambda change: shown_layers.append(explorer.shown_key[1]), names="value")
    wait_for(lambda: explorer.shown is not None)
    explorer.layer_picker.value = "conv3"
    switched = len(shown_layers)
    explorer.steps_slider.value = 2
    explorer.wait()
    assert explorer.final and explorer.shown.result.layer == "conv3" and explorer.shown.result.steps == 6
    assert set(shown_layers[switched:]) == {"conv3"}, "no stale frame after the switch"
    assert runs[0]["layer"] == "conv1" and (runs[-1]["layer"], runs[-1]["steps"]) == ("conv3", 2)
    assert len(runs) <= 3, "the conv3 dream with 200 steps may be skipped before it starts"
    assert len(explorer._cache) == 1, "superseded dreams are not cached"
    explorer.close()


def test_stop_shows_the_best_so_far_and_continue_finishes(model):
    explorer = DeepDreamExplorer(model, size=64, steps=40, octaves=2)
    wait_for(lambda: explorer.shown is not None)
    explorer.stop_button.click()
    wait_for(lambda: "paused" in explorer.progress.caption.value)
    paused = explorer.shown
    assert paused.paused and explorer.busy and not explorer.continue_button.disabled
    time.sleep(0.3)
    assert explorer.shown is paused, "nothing moves while paused"
    explorer.continue_button.click()
    explorer.wait()
    assert explorer.final and explorer.shown.result.steps == 80 and explorer.last_error is None
    explorer.close()


def test_uploads_are_dreamed_and_bad_files_are_explained(model, runs):
    explorer = DeepDreamExplorer(model, **SMALL).wait()
    upload(explorer.image_picker, png_of((200, 30, 30)), "red.png")
    explorer.wait()
    assert explorer.image_picker.key == (UPLOADED, 1) and len(runs) == 2
    torch.testing.assert_close(runs[-1]["image"][0, :, 0, 0], torch.tensor([200, 30, 30]) / 255)
    upload(explorer.image_picker, png_of((30, 30, 200)), "blue.png")
    explorer.wait()
    assert explorer.image_picker.key == (UPLOADED, 2) and len(runs) == 3, "a second upload is a new image"
    upload(explorer.image_picker, b"not a picture", "notes.txt")
    assert isinstance(explorer.last_error, ValueError) and "notes.txt" in explorer.errors.value
    assert explorer.image_picker.key == (UPLOADED, 2) and len(runs) == 3
    explorer.close()


def test_errors_are_shown_and_recorded(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the dream fell apart")

    explorer = DeepDreamExplorer(model, **SMALL).wait()
    monkeypatch.setattr(widget_module, "deepdream_optimization", broken)
    explorer.steps_slider.value = 4
    explorer.wait()
    assert isinstance(explorer.last_error, RuntimeError) and "the dream fell apart" in explorer.errors.value
    assert explorer.progress.bar.bar_style == "danger"
    explorer.close()


def test_close_leaves_no_hooks_and_the_model_unchanged(model):
    state = {name: value.clone() for name, value in model.network.state_dict().items()}
    explorer = DeepDreamExplorer(model, size=64, steps=200, octaves=2)
    wait_for(lambda: explorer.shown is not None)
    explorer.close()
    explorer.wait()
    assert not has_hooks(model.network) and not model.network.training
    assert all(torch.equal(value, state[name]) for name, value in model.network.state_dict().items())
