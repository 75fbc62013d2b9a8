"""Occlusion sensitivity: known answers on hand-built models, the result and its heatmap, the API contract.

The fast paths against the naive loop, and incremental inference itself, are tested in ``test_incremental.py``.
"""

from __future__ import annotations

import itertools
import math

import matplotlib
import pytest
import torch
from test_incremental import glyph_image, hand_built_model, wrap
from torch import nn

from viztools.data import gaussian_blur
from viztools.hooks import has_hooks
from viztools.models import VizModel
from viztools.occlusion import (
    OcclusionCancelled,
    OcclusionProgress,
    OcclusionResult,
    default_patch_size,
    default_stride,
    occlusion,
    occlusion_coarse_to_fine,
    patch_starts,
    plot_occlusion,
)

matplotlib.use("Agg")
# The hand-built model's even-kernel padding="same" convolution makes PyTorch warn about a padded copy.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


# --------------------------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------------------------


class RegionSum(nn.Module):
    """Class 0's logit is ``scale`` times the sum of the pixels inside a fixed box; class 1's logit is 0."""

    def __init__(self, size: int, box: tuple[int, int, int, int], scale: float) -> None:
        super().__init__()
        mask = torch.zeros(1, 3, size, size)
        mask[..., box[0]:box[1], box[2]:box[3]] = 1.0
        self.register_buffer("mask", mask)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.mask).sum(dim=(1, 2, 3)) * self.scale
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_heatmap_localizes_the_region_the_score_reads() -> None:
    size, box = 32, (10, 18, 20, 26)
    model = wrap(RegionSum(size, box, scale=0.05), "region-sum", 2, size)
    image = torch.ones(1, 3, size, size)
    result = occlusion(model, image, 0, patch_size=6, stride=2, fill="black")
    overlap = torch.tensor([[max(0, min(r + 6, box[1]) - max(r, box[0])) * max(0, min(c + 6, box[3]) - max(c, box[2]))
                             for c in result.col_starts] for r in result.row_starts])
    # The probability is sigmoid(0.05 * 3 * (pixels left in the box)): the drop follows the overlap exactly.
    expected = result.baseline - torch.sigmoid(0.05 * 3 * (48 - overlap.double())).float()
    torch.testing.assert_close(result.drop, expected, atol=1e-6, rtol=0)
    assert torch.equal(result.drop > 0, overlap > 0)
    heat = result.heatmap()
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[box[0]:box[1], box[2]:box[3]] = True
    assert float(heat[inside].min()) > float(heat[~inside].max()) - 1e-6
    near = torch.zeros_like(inside)
    near[box[0] - 5:box[1] + 5, box[2] - 5:box[3] + 5] = True
    assert float(heat[~near].abs().max()) == 0.0  # no patch covering these pixels touches the box


@pytest.mark.parametrize("fill", ["mean", "blur", "grey"])
def test_a_fill_equal_to_the_image_changes_nothing(fill: str) -> None:
    model = wrap(RegionSum(16, (2, 12, 3, 9), scale=0.3), "region-sum", 2, 16)
    image = torch.full((1, 3, 16, 16), 0.5)  # constant: its mean and its blur are the image itself, and so is grey
    result = occlusion(model, image, 0, patch_size=5, stride=3, fill=fill)
    assert torch.equal(result.probability, torch.full_like(result.probability, result.baseline))
    if fill != "blur":  # blurring rounds: its patches differ from the image in the last bit and are evaluated
        assert result.method == "none"  # nothing needed evaluating


def test_black_mean_and_blur_fills_replace_the_patch_with_the_documented_values() -> None:
    size, box = 12, (0, 12, 0, 12)
    model = wrap(RegionSum(size, box, scale=0.01), "sum", 2, size)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    fills = {
        "black": torch.zeros_like(image),
        "mean": image.mean(dim=(2, 3), keepdim=True).expand_as(image),
        "blur": gaussian_blur(image, 1.5),  # the shared blur of viztools.data, sigma blur_sigma
    }
    for fill, fill_image in fills.items():
        result = occlusion(model, image, 0, patch_size=4, stride=4, fill=fill, blur_sigma=1.5)
        for i, r in enumerate(result.row_starts):
            for j, c in enumerate(result.col_starts):
                patch = (..., slice(r, r + 4), slice(c, c + 4))
                occluded_sum = image.sum() - image[patch].sum() + fill_image[patch].sum()
                expected = torch.sigmoid(0.01 * occluded_sum)
                assert float(result.probability[i, j]) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.slow
