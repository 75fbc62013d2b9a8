"""ClassVisualizer's recipe choice: classic pixels (L2, jitter, blur) or Fourier + robust (Olah et al. 2017)."""

from __future__ import annotations

import pytest

from viztools.widgets import class_visualization as widget_module
from viztools.widgets.class_visualization import ClassVisualizer


def test_recipe_toggle_runs_fourier_disables_the_classic_controls_and_keeps_the_size(glyphnet, monkeypatch):
    calls = []
    original = widget_module.class_visualization_optimization

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(widget_module, "class_visualization_optimization", recording)
    explorer = ClassVisualizer(glyphnet, "heart", steps=10, size=64).wait()
    classic_png = explorer.png()
    assert calls[-1]["parametrization"] == "pixels" and calls[-1]["size"] == 64
    assert calls[-1]["l2"] == explorer.l2_slider.value and not explorer.blur_slider.disabled
    explorer.method_picker.value = "fourier"
    explorer.wait()
    assert explorer.last_error is None
    assert calls[-1]["parametrization"] == "fourier"
    assert (calls[-1]["l2"], calls[-1]["jitter"], calls[-1]["blur_every"]) == (None, None, None)  # Fourier defaults
    assert explorer.l2_slider.disabled and explorer.jitter_slider.disabled and explorer.blur_slider.disabled
    assert explorer.png() != classic_png
    explorer.l2_slider.value = 0.1  # a classic-only setting does not start a new Fourier run
    explorer.wait()
    assert calls[-1]["parametrization"] == "fourier" and len(calls) == 2
    explorer.close()


def test_unknown_recipe_says_what_to_choose(glyphnet):
    with pytest.raises(ValueError, match=r"Unknown parametrization 'fourer'.*fourier"):
        ClassVisualizer(glyphnet, "heart", parametrization="fourer")
