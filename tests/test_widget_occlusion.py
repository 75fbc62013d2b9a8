"""OcclusionExplorer without a browser: build the UI, set values, assert on image bytes, cache, threads, errors."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
from torch import nn

import viztools
from viztools.hooks import has_hooks
from viztools.models import VizModel
from viztools.widgets import OcclusionExplorer
from viztools.widgets import occlusion as occlusion_widget
from viztools.widgets._common import (
    BackgroundRunner,
    ErrorBox,
    _format_tick,
    _nice_ticks,
    colorbar,
    colorize,
    colormap_lut,
    decode_png,
    overlay,
    png_bytes,
)

DISPLAY = 128  # panel side in the tests: small images keep them fast


@pytest.fixture(scope="module")
def model(glyphnet: VizModel) -> VizModel:
    return glyphnet


@pytest.fixture(scope="module")
def star() -> torch.Tensor:
    images, labels = viztools.make_glyphworld(1, start=6)
    assert viztools.GLYPHWORLD_CLASSES[int(labels[0])] == "star"
    return images


@pytest.fixture
def computations(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records every call the widget makes to occlusion_coarse_to_fine (the real one still runs)."""
    calls: list[dict] = []
    real = occlusion_widget.occlusion_coarse_to_fine

    def counting(model, image, target=None, **options):
        calls.append({"target": target, **options})
        return real(model, image, target, **options)

    monkeypatch.setattr(occlusion_widget, "occlusion_coarse_to_fine", counting)
    return calls


def make_explorer(model: VizModel, image: torch.Tensor, **options) -> OcclusionExplorer:
    options = {"patch_size": 16, "stride": 8, "display_size": DISPLAY, **options}
    return OcclusionExplorer(model, image, **options).wait()


def test_first_map_is_drawn_with_top5_and_finished_progress(model, star, computations):
    explorer = make_explorer(model, star)
    assert explorer.last_error is None
    assert explorer.final and explorer.result.patch_size == 16 and explorer.result.stride == 8
    assert len(computations) == 1
    assert callable(computations[0]["should_stop"]) and "progress" not in computations[0], "one stop callback"
    picture = decode_png(explorer.png())
    # image panel + overlay panel (each DISPLAY wide, under a title strip) + colour bar
    assert picture.shape[0] > DISPLAY and picture.shape[1] > 2 * DISPLAY
    assert explorer.progress.bar.value == 1.0 and explorer.progress.bar.bar_style == "success"
    top = model.top_k(star, k=5)
    text = explorer.side.value  # the top-5 table beside the picture
    positions = [text.index(f"<td>{name}</td>") for _, name, _ in top]
    assert positions == sorted(positions), "top-5 rows must be in probability order"
    assert explorer.class_picker.options[:5] == tuple(name for _, name, _ in top)
    assert explorer.target == top[0][0]
    explorer.close()


def test_display_settings_redraw_from_cache_without_recomputing(model, star, computations):
    explorer = make_explorer(model, star)
    first = explorer.png()
    explorer.alpha_slider.value = 0.9
    after_alpha = explorer.png()
    explorer.kind_toggle.value = "probability"
    after_kind = explorer.png()
    assert len({first, after_alpha, after_kind}) == 3, "each display change must redraw"
    assert not explorer.busy
    explorer.alpha_slider.value = 0.5
    explorer.kind_toggle.value = "drop"
    assert explorer.png() == first, "the same settings must give the same picture"
    assert len(computations) == 1
    explorer.close()


def test_opacity_blends_between_image_and_heatmap(model, star):
    explorer = make_explorer(model, star, alpha=0.0)
    transparent = decode_png(explorer.png()).astype(int)
    explorer.alpha_slider.value = 1.0
    opaque = decode_png(explorer.png()).astype(int)
    image_panel = (slice(transparent.shape[0] - DISPLAY, None), slice(0, DISPLAY))
    overlay_panel = (slice(transparent.shape[0] - DISPLAY, None), slice(DISPLAY + 10, 2 * DISPLAY + 10))
    # alpha 0: the overlay panel shows the bare image (the left panel), except for the drawn box
    differs = np.abs(transparent[overlay_panel] - transparent[image_panel]).max(axis=2) > 0
    assert differs.mean() < 0.1
    assert np.abs(opaque[overlay_panel] - transparent[overlay_panel]).max(axis=2).mean() > 10
    explorer.close()