@pytest.mark.imagenet
def test_occluding_the_cats_face_lowers_the_cat_probability_more_than_the_background(
        imagenet_squeezenet: VizModel) -> None:
    image = imagenet_squeezenet.preprocess("cat")
    result = occlusion(imagenet_squeezenet, image, "Egyptian cat", patch_size=32, stride=16)
    assert result.method == "incremental"
    heat = result.heatmap("drop")
    face = heat[64:176, 96:160]  # between the eyes, down the nose (chelsea at 224 px)
    background = heat[112:208, 196:224]  # the blurred background at the right edge
    assert float(face.max()) > 0.2
    assert float(face.max()) > float(background.max()) + 0.1


# --------------------------------------------------------------------------------------------------------------
# Result, heatmap and patch positions
# --------------------------------------------------------------------------------------------------------------


def test_heatmap_is_the_mean_over_covering_patches() -> None:
    probability = torch.tensor([[0.1, 0.2], [0.3, 0.7]])
    result = OcclusionResult(probability=probability, baseline=0.9, target=0, patch_size=3, stride=2, fill="grey",
                             image_size=(5, 5))
    assert result.row_starts == (0, 2) and result.col_starts == (0, 2)
    heat = result.heatmap("probability")
    assert float(heat[0, 0]) == pytest.approx(0.1)
    assert float(heat[0, 2]) == pytest.approx((0.1 + 0.2) / 2)
    assert float(heat[2, 2]) == pytest.approx((0.1 + 0.2 + 0.3 + 0.7) / 4)
    assert float(heat[4, 4]) == pytest.approx(0.7)
    torch.testing.assert_close(result.heatmap("drop"), 0.9 - heat)
    torch.testing.assert_close(result.drop, 0.9 - probability)


def test_pixels_no_patch_covers_are_nan() -> None:
    result = OcclusionResult(probability=torch.zeros(2, 2), baseline=1.0, target=0, patch_size=2, stride=3,
                             fill="grey", image_size=(5, 5))
    heat = result.heatmap()
    assert result.row_starts == (0, 3)
    assert torch.isnan(heat[2]).all() and torch.isnan(heat[:, 2]).all()
    assert not torch.isnan(heat[:2, :2]).any()


def test_patch_positions_cover_the_last_row() -> None:
    assert patch_starts(224, 15, 8) == (*range(0, 209, 8), 209)
    assert patch_starts(64, 12, 4) == tuple(range(0, 53, 4))  # 52 = 64 - 12 is on the grid already
    assert patch_starts(10, 10, 3) == (0,)
    clip = patch_starts(224, 15, 8, "clip")  # Captum's positions: the last patch is cut off at the border
    assert clip == tuple(range(0, 217, 8)) and len(clip) == math.ceil((224 - 15) / 8) + 1
    for side, patch, stride in ((224, 15, 8), (37, 9, 4), (64, 12, 5)):
        for edges in ("shift", "clip"):
            covered = torch.zeros(side, dtype=torch.bool)
            for start in patch_starts(side, patch, stride, edges):
                covered[start:start + patch] = True
            assert covered.all()


def test_default_patch_and_stride_scale_with_the_image() -> None:
    assert (default_patch_size(64), default_stride(64)) == (12, 4)
    assert (default_patch_size(224), default_stride(224)) == (32, 8)
    result = occlusion(hand_built_model(), torch.rand(1, 3, 40, 40), 0)
    assert (result.patch_size, result.stride) == (default_patch_size(40), default_stride(40))
    assert result.probability.shape == (len(result.row_starts), len(result.col_starts))
    assert result.image_size == (40, 40)


