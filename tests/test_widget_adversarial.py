"""AdversarialExplorer (lecture 09): fooling images live, FGSM and iterative FGSM, top-5 before and after."""

from __future__ import annotations

import pytest
import torch

import viztools
from viztools.hooks import has_hooks
from viztools.widgets import adversarial as widget_module
from viztools.widgets._common import decode_png
from viztools.widgets.adversarial import AdversarialExplorer
from viztools.widgets.base import Frame


@pytest.fixture
def model():
    return viztools.load_model("glyphnet")


@pytest.fixture
def sun() -> torch.Tensor:
    return viztools.make_glyphworld(1, seed=3)[0]  # a sun, classified with p = 1.00


def test_fooling_image_grows_live_and_fools_the_network(model, sun):
    explorer = AdversarialExplorer(model, sun, "music note").wait()
    assert explorer.last_error is None and explorer.final
    result = explorer.shown.result
    assert isinstance(explorer.shown, Frame) and result.success and result.prediction_name == "music note"
    assert len(explorer.shown.history) == result.steps
    picture = decode_png(explorer.png())
    assert picture.shape[1] > 2.5 * picture.shape[0]  # original | adversarial | difference
    assert "before" in explorer.side.value and "after" in explorer.side.value and "music note" in explorer.side.value
    explorer.close()


def test_fgsm_respects_the_epsilon_budget_in_grey_levels(model, sun):
    explorer = AdversarialExplorer(model, sun, method="FGSM", epsilon=4.0).wait()
    result = explorer.shown
    assert result.linf_levels == pytest.approx(4.0, abs=1e-3) and not result.targeted
    explorer.epsilon_slider.value = 8.0
    explorer.method_picker.value = "iterative FGSM"
    explorer.wait()
    assert explorer.shown.linf_levels <= 8.0 + 1e-3 and explorer.shown.steps > 1
    explorer.targeted_box.value = True
    explorer.wait()
    assert explorer.shown.targeted and explorer.shown.attacked_class == explorer.class_picker.index
    explorer.close()


def test_magnification_is_display_only(model, sun, monkeypatch):
    calls = []
    original = widget_module.fgsm
    monkeypatch.setattr(widget_module, "fgsm", lambda *a, **k: calls.append(k) or original(*a, **k))
    explorer = AdversarialExplorer(model, sun, method="FGSM").wait()
    before = explorer.png()
    explorer.magnify_slider.value = 40
    assert len(calls) == 1 and explorer.png() != before
    explorer.magnify_slider.value = 10
    assert explorer.png() == before
    explorer.close()


def test_close_leaves_the_model_clean(model, sun):
    explorer = AdversarialExplorer(model, sun, "star").wait()
    explorer.close()
    assert not has_hooks(model.network) and not model.network.training