def test_compute_settings_start_a_new_map_and_revisits_come_from_the_cache(model, star, computations):
    explorer = make_explorer(model, star)
    first = explorer.png()
    explorer.patch_slider.value = 24
    explorer.wait()
    assert explorer.result.patch_size == 24 and explorer.final
    assert explorer.png() != first
    explorer.fill_picker.value = "black"
    explorer.wait()
    assert explorer.result.fill == "black"
    assert len(computations) == 3
    assert [call["patch_size"] for call in computations] == [16, 24, 24]
    explorer.fill_picker.value = "grey"
    explorer.patch_slider.value = 16
    explorer.wait()
    assert len(computations) == 3, "settings seen before must be drawn from the cache"
    assert explorer.png() == first
    assert "cache" in explorer.progress.caption.value
    explorer.close()


class GatedNetwork(nn.Module):
    """Wraps a network; while ``gate`` is clear, forward passes wait (so a test can hold a computation)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(timeout=30)
        return self.inner(x)


def test_newer_value_supersedes_stale_work(model, star, computations):
    gated = VizModel(
        name="gated", network=GatedNetwork(model.network), categories=model.categories, input_size=64,
        mean=model.mean, std=model.std,
    )
    explorer = make_explorer(gated, star)
    landed: list = []
    explorer.observe(lambda change: landed.append(change["new"]), names="result")
    gated.network.gate.clear()
    explorer.patch_slider.value = 20  # starts computing, then blocks inside a forward pass
    assert gated.network.waiting.wait(timeout=30)
    explorer.patch_slider.value = 28  # supersedes the blocked computation
    gated.network.gate.set()
    explorer.wait()
    assert landed, "the newer setting must land"
    assert {result.patch_size for result in landed} == {28}, "a stale result must never be shown"
    assert explorer.final and explorer.result.patch_size == 28
    assert explorer.last_error is None
    assert [call["patch_size"] for call in computations] == [16, 20, 28]
    explorer.patch_slider.value = 20
    explorer.wait()
    assert len(computations) == 4, "the superseded map was not cached, so it is computed again"
    assert explorer.result.patch_size == 20
    explorer.close()


def test_coarse_map_lands_before_the_full_one(model, star):
    explorer = make_explorer(model, star)
    landed: list = []
    finals: list = []
    explorer.observe(lambda change: (landed.append(change["new"]), finals.append(explorer.final)), names="result")
    explorer.stride_slider.value = 4
    explorer.wait()
    strides = [result.stride for result in landed]
    assert strides == [16, 4], "a coarse map (stride = patch size) first, then the full one"
    assert finals[-1] and not finals[0]
    explorer.close()


def test_progress_bar_advances_to_the_end(model, star):
    explorer = make_explorer(model, star)
    values: list[float] = []
    explorer.progress.bar.observe(lambda change: values.append(change["new"]), names="value")
    explorer.stride_slider.value = 4
    explorer.wait()
    assert values[-1] == 1.0
    assert any(0.0 < value < 1.0 for value in values), values
    assert explorer.progress.bar.bar_style == "success"
    assert "done" in explorer.progress.caption.value
    explorer.close()


def test_errors_are_shown_in_the_widget_and_recorded(model, star, monkeypatch):
    explorer = make_explorer(model, star)
    real = occlusion_widget.occlusion_coarse_to_fine

    def broken(*args, **kwargs):
        raise RuntimeError("the patch fell off")
        yield

    monkeypatch.setattr(occlusion_widget, "occlusion_coarse_to_fine", broken)
    explorer.patch_slider.value = 12
    explorer.wait()
    assert isinstance(explorer.last_error, RuntimeError)
    assert "the patch fell off" in explorer.errors.value and "RuntimeError" in explorer.errors.value
    assert explorer.progress.bar.bar_style == "danger"
    monkeypatch.setattr(occlusion_widget, "occlusion_coarse_to_fine", real)
    explorer.patch_slider.value = 14
    explorer.wait()
    assert explorer.errors.value == "" and explorer.result.patch_size == 14
    explorer.close()


def test_class_picker_accepts_typed_names_and_reports_unknown_ones(model, star, computations):
    explorer = make_explorer(model, star)
    explorer.class_picker.value = "Music Note"  # typed, case differs
    explorer.wait()
    index = model.categories.index("music note")
    assert explorer.class_picker.value == "music note"
    assert explorer.target == index and explorer.result.target == index
    assert computations[-1]["target"] == index
    explorer.class_picker.value = "unicorn"
    assert isinstance(explorer.last_error, ValueError)
    assert "Unknown class name" in explorer.errors.value
    assert explorer.target == index, "an unknown name keeps the previous class"
    explorer.close()


def test_worst_patch_box_is_drawn_where_occlusion_hurts_most():
    """Hand-built model: class 0's logit is 20 x the brightness of rows 24-31, cols 40-47 (minus 10)."""

    class Spot(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spot = x[:, :, 24:32, 40:48].mean(dim=(1, 2, 3))
            return torch.stack([20 * spot - 10, torch.zeros_like(spot)], dim=1)

    spot_model = VizModel(name="spot", network=Spot(), categories=["spot", "other"], input_size=64,
                          mean=(0, 0, 0), std=(1, 1, 1))
    white = torch.ones(1, 3, 64, 64)
    explorer = make_explorer(spot_model, white, target=0, patch_size=8, stride=8, display_size=128)
    probability = explorer.result.probability
    assert tuple(probability.shape) == (8, 8) and int(probability.argmin()) == 3 * 8 + 5
    picture = decode_png(explorer.png())
    left_panel = picture[-DISPLAY:, :DISPLAY]
    rows, cols = np.nonzero((left_panel == 0).all(axis=2))
    # at 2x display scale the 8 px patch at (24, 40) covers display rows 48-63 and cols 80-95
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (48, 63, 80, 95)
    explorer.close()


def test_no_hooks_left_and_model_unchanged(model, star):
    pixels = star.clone().requires_grad_(True)
    model(pixels)[0, 3].backward()
    before = pixels.grad.clone()
    explorer = make_explorer(model, star)
    explorer.patch_slider.value = 12
    explorer.wait()
    explorer.close()
    assert not has_hooks(model.network)
    assert not model.network.training
    assert not any(parameter.requires_grad for parameter in model.network.parameters())
    pixels = star.clone().requires_grad_(True)
    model(pixels)[0, 3].backward()
    assert torch.equal(pixels.grad, before)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"patch_size": 0}, ValueError, "patch_size must be an integer in"),
        ({"stride": 1.5}, TypeError, "stride must be an integer"),
        ({"fill": "purple"}, ValueError, "Unknown fill 'purple'"),
        ({"kind": "saliency"}, ValueError, "Unknown kind 'saliency'"),
        ({"alpha": 2.0}, ValueError, "alpha must be a number in"),
        ({"target": "unicorn"}, ValueError, "Unknown class name 'unicorn'"),
    ],
)
def test_bad_arguments_raise_clear_errors(model, star, options, error, message):
    with pytest.raises(error, match=message):
        OcclusionExplorer(model, star, **options)