def test_agrees_with_captum_occlusion() -> None:
    captum = pytest.importorskip("captum.attr")
    model = hand_built_model()
    image = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    ours = occlusion(model, image, 3, patch_size=7, stride=5, edges="clip").heatmap("drop")
    theirs = captum.Occlusion(lambda x: torch.softmax(model(x), dim=1)[:, 3]).attribute(
        image, sliding_window_shapes=(3, 7, 7), strides=(3, 5, 5), baselines=0.5, perturbations_per_eval=8)
    torch.testing.assert_close(ours, theirs[0, 0].float(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# Coarse to fine, progress, cancellation
# --------------------------------------------------------------------------------------------------------------


def test_coarse_to_fine_yields_a_coarse_map_then_the_full_one() -> None:
    model = hand_built_model()
    image = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    calls: list[tuple[int, int]] = []
    coarse, fine = occlusion_coarse_to_fine(model, image, 1, patch_size=8, stride=2,
                                            should_stop=lambda p: calls.append((p.done, p.total)))
    assert coarse.stride == 8 and fine.stride == 2
    direct = occlusion(model, image, 1, patch_size=8, stride=2)
    assert fine.row_starts == direct.row_starts
    torch.testing.assert_close(fine.probability, direct.probability, atol=1e-6, rtol=0)
    shared = len(set(coarse.row_starts) & set(fine.row_starts)) * len(set(coarse.col_starts) & set(fine.col_starts))
    total = coarse.probability.numel() + fine.probability.numel() - shared
    assert (coarse.probability.numel(), total) in calls  # the coarse map is done
    assert calls[-1] == (total, total)
    assert {call[1] for call in calls} == {total}
    assert all(before[0] <= after[0] for before, after in itertools.pairwise(calls))


def test_should_stop_sees_the_progress_before_the_set_up_and_after_every_batch() -> None:
    seen: list[OcclusionProgress] = []
    result = occlusion(hand_built_model(), torch.rand(1, 3, 40, 40), 0, patch_size=6, stride=3, batch_size=10,
                       should_stop=seen.append)  # returns None: counts as "go on"
    total = result.probability.numel()
    calls = [(progress.done, progress.total) for progress in seen]
    assert calls == [(0, total)] + [(min(10 * (i + 1), total), total) for i in range(math.ceil(total / 10))]
    assert all(isinstance(progress, OcclusionProgress) for progress in seen)
    with pytest.raises(TypeError, match="should_stop must be a function"):
        occlusion(hand_built_model(), torch.rand(1, 3, 40, 40), 0, should_stop=True)


@pytest.mark.parametrize("method", ["naive", "batched", "incremental"])
def test_should_stop_cancels(method: str) -> None:
    model = hand_built_model()
    polls: list[int] = []

    def stop_at_third_poll(progress: OcclusionProgress) -> bool:
        polls.append(progress.done)
        return len(polls) == 3

    with pytest.raises(OcclusionCancelled, match="cancelled") as caught:
        occlusion(model, torch.rand(1, 3, 40, 40), 0, patch_size=6, stride=3, batch_size=5, method=method,
                  should_stop=stop_at_third_poll)
    per_batch = 1 if method == "naive" else 5
    assert caught.value.done == 2 * per_batch  # polled before the set-up, then after the first and second batch
    assert caught.value.total == len(patch_starts(40, 6, 3)) ** 2
    assert polls == [0, per_batch, 2 * per_batch]
    assert not has_hooks(model.network)


def test_should_stop_cancels_coarse_to_fine_with_positions_counted_over_both_passes() -> None:
    model = hand_built_model()
    image = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    coarse_positions = len(patch_starts(40, 8, 8)) ** 2

    def stop_in_the_fine_pass(progress: OcclusionProgress) -> bool:
        return progress.done > coarse_positions

    maps = occlusion_coarse_to_fine(model, image, 1, patch_size=8, stride=2, batch_size=4,
                                    should_stop=stop_in_the_fine_pass)
    assert next(maps).stride == 8
    with pytest.raises(OcclusionCancelled) as caught:
        next(maps)
    assert coarse_positions < caught.value.done < caught.value.total
    assert caught.value.total == len(patch_starts(40, 8, 2)) ** 2  # the coarse grid lies on the fine one: reused


# --------------------------------------------------------------------------------------------------------------
# Bad input, hooks, the model left unchanged, plotting
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"patch_size": 0}, ValueError, "patch_size"),
        ({"patch_size": 41}, ValueError, "patch_size"),
        ({"patch_size": 2.5}, TypeError, "patch_size"),
        ({"stride": 0}, ValueError, "stride"),
        ({"fill": "gray"}, ValueError, "Did you mean 'grey'"),
        ({"method": "fast"}, ValueError, "Unknown method"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"edges": "wrap"}, ValueError, "edges"),
        ({"blur_sigma": 0.0, "fill": "blur"}, ValueError, "blur_sigma"),
        ({"target": "class 9"}, ValueError, "Unknown class name"),
        ({"target": 4}, ValueError, "target class index"),
    ],
)
def test_bad_options_raise_helpful_errors(options: dict, error: type, message: str) -> None:
    model = hand_built_model()
    target = options.pop("target", 0)
    with pytest.raises(error, match=message):
        occlusion(model, torch.rand(1, 3, 40, 40), target, **options)
    assert not has_hooks(model.network)


