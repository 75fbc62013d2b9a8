"""LayerExplorer without a browser: per-layer background work, channel and view changes that only redraw, the
cache, supersession, uploads and errors, and a clean model after close()."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from PIL import Image

from viztools.hooks import has_hooks
from viztools.models import VizModel
from viztools.widgets import LayerExplorer
from viztools.widgets import layers as widget_module
from viztools.widgets._common import decode_png

SMALL = {"images": 40, "k": 4}


@pytest.fixture(scope="module")
def model(glyphnet: VizModel) -> VizModel:
    return glyphnet


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The channels of every top-patches pass the widget makes (the real function still runs)."""
    calls: list[list[int]] = []
    real = widget_module.top_activating_patches_grid

    def counting(model, images, **options):
        calls.append(list(options["channels"]))
        return real(model, images, **options)

    monkeypatch.setattr(widget_module, "top_activating_patches_grid", counting)
    return calls


def upload(explorer: LayerExplorer, content: bytes, name: str) -> None:
    explorer.image_picker.upload.value = ({"name": name, "type": "image/png", "size": len(content),
                                           "content": memoryview(content),
                                           "last_modified": datetime.now(tz=timezone.utc)},)


def test_channel_changes_redraw_from_the_layer_computed_once(model, passes):
    explorer = LayerExplorer(model, "conv1", 3, **SMALL).wait()
    assert explorer.last_error is None and explorer.final
    assert passes[0] == [3], "the chosen channel's patches come first"
    assert sorted(c for chunk in passes for c in chunk) == list(range(24))
    view = explorer.shown
    assert view.filters.mode == "rgb" and len(view.patches) == 24 and len(view.patches[3].patches) == 4
    picture = decode_png(explorer.png())
    assert picture.shape[1] <= 2.7 * explorer.panel, "filter, map and patches fit in about 2.5 panels"
    first = explorer.png()
    explorer.channel_slider.value = 7
    assert explorer.png() != first and "channel 7 of 24" in explorer.summary.value
    explorer.view_picker.value = "all: best patches"
    patches_grid = explorer.png()
    explorer.view_picker.value = "all: maps"
    maps_grid = explorer.png()
    explorer.hold_box.value = True
    assert len({first, patches_grid, maps_grid, explorer.png()}) == 4
    explorer.hold_box.value = False
    explorer.view_picker.value = "channel"
    explorer.channel_slider.value = 3
    assert explorer.png() == first and not explorer.busy
    assert sum(len(chunk) for chunk in passes) == 24, "no pass after display-only changes"
    explorer.close()


def test_layers_recompute_revisits_come_from_the_cache_and_fc_layers_have_no_filters(model, passes):
    explorer = LayerExplorer(model, "conv1", **SMALL).wait()
    conv1 = explorer.png()
    explorer.layer_picker.value = "conv2"
    explorer.wait()
    assert explorer.channel_slider.max == 47 and explorer.shown.filters.mode == "grey"
    assert explorer.shown.filters.tiles.shape[1] == 8, "deeper filters: the first 8 input channels"
    calls = len(passes)
    explorer.layer_picker.value = "conv1"
    assert explorer.png() == conv1 and not explorer.busy and len(passes) == calls
    explorer.layer_picker.value = "fc1"
    explorer.wait()
    assert explorer.last_error is None and explorer.shown.filters is None and explorer.shown.geometry is None
    assert "no filters" in explorer.summary.value and explorer.channel_slider.max == 127
    explorer.close()


def test_a_new_layer_supersedes_the_stale_pass(model, passes):
    explorer = LayerExplorer(model, "pool1", **SMALL).wait()
    explorer.layer_picker.value = "conv3"
    explorer.layer_picker.value = "pool1"  # cached: shown at once, the conv3 pass ends
    assert explorer.shown_key[0] == "pool1"
    explorer.wait()
    assert explorer.last_error is None and explorer.shown_key[0] == "pool1"
    assert len(explorer._patches.get("conv3", {})) < 96, "the superseded pass stopped early"
    explorer.close()


def test_uploads_change_the_map_not_the_patches_and_bad_files_show_an_error(model, passes):
    explorer = LayerExplorer(model, "conv1", **SMALL).wait()
    before, calls = explorer.png(), len(passes)
    upload(explorer, b"not an image", "notes.txt")
    assert isinstance(explorer.last_error, ValueError) and "not an image" in str(explorer.last_error)
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), (250, 30, 30), dtype=np.uint8)).save(buffer, format="PNG")
    upload(explorer, buffer.getvalue(), "red.png")
    explorer.wait()
    assert explorer.png() != before and len(passes) == calls, "the layer's patches are reused for a new image"
    assert explorer.image_picker.key == ("(your image)", 1)
    explorer.close()


def test_close_leaves_no_hooks_and_the_model_unchanged(model):
    weights = {name: p.clone() for name, p in model.network.state_dict().items()}
    explorer = LayerExplorer(model, "conv2", **SMALL)
    explorer.close()
    explorer.wait()
    assert not has_hooks(model.network) and not model.network.training
    assert all(torch.equal(weights[name], p) for name, p in model.network.state_dict().items())