def test_bad_model_or_pixels_raise_clear_errors(model, star):
    with pytest.raises(TypeError, match="VizModel"):
        OcclusionExplorer(model.network, star)
    with pytest.raises(ValueError, match="divide by 255"):
        OcclusionExplorer(model, star * 255)


def test_image_can_be_named(model):
    explorer = OcclusionExplorer(model, "coffee", display_size=DISPLAY, patch_size=16, stride=16).wait()
    assert tuple(explorer.image.shape) == (1, 3, 64, 64)
    assert explorer.result.image_size == (64, 64)
    explorer.close()


# --- the shared widget helpers (viztools.widgets._common) ------------------------------------------------------


def test_colorize_maps_the_range_ends_to_the_colormap_ends_and_clips():
    lut = colormap_lut("viridis")
    colours = colorize(np.array([[-1.0, 0.0, 0.5, 1.0, 3.0]]), cmap="viridis", vmin=0.0, vmax=1.0)
    assert (colours[0, 0] == lut[0]).all() and (colours[0, 1] == lut[0]).all()
    assert (colours[0, 2] == lut[128]).all()
    assert (colours[0, 3] == lut[255]).all() and (colours[0, 4] == lut[255]).all()


def test_overlay_blends_by_alpha_and_leaves_missing_values_uncovered():
    image = np.full((4, 4, 3), 200, dtype=np.uint8)
    values = np.ones((2, 2), dtype=np.float32)
    values[0, 0] = np.nan
    top = colormap_lut("viridis")[255].astype(int)
    opaque = overlay(image, values, cmap="viridis", vmin=0.0, vmax=1.0, alpha=1.0)
    half = overlay(image, values, cmap="viridis", vmin=0.0, vmax=1.0, alpha=0.5)
    assert (overlay(image, values, cmap="viridis", vmin=0.0, vmax=1.0, alpha=0.0) == image).all()
    assert (opaque[3, 3] == top).all()
    assert np.abs(half[3, 3].astype(int) - (200 + top) / 2).max() <= 1
    assert (opaque[0, 0] == 200).all(), "NaN (no patch covered the pixel) must show the image"


