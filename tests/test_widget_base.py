"""The explorer base (viztools.widgets.base) through ClassVisualizer, and the reusable controls."""

from __future__ import annotations

import io
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from PIL import Image

import viztools
from viztools.hooks import has_hooks
from viztools.widgets import class_visualization as widget_module
from viztools.widgets._common import decode_png
from viztools.widgets.base import Explorer, Frame
from viztools.widgets.charts import loss_curves
from viztools.widgets.class_visualization import ClassVisualizer
from viztools.widgets.controls import ClassPicker, ImagePicker, LayerPicker, decode_upload, predictions_html


@pytest.fixture
def model():
    return viztools.load_model("glyphnet")


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records every call of the technique's live form made by the widget."""
    calls: list[dict] = []
    original = widget_module.class_visualization_optimization

    def counting(model, image=None, target=None, **options):
        calls.append({"target": target, **options})
        return original(model, image, target, **options)

    monkeypatch.setattr(widget_module, "class_visualization_optimization", counting)
    return calls


def test_live_frames_then_a_final_result_and_the_score_rises(model, runs):
    explorer = ClassVisualizer(model, "heart", steps=20).wait()
    assert explorer.last_error is None and explorer.final
    frame = explorer.shown
    assert isinstance(frame, Frame) and frame.result is not None and len(frame.history) == 20
    assert frame.result.class_name == "heart" and frame.result.probability > 0.5
    picture = decode_png(explorer.png())
    assert picture.shape[1] > picture.shape[0] > 100  # image and score curve side by side
    assert "p(heart)" in explorer.summary.value
    assert explorer.progress.caption.value.startswith("done in")
    assert len(runs) == 1 and runs[0]["target"] == model.class_index("heart")
    explorer.close()


def test_compute_settings_recompute_and_revisits_come_from_the_cache(model, runs):
    explorer = ClassVisualizer(model, "heart", steps=10).wait()
    first = explorer.png()
    explorer.l2_slider.value = 1e-1
    explorer.wait()
    assert len(runs) == 2 and explorer.png() != first
    explorer.l2_slider.value = 1e-3
    assert len(runs) == 2 and explorer.progress.caption.value == "shown from cache" and explorer.png() == first
    explorer.class_picker.value = "star"
    explorer.wait()
    assert len(runs) == 3 and runs[-1]["target"] == model.class_index("star")
    explorer.close()


def test_unknown_class_is_shown_in_the_widget_and_recorded(model, runs):
    explorer = ClassVisualizer(model, "heart", steps=5).wait()
    explorer.class_picker.value = "hart"
    assert isinstance(explorer.last_error, ValueError) and "Did you mean 'heart'" in str(explorer.last_error)
    assert "viztools-error" in explorer.errors.value
    explorer.close()


def test_newer_setting_supersedes_stale_work_and_stop_pauses_with_the_best_image(model):
    explorer = ClassVisualizer(model, "heart", steps=1000)
    deadline = time.time() + 10
    while explorer.shown is None and time.time() < deadline:
        time.sleep(0.01)
    explorer.stop()
    deadline = time.time() + 10
    while not getattr(explorer.shown, "paused", False) and time.time() < deadline:
        time.sleep(0.01)
    paused = explorer.shown
    assert paused.paused and explorer.busy and explorer.continue_button.disabled is False
    time.sleep(0.3)
    assert explorer.shown is paused  # nothing moves while paused
    explorer.steps_slider.value = 10  # a newer setting ends the paused run and starts a short one
    explorer.wait(30)
    assert explorer.final and explorer.shown.result.steps == 10 and explorer.last_error is None
    explorer.close()


