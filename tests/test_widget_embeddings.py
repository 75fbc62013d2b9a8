"""EmbeddingExplorer without a browser: one FigureWidget updated in place, hover and click choosing an image and
its neighbours, the cache, supersession, errors, and a clean model after close()."""

from __future__ import annotations

import types

import pytest
import torch

from viztools.hooks import has_hooks
from viztools.models import VizModel
from viztools.widgets import EmbeddingExplorer
from viztools.widgets import embeddings as widget_module
from viztools.widgets._common import decode_png

SMALL = {"images": 60, "perplexity": 10.0}


@pytest.fixture(scope="module")
def model(glyphnet: VizModel) -> VizModel:
    return glyphnet


@pytest.fixture
def maps(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records every tsne_embedding call the widget makes (the real one still runs)."""
    calls: list[dict] = []
    real = widget_module.tsne_embedding

    def counting(model, images, **options):
        calls.append({"model": model, **options})
        return real(model, images, **options)

    monkeypatch.setattr(widget_module, "tsne_embedding", counting)
    return calls


def points(index: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(point_inds=[index])


def test_the_map_is_one_figure_coloured_by_class_and_hover_shows_neighbours(model, maps):
    explorer = EmbeddingExplorer(model, **SMALL).wait()
    assert explorer.last_error is None and explorer.layer_picker.value == "fc1"
    assert maps[0]["layer"] == "fc1" and maps[0]["perplexity"] == 10.0
    figure, traces = explorer.figure, list(explorer.figure.data)
    shown = [trace for trace in traces[:-1] if trace.visible]
    assert len(shown) == 10 and sum(len(trace.x) for trace in shown) == 60
    assert {trace.name for trace in shown} == set(model.categories)
    assert "t-SNE of fc1 features" in explorer.summary.value and "agree with the class" in explorer.summary.value
    first = explorer.png()
    assert decode_png(first).shape[1] <= explorer.panel, "the side panel stays narrow beside the map"
    star = traces[6]  # class 6 is "star"
    star._dispatch_on_hover(points(2), None)
    assert explorer.selected == star.customdata[2] and explorer.png() != first
    assert len(traces[-1].x) == 1 + widget_module.NEIGHBOURS, "the chosen point and its neighbours are ringed"
    traces[0]._dispatch_on_click(points(0), None)
    assert explorer.selected == traces[0].customdata[0]
    assert f"Image #{explorer.selected}" in explorer.summary.value
    assert len(maps) == 1 and explorer.figure is figure and list(explorer.figure.data) == traces
    explorer.close()


def test_raw_pixels_recompute_in_the_same_figure_and_revisits_come_from_the_cache(model, maps):
    explorer = EmbeddingExplorer(model, **SMALL).wait()
    traces = list(explorer.figure.data)
    explorer.select(5)
    explorer.source_picker.value = "raw pixels"
    explorer.wait()
    assert len(maps) == 2 and maps[1]["layer"] == "pixels" and maps[1]["pooling"] == "flatten"
    assert maps[1]["model"].layers == {"pixels": "0"}
    assert "t-SNE of raw pixels" in explorer.summary.value and list(explorer.figure.data) == traces
    assert explorer.selected == 5, "the same image, now with its pixel-space neighbours"
    explorer.source_picker.value = "features"
    assert not explorer.busy and len(maps) == 2 and "fc1 features" in explorer.summary.value
    explorer.close()


def test_a_new_setting_supersedes_the_old_and_errors_show_in_the_widget(model, maps, monkeypatch):
    explorer = EmbeddingExplorer(model, **SMALL).wait()
    explorer.perplexity_slider.value = 5.0
    explorer.layer_picker.value = "conv4"
    explorer.wait()
    assert explorer.shown_key == ("conv4", 5.0, "features") and explorer.last_error is None
    assert "conv4 features" in explorer.summary.value

    def failing(model, images, **options):
        raise ValueError("perplexity must be smaller than the number of images")

    monkeypatch.setattr(widget_module, "tsne_embedding", failing)
    explorer.perplexity_slider.value = 7.0
    explorer.wait()
    assert isinstance(explorer.last_error, ValueError) and "perplexity" in explorer.errors.value
    explorer.close()


def test_close_leaves_no_hooks_and_the_model_unchanged(model):
    weights = {name: p.clone() for name, p in model.network.state_dict().items()}
    explorer = EmbeddingExplorer(model, **SMALL)
    explorer.close()
    explorer.wait()
    assert not has_hooks(model.network) and not model.network.training
    assert all(torch.equal(weights[name], p) for name, p in model.network.state_dict().items())


def test_a_pca_preview_comes_first_then_the_t_sne_map():
    import viztools
    from viztools.widgets import EmbeddingExplorer

    explorer = EmbeddingExplorer(viztools.load_model("glyphnet"), images=60)
    seen: list[tuple[str, bool]] = []
    original = explorer._show

    def recording(result, *, final, key=None):
        seen.append((result.what, final))
        original(result, final=final, key=key)

    explorer._show = recording
    explorer.perplexity_slider.value = 12
    explorer.wait()
    assert [final for _, final in seen] == [False, True]
    assert seen[0][0].endswith("PCA preview (t-SNE running ...)") and not seen[1][0].endswith("...)")
    assert explorer.final and explorer.last_error is None
    explorer.close()