def test_colorbar_puts_the_high_end_on_top_and_labels_round_ticks():
    bar = colorbar(100, cmap="viridis", vmin=0.0, vmax=1.0)
    lut = colormap_lut("viridis")
    assert bar.shape[0] == 100

    def lut_position(colour: np.ndarray) -> int:
        return int(np.abs(lut.astype(int) - colour.astype(int)).sum(axis=1).argmin())

    column = [lut_position(bar[row, 5]) for row in range(7, 93)]  # inside the outline
    assert column[0] >= 245 and column[-1] <= 10
    assert all(a >= b for a, b in itertools.pairwise(column)), "the bar must run from vmax (top) down to vmin"
    assert _nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [_format_tick(t, 0.25) for t in (0.0, 0.25, 1.0)] == ["0.00", "0.25", "1.00"]
    assert _nice_ticks(-0.257, 0.257) == pytest.approx([-0.2, 0.0, 0.2])


def test_png_round_trip_is_lossless():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    assert (decode_png(png_bytes(picture)) == picture).all()


def test_error_box_shows_escaped_message_and_keeps_the_error():
    box = ErrorBox()
    with box.capture("Drawing"):
        raise ValueError("bad <script> value")
    assert isinstance(box.last_error, ValueError)
    assert "&lt;script&gt;" in box.value and "<script>" not in box.value
    assert "Drawing" in box.value and "ValueError" in box.value and "bad" in box.last_traceback
    box.clear()
    assert box.value == "" and isinstance(box.last_error, ValueError)


def test_background_runner_lets_only_the_newest_job_publish_and_report_errors():
    errors: list[BaseException] = []
    runner = BackgroundRunner(errors.append)
    release, started = threading.Event(), threading.Event()
    published: list[str] = []

    def slow(job):
        started.set()
        release.wait(timeout=30)
        if not job.publish(lambda: published.append("stale")):
            raise RuntimeError("superseded work fails quietly")

    first = runner.submit(slow)
    assert started.wait(timeout=30) and runner.busy
    second = runner.submit(lambda job: job.publish(lambda: published.append("newest")))
    assert first.should_stop() and not second.should_stop()
    release.set()
    assert runner.wait(timeout=30)
    assert published == ["newest"] and errors == [] and not runner.busy

    def failing(job):
        raise KeyError("newest job's error")

    runner.submit(failing)
    runner.wait(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    runner.submit(lambda job: published.append("skipped?") if job.should_stop() else None)
    runner.cancel()
    runner.wait(timeout=30)
    assert published == ["newest"]


def test_held_colour_scale_keeps_a_weak_map_looking_weak(model, star):
    explorer = make_explorer(model, star, patch_size=24, stride=8)
    strong_extent = explorer.shown.drop_extent
    explorer.hold_scale.value = True
    explorer.patch_slider.value = 4  # small patches hurt less: a weaker map
    explorer.wait()
    assert explorer.shown.drop_extent < strong_extent
    held = decode_png(explorer.png())
    explorer.hold_scale.value = False  # display-only: the map is redrawn with its own, smaller scale
    own = decode_png(explorer.png())
    # A drop of 0 is the colormap's middle colour; under the held (larger) scale the weak map stays nearer to it.
    no_drop = overlay(decode_png(explorer.png())[-DISPLAY:, :DISPLAY], np.zeros((8, 8)), cmap="RdBu_r", vmin=-1,
                      vmax=1, alpha=explorer.alpha_slider.value).astype(float)
    heat = slice(DISPLAY + 10, 2 * DISPLAY + 10)  # the overlay panel, right of the image panel and its gap
    distance = lambda picture: np.abs(picture[-DISPLAY:, heat].astype(float) - no_drop).mean()  # noqa: E731
    assert distance(held) < distance(own)
    explorer.close()


def test_scale_grows_panels_and_text_together(model, star):
    normal = make_explorer(model, star)
    large = make_explorer(model, star, scale=1.5)
    assert decode_png(large.png()).shape[0] == pytest.approx(1.5 * decode_png(normal.png()).shape[0], rel=0.05)
    normal.close()
    large.close()
