"""Occlusion sensitivity: fast paths equal the naive loop, known answers on hand-built models, the API contract."""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import viztools
from viztools.hooks import has_hooks
from viztools.models import VizModel
from viztools.occlusion import (
    FILLS,
    OcclusionCancelled,
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

FAST_METHODS = ("batched", "incremental", "auto")


class Scale(nn.Module):
    """Multiplies the logits: makes a random network's probabilities react strongly to occlusion."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class TwoBranches(nn.Module):
    """A Fire-like block: a 1x1 and a padded 3x3 branch concatenated, plus an element-wise sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.one = nn.Conv2d(channels, channels, 1)
        self.three = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.one(x)), torch.sigmoid(self.three(x)) + x], dim=1)


class Head(nn.Module):
    """A linear layer on the globally pooled features and on the feature map itself (every position counts)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([self.pool(x).flatten(1), x.flatten(1)], dim=1))


def wrap(network: nn.Module, name: str, classes: int, size: int) -> VizModel:
    return VizModel(name=name, network=network, categories=[f"class {i}" for i in range(classes)], input_size=size,
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class Centre(nn.Module):
    """``(logits - offset) * factor``: with ``offset`` the logits of an image, occluding it moves the probabilities."""

    def __init__(self, offset: torch.Tensor, factor: float) -> None:
        super().__init__()
        self.register_buffer("offset", offset)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) * self.factor


def sensitive(model: VizModel, image: torch.Tensor, factor: float) -> VizModel:
    """``model`` (random weights) with logits centred on ``image`` and magnified."""
    with torch.no_grad():
        offset = model(image)[0]
    network = nn.Sequential(OrderedDict(body=model.network, centre=Centre(offset, factor)))
    return VizModel(name=f"{model.name}, centred", network=network, categories=model.categories,
                    input_size=model.input_size, mean=model.mean, std=model.std)


def hand_built_model(size: int = 40, centre_on: torch.Tensor | None = None) -> VizModel:
    """Padding, strides, dilation, ceil-mode and padded pools, batch norm, branches, global pooling, a linear head.

    Sized for ``size`` x ``size`` images, or for ``centre_on``'s size. With ``centre_on``, the head's bias makes all
    logits of that image 0, so occluding it moves the probabilities.
    """
    torch.manual_seed(1)
    batch_norm = nn.BatchNorm2d(8)
    batch_norm.running_mean.uniform_(-0.5, 0.5)
    batch_norm.running_var.uniform_(0.5, 2.0)
    body = nn.Sequential(
        nn.Conv2d(3, 6, 5, padding=2),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),  # pads with -inf: its input has negative values
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2),
        batch_norm,
        nn.LeakyReLU(0.1),
        TwoBranches(8),
        nn.Conv2d(16, 16, 4, padding="same"),  # an even kernel: PyTorch pads 1 before and 2 after
        nn.AvgPool2d(3, stride=1, padding=1),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(16, 12, 3, padding=1),
        nn.Tanh(),
    ).eval()
    shape = (1, 3, size, size) if centre_on is None else centre_on.shape
    features = body(torch.zeros(shape)).numel()
    network = nn.Sequential(body, Head(features + 12, 4), Scale(40.0)).eval()
    if centre_on is not None:
        with torch.no_grad():
            network[1].linear.bias -= network(centre_on)[0] / 40.0
    return wrap(network, "hand-built", 4, size)


def glyph_image(index: int = 3) -> torch.Tensor:
    images, _ = viztools.make_glyphworld(1, seed=0, start=index)
    return images


@pytest.fixture(scope="module")
def random_glyphnet() -> VizModel:
    torch.manual_seed(0)
    return sensitive(viztools.load_model("glyphnet", weights="random"), glyph_image(3), 300.0)


def assert_matches_naive(model: VizModel, image: torch.Tensor, target: int, **options: object) -> None:
    naive = occlusion(model, image, target, method="naive", **options)
    assert naive.method == "naive"
    spread = float(naive.probability.max() - naive.probability.min())
    assert spread > 1e-2, f"the case is too weak to test anything (probabilities vary by {spread:.1e})"
    for method in FAST_METHODS:
        fast = occlusion(model, image, target, method=method, **options)
        assert fast.method == ("incremental" if method == "auto" else method)
        assert fast.row_starts == naive.row_starts and fast.col_starts == naive.col_starts
        assert fast.baseline == pytest.approx(naive.baseline, abs=1e-6)
        torch.testing.assert_close(fast.probability, naive.probability, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# Fast paths against the naive one-image-at-a-time loop
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fill", "edges"), [*((fill, "shift") for fill in FILLS), ("grey", "clip")])
def test_hand_built_network_fast_paths_equal_naive(fill: str, edges: str) -> None:
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))  # large enough that the windows
    model = hand_built_model(centre_on=image)  # reach the global pooling before they cover whole maps
    assert_matches_naive(model, image, 2, patch_size=7, stride=7, fill=fill, edges=edges, batch_size=16)


def test_non_square_image_and_patch_at_the_border() -> None:
    image = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(1))
    model = hand_built_model(centre_on=image)
    assert_matches_naive(model, image, 1, patch_size=9, stride=4, batch_size=7)


def test_random_glyphnet_fast_paths_equal_naive(random_glyphnet: VizModel) -> None:
    assert_matches_naive(random_glyphnet, glyph_image(3), 0, patch_size=12, stride=8, fill="blur")


def test_trained_glyphnet_fast_paths_equal_naive(glyphnet: VizModel) -> None:
    image = glyph_image(5)
    assert_matches_naive(glyphnet, image, int(glyphnet.predict(image).argmax()), patch_size=16, stride=8)


def test_small_squeezenet_fast_paths_equal_naive() -> None:
    image = viztools.load_image("coffee", 80)  # SqueezeNet accepts small inputs
    model = sensitive(viztools.load_model("squeezenet1_1", weights="random"), image, 300.0)
    assert_matches_naive(model, image, 642, patch_size=16, stride=12, fill="mean")


def test_incremental_inference_does_a_fraction_of_the_work(glyphnet: VizModel) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for method in ("batched", "incremental"):
        with FlopCounterMode(display=False) as counter:
            result = occlusion(glyphnet, glyph_image(4), 0, patch_size=12, stride=8, method=method)
        assert result.method == method
        flops[method] = counter.get_total_flops()
    assert flops["incremental"] < 0.45 * flops["batched"]  # about a third, set-up included


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x += 1.0  # modifies an activation in place
        return x.mean(dim=(2, 3)) * 50


class BatchSizeInView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.linear = nn.Linear(2 * 10 * 10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.linear(x.view(int(x.shape[0]), -1)) * 20  # the batch size becomes a constant when recorded


@pytest.mark.parametrize(("network", "reason"), [(InPlace, "in place"), (BatchSizeInView, "two test patches")])
def test_models_the_recorder_cannot_replay_fall_back_to_batching(network: type, reason: str) -> None:
    model = wrap(network(), network.__name__, 2, 12)
    image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    auto = occlusion(model, image, 0, patch_size=4, stride=2)
    naive = occlusion(model, image, 0, patch_size=4, stride=2, method="naive")
    assert auto.method == "batched"
    torch.testing.assert_close(auto.probability, naive.probability, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=reason):
        occlusion(model, image, 0, patch_size=4, stride=2, method="incremental")


def test_forward_passes_in_other_threads_are_unaffected() -> None:
    """Widgets compute in background threads; recording the graph must not disturb other models meanwhile."""
    model = hand_built_model(64)
    other = viztools.load_model("glyphnet", weights="random")
    errors: list[BaseException] = []
    done = threading.Event()

    def other_forward_passes() -> None:
        while not done.is_set():
            try:
                with torch.inference_mode():
                    assert other.network(torch.rand(1, 3, 64, 64)).shape == (1, 10)
            except Exception as error:  # collected, and reported by the assertion below
                errors.append(error)

    thread = threading.Thread(target=other_forward_passes)
    thread.start()
    try:
        for _ in range(5):
            occlusion(model, torch.rand(1, 3, 64, 64), 0, patch_size=16, stride=16, method="incremental")
    finally:
        done.set()
        thread.join()
    assert errors == []


def test_data_dependent_model_falls_back_to_batching() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # control flow on activation values: a recording may not hold for other images
                x = x * 2
            return self.conv(x).mean(dim=(2, 3)) * 50

    model = wrap(DataDependent(), "data-dependent", 2, 12)
    image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    auto = occlusion(model, image, 0, patch_size=4, stride=2)
    naive = occlusion(model, image, 0, patch_size=4, stride=2, method="naive")
    assert auto.method == "batched"
    torch.testing.assert_close(auto.probability, naive.probability, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"reads activation values.*method='auto'"):
        occlusion(model, image, 0, patch_size=4, stride=2, method="incremental")


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


def test_black_and_mean_fills_replace_the_patch_with_the_documented_values() -> None:
    size, box = 12, (0, 12, 0, 12)
    model = wrap(RegionSum(size, box, scale=0.01), "sum", 2, size)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    for fill, value in (("black", torch.zeros(3)), ("mean", image.mean(dim=(2, 3))[0])):
        result = occlusion(model, image, 0, patch_size=4, stride=4, fill=fill)
        for i, r in enumerate(result.row_starts):
            for j, c in enumerate(result.col_starts):
                occluded_sum = image.sum() - image[..., r:r + 4, c:c + 4].sum() + 16 * value.sum()
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
                                            progress=lambda *call: calls.append(call))
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


def test_progress_counts_patch_positions() -> None:
    calls: list[tuple[int, int]] = []
    result = occlusion(hand_built_model(), torch.rand(1, 3, 40, 40), 0, patch_size=6, stride=3, batch_size=10,
                       progress=lambda done, total: calls.append((done, total)))
    total = result.probability.numel()
    assert calls == [(min(10 * (i + 1), total), total) for i in range(math.ceil(total / 10))]


@pytest.mark.parametrize("method", ["naive", "batched", "incremental"])
def test_should_stop_cancels(method: str) -> None:
    model = hand_built_model()
    polls: list[int] = []

    def stop_at_third_poll() -> bool:
        polls.append(1)
        return len(polls) == 3

    with pytest.raises(OcclusionCancelled, match="cancelled") as caught:
        occlusion(model, torch.rand(1, 3, 40, 40), 0, patch_size=6, stride=3, batch_size=5, method=method,
                  should_stop=stop_at_third_poll)
    per_batch = 1 if method == "naive" else 5
    assert caught.value.done == 2 * per_batch  # polled before the set-up, then before the second and third batch
    assert caught.value.total == len(patch_starts(40, 6, 3)) ** 2
    assert len(polls) == 3
    assert not has_hooks(model.network)


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
    with pytest.raises(TypeError, match="VizModel"):
        occlusion(model.network, torch.rand(1, 3, 40, 40), 0)
    with pytest.raises(ValueError, match="kind"):
        occlusion(model, torch.rand(1, 3, 40, 40), 0, patch_size=10, stride=10).heatmap("relevance")


@pytest.mark.parametrize("method", ["naive", "batched", "incremental"])
def test_model_unchanged_and_no_hooks_remain(method: str, random_glyphnet: VizModel) -> None:
    model = random_glyphnet
    image = glyph_image(2)
    state = {k: v.clone() for k, v in model.network.state_dict().items()}

    def input_gradient() -> torch.Tensor:
        pixels = image.clone().requires_grad_(True)
        model(pixels)[0, 3].backward()
        return pixels.grad

    before = input_gradient()
    occlusion(model, image, 3, patch_size=16, stride=16, method=method)

    def failing_progress(done: int, total: int) -> None:
        raise RuntimeError("progress display broke")

    with pytest.raises(RuntimeError, match="progress display broke"):
        occlusion(model, image, 3, patch_size=16, stride=16, method=method, progress=failing_progress)
    assert not has_hooks(model.network)
    assert not model.network.training
    assert all(not p.requires_grad for p in model.network.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.network.state_dict().items())
    torch.testing.assert_close(input_gradient(), before, atol=0, rtol=0)


def test_plot_occlusion_overlays_the_heatmap_with_a_colour_bar() -> None:
    import matplotlib.pyplot as plt

    model = hand_built_model()
    image = torch.rand(1, 3, 40, 40)
    result = occlusion(model, image, 0, patch_size=10, stride=5)
    figure = plot_occlusion(result, image)
    assert len(figure.axes) == 2  # the image axes and the colour bar
    shown = figure.axes[0].images[1].get_array()
    assert shown.shape == (40, 40)
    torch.testing.assert_close(torch.as_tensor(shown.filled(float("nan"))).float(), result.heatmap(), equal_nan=True)
    _, ax = plt.subplots()
    assert plot_occlusion(result, image, ax=ax, kind="probability") is ax.figure
    with pytest.raises(ValueError, match="computed for"):
        plot_occlusion(result, torch.rand(1, 3, 20, 20))
    plt.close("all")
