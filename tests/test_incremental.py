"""Exact incremental inference (viztools.incremental): equal to full forward passes, its fallbacks, thread safety.

Hand-built networks cover every operation the engine computes on windows; the helpers here (``hand_built_model``,
``wrap``, ``sensitive``, ``glyph_image``) are also used by ``test_occlusion.py``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import viztools
from viztools.incremental import IncrementalInference
from viztools.models import VizModel
from viztools.occlusion import FILLS, occlusion

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


def centred_glyphnet_model() -> VizModel:
    """GlyphNet with random weights, its logits centred on ``glyph_image(3)`` and magnified."""
    torch.manual_seed(0)
    return sensitive(viztools.load_model("glyphnet", weights="random"), glyph_image(3), 300.0)


@pytest.fixture(scope="module")
def centred_glyphnet() -> VizModel:
    """Not conftest's plain ``random_glyphnet``: logits centred and magnified so that occlusion moves them."""
    return centred_glyphnet_model()


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


def test_random_glyphnet_fast_paths_equal_naive(centred_glyphnet: VizModel) -> None:
    assert_matches_naive(centred_glyphnet, glyph_image(3), 0, patch_size=12, stride=8, fill="blur")


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
# The engine on its own
# --------------------------------------------------------------------------------------------------------------


def occluded_images(image: torch.Tensor, fill: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """The reference: one full copy of ``image`` per box, with the box's pixels taken from ``fill``."""
    images = image.repeat(len(boxes), 1, 1, 1)
    for i, (top, bottom, left, right) in enumerate(boxes):
        images[i, :, top:bottom, left:right] = fill[0, :, top:bottom, left:right]
    return images


def test_engine_equals_full_forward_passes_on_the_boxes_it_was_built_for() -> None:
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    network = hand_built_model(centre_on=image).network
    fill = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(6))
    boxes = [(r, min(r + 9, 96), c, min(c + 9, 96)) for r in range(0, 96, 11) for c in range(0, 96, 13)]
    engine = IncrementalInference(network, image, fill, boxes)
    assert engine.reason is None
    assert 0.0 < engine.work_fraction < 0.8
    assert engine.bytes_per_image > 0 and engine.forward_bytes_per_image > 0
    with torch.no_grad():
        expected = network(occluded_images(image, fill, boxes[:20]))
        last = network(occluded_images(image, fill, boxes[-3:]))
    assert expected.std(dim=0).max() > 1e-3, "the boxes must change the logits for the test to mean anything"
    torch.testing.assert_close(engine(boxes[:20]), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(engine(boxes[-3:]), last, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("network", "reason"), [(InPlace, "in place"), (BatchSizeInView, "two test patches")])
def test_engine_states_why_it_cannot_serve_a_network(network: type, reason: str) -> None:
    image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    engine = IncrementalInference(network().eval(), image, torch.full_like(image, 0.5), [(0, 4, 0, 4), (4, 8, 2, 6)])
    assert reason in engine.reason
    assert engine.work_fraction == 1.0
    with pytest.raises(ValueError, match=reason):
        engine([(0, 4, 0, 4)])


def test_engine_needs_boxes() -> None:
    image = torch.rand(1, 3, 12, 12)
    with pytest.raises(ValueError, match="at least one"):
        IncrementalInference(InPlace(), image, image, [])