def test_bad_images_raise_helpful_errors() -> None:
    model = hand_built_model()
    with pytest.raises(ValueError, match=r"shape \(1, 3, H, W\)"):
        occlusion(model, torch.rand(1, 1, 40, 40), 0)
    with pytest.raises(ValueError, match="single image"):
        occlusion(model, torch.rand(2, 3, 40, 40), 0)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        occlusion(model, [[0.5]], 0)
    with pytest.raises(ValueError, match="kind"):
        occlusion(model, torch.rand(1, 3, 40, 40), 0, patch_size=10, stride=10).heatmap("relevance")


@pytest.mark.parametrize("entry", [occlusion, occlusion_coarse_to_fine])
def test_inputs_a_new_user_might_try_raise_errors_naming_the_fix(entry: object, glyphnet: VizModel) -> None:
    image = glyph_image(3)
    with pytest.raises(TypeError, match=r"VizModel.*wrap"):
        entry(glyphnet.network, image, 0)  # a plain nn.Module
    nan_image = image.clone()
    nan_image[0, 1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        entry(glyphnet, nan_image, 0)
    with pytest.raises(ValueError, match="divide by 255"):
        entry(glyphnet, image * 255, 0)
    with pytest.raises(ValueError, match=r"cannot classify a 8x8 px image.*Resize the image"):
        entry(glyphnet, torch.rand(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="patch_size"):
        entry(glyphnet, image, 0, patch_size=65)  # checked when called, also for the coarse-to-fine generator
    with pytest.raises(ValueError, match="Unknown class name"):
        entry(glyphnet, image, "unicorn")


def test_plot_occlusion_overlays_the_heatmap_with_a_colour_bar() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    model = hand_built_model()
    image = torch.rand(1, 3, 40, 40)
    result = occlusion(model, image, 0, patch_size=10, stride=5)
    assert torch.equal(result.image, image)
    open_figures = plt.get_fignums()
    for figure in (plot_occlusion(result, image), plot_occlusion(result)):  # the result carries its image
        assert isinstance(figure, Figure)
        assert len(figure.axes) == 2  # the image axes and the colour bar
        shown = figure.axes[0].images[1].get_array()
        assert shown.shape == (40, 40)
        torch.testing.assert_close(torch.as_tensor(shown.filled(float("nan"))).float(), result.heatmap(),
                                   equal_nan=True)
        torch.testing.assert_close(torch.as_tensor(figure.axes[0].images[0].get_array()).permute(2, 0, 1)[None],
                                   image)
    assert plt.get_fignums() == open_figures, "with ax=None the figure must not be registered with pyplot"
    _, ax = plt.subplots()
    assert plot_occlusion(result, image, ax=ax, kind="probability") is ax.figure
    with pytest.raises(ValueError, match="computed for"):
        plot_occlusion(result, torch.rand(1, 3, 20, 20))
    bare = OcclusionResult(probability=result.probability, baseline=result.baseline, target=0, patch_size=10,
                           stride=5, fill="grey", image_size=(40, 40))
    with pytest.raises(ValueError, match=r"plot_occlusion\(result, image\)"):
        plot_occlusion(bare)
    plt.close("all")


def test_plot_occlusion_draws_several_maps_on_one_colour_scale() -> None:
    result = occlusion(hand_built_model(), torch.rand(1, 3, 40, 40), 0, patch_size=10, stride=5)
    own_scale = abs(float(result.drop.abs().max()))
    assert plot_occlusion(result).axes[0].images[1].get_clim() == pytest.approx((-own_scale, own_scale))
    figure = plot_occlusion(result, limit=2.0, colorbar=False)
    assert len(figure.axes) == 1  # no colour bar: the caller draws one for all maps
    assert figure.axes[0].images[1].get_clim() == (-2.0, 2.0)
    with pytest.raises(ValueError, match="limit"):
        plot_occlusion(result, limit=0)