def test_background_errors_are_shown_and_recorded(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the technique failed")

    monkeypatch.setattr(widget_module, "class_visualization_optimization", broken)
    explorer = ClassVisualizer(model, "heart", steps=5).wait()
    assert isinstance(explorer.last_error, RuntimeError) and "the technique failed" in explorer.errors.value
    assert explorer.progress.bar.bar_style == "danger"
    explorer.close()


def test_scale_grows_panels_and_text_together(model):
    small = ClassVisualizer(model, "heart", steps=3).wait()
    large = ClassVisualizer(model, "heart", steps=3, scale=1.5).wait()
    small_shape, large_shape = decode_png(small.png()).shape, decode_png(large.png()).shape
    assert large_shape[0] == pytest.approx(1.5 * small_shape[0], rel=0.05)
    assert large_shape[1] == pytest.approx(1.5 * small_shape[1], rel=0.05)
    assert (small.font_size, large.font_size) == (13, 20)
    with pytest.raises(ValueError, match="scale must be"):
        ClassVisualizer(model, "heart", scale=5)
    small.close()
    large.close()


def test_close_leaves_no_hooks_and_the_model_unchanged(model):
    state = {k: v.clone() for k, v in model.network.state_dict().items()}
    explorer = ClassVisualizer(model, "heart", steps=200)
    time.sleep(0.2)
    explorer.close()
    time.sleep(0.3)
    assert not any(t.name.startswith("viztools-ClassVisualizer") and t.is_alive() for t in threading.enumerate())
    assert not has_hooks(model.network) and not model.network.training
    assert all(torch.equal(v, state[k]) for k, v in model.network.state_dict().items())


def test_a_plain_module_is_refused_with_a_message_that_says_how_to_wrap_it():
    with pytest.raises(TypeError, match="VizModel"):
        ClassVisualizer(torch.nn.Conv2d(3, 3, 1), "heart")


def test_explorer_subclasses_must_supply_compute_and_draw(model):
    with pytest.raises(NotImplementedError):
        Explorer(model).compute_key()


def test_class_picker_ranks_top_predictions_first_and_resolves_typed_names(model):
    image = viztools.make_glyphworld(1, seed=3)[0]
    picker = ClassPicker(model, image)
    top = model.top_k(image, k=5)
    assert list(picker.options[:5]) == [name for _, name, _ in top] and picker.index == top[0][0]
    assert picker.resolve("star") == model.class_index("star") == picker.index
    assert picker.resolve("3") == 3 and picker.resolve("  ") is None
    with pytest.raises(ValueError, match="Did you mean"):
        picker.resolve("hart")


def test_layer_picker_offers_the_models_layers_and_rejects_unknown_ones(model):
    assert list(LayerPicker(model).options) == list(model.layers)
    with pytest.raises(ValueError, match="Unknown layer 'conv9'"):
        LayerPicker(model, "conv9")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_picker_takes_examples_and_uploads_and_explains_bad_files():
    picker = ImagePicker("coffee", size=32)
    assert picker.pixels.shape == (1, 3, 32, 32) and picker.value == "coffee"
    red = np.zeros((40, 50, 3), dtype=np.uint8)
    red[..., 0] = 255
    picker.upload.value = ({"name": "red.png", "type": "image/png", "size": 1, "content": memoryview(_png(red)),
                            "last_modified": datetime.now(tz=timezone.utc)},)
    picker.take_upload()
    assert picker.value == "(your image)"
    torch.testing.assert_close(picker.pixels[0, :, 5, 5], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"'notes\.txt' is not an image.*PNG or JPEG"):
        decode_upload(b"just text", "notes.txt", 32)


def test_predictions_table_bolds_the_highlighted_class_even_outside_the_top_5(model):
    image = viztools.make_glyphworld(1, seed=3)[0]
    least = int(model.predict(image)[0].argmin())
    table = predictions_html(model, image, highlight=least)
    assert table.count("<tr") == 6 and 'font-weight:bold"><td>#.' in table


def test_loss_curves_draw_one_line_per_term_inside_the_frame():
    history = [{"a": 10.0 / (step + 1), "b": 1.0} for step in range(20)]
    chart = loss_curves(history, (120, 200), font_size=12)
    assert chart.shape == (120, 200, 3)
    assert not (chart == 255).all()
    assert loss_curves([], (50, 80)).shape == (50, 80, 3)
    assert loss_curves(history, (120, 30)).shape == (120, 30, 3)  # too narrow for the chart: no error
