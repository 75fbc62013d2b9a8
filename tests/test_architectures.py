"""Every technique on every architecture: one parametrized matrix (issue 11, "Your own model").

Each registry architecture (random weights: only SqueezeNet's ImageNet weights are on disk here) and a small user
CNN with batch norm and a residual add, wrapped by ``viztools.wrap_model``, runs every public technique with tiny
settings at a small image size. Each case checks the documented result shapes and that the model is left as it was
(same parameters and buffers, no hooks, eval mode, frozen parameters, no torch function mode left active).

Device: every call runs under :class:`NewTensorsOnMeta`: a tensor a technique creates from scratch without
``device=`` (``torch.zeros(...)``, ``torch.rand(..., generator=...)``, ``torch.tensor([...])``) lands on ``meta``.
The model and the images are on the CPU, so the first operation mixing such a tensor with the model's tensors
fails: the test fails where code assumes the CPU and would break on a GPU. (As torch's own ``with
torch.device("meta")``, except that ``torch.as_tensor(tensor)`` keeps a tensor where it is.)

Occlusion: where the incremental engine cannot serve an architecture, ``method="auto"`` must fall back to batching,
and the answer must equal the batched one either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._device import _device_constructors

import viztools
from viztools import (
    adversarial,
    class_visualization,
    deepdream,
    embeddings,
    filters,
    grad_cam,
    integrated_gradients,
    inversion,
    occlusion,
    patches,
    saliency,
    smooth_grad,
    style,
)
from viztools.hooks import has_hooks
from viztools.models import VizModel


class ResidualCNN(nn.Module):
    """A user's own small classifier: conv-bn-relu stem, one residual block, a head. Its residual add is in place and
    its last ReLU functional, as in many hand-written networks (the incremental occlusion engine cannot follow an
    in-place add: occlusion falls back to batching)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(2))
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.bn_b(self.conv_b(self.act_a(self.bn_a(self.conv_a(x)))))
        out += x
        return self.fc(torch.flatten(self.pool(F.relu(out)), 1))


def _residual_cnn() -> VizModel:
    network = ResidualCNN()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode matters
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    with pytest.warns(UserWarning, match="outputs of bn_b are changed in place"):  # by `out += x`
        return viztools.wrap_model(network, ["circle", "square", "star", "cross"], mean=(0.5, 0.5, 0.5),
                                   std=(0.25, 0.25, 0.25), input_size=32, name="residual_cnn")


@dataclass(frozen=True)
class Arch:
    """An architecture with the layers its cases use and the image size they run at."""

    name: str
    size: int
    layer: str  # a spatial layer in the middle (patches, t-SNE, neuron gradient, inversion, DeepDream, content)
    style_layers: tuple[str, str]
    build: Callable[[], VizModel] | None = None
    incremental: bool = True  # the exact incremental occlusion engine serves it (else occlusion falls back)

    def model(self) -> VizModel:
        if self.build is not None:
            return self.build()
        return viztools.load_model(self.name, weights="random", device="cpu")


ARCHS = [
    Arch("glyphnet", 64, "conv3", ("conv1", "conv2")),
    Arch("squeezenet1_0", 64, "fire3", ("conv1", "fire2")),
    Arch("squeezenet1_1", 64, "fire3", ("conv1", "fire2")),
    Arch("alexnet", 64, "conv2", ("conv1", "conv2")),
    Arch("vgg16", 64, "conv3_1", ("conv1_1", "conv2_1")),
    Arch("googlenet", 64, "inception3a", ("conv1", "conv2")),
    Arch("resnet18", 64, "layer2", ("conv1", "layer1")),
    Arch("mobilenet_v3_small", 64, "features.3", ("features.0", "features.1")),
    Arch("residual_cnn", 32, "act_a", ("stem.2", "act_a"), build=_residual_cnn, incremental=False),
]
SLOW_ARCHS = {"vgg16"}  # 138 M parameters: built once, its cases take seconds


class NewTensorsOnMeta(TorchFunctionMode):
    """Tensors created without ``device=`` go to ``meta`` (a tensor passed to ``as_tensor`` stays where it is)."""

    def __torch_function__(self, func: object, types: tuple, args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = dict(kwargs or {})
        from_tensor = func in (torch.as_tensor, torch.asarray) and args and isinstance(args[0], torch.Tensor)
        if func in _device_constructors() and kwargs.get("device") is None and not from_tensor:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def fingerprint(model: VizModel) -> dict[str, tuple[int, int, int, float]]:
    """Per tensor of the state dict: identity, storage, version counter (bumped by every in-place write through the
    tensor) and the sum of a strided sample of its values (catches writes through ``.data``). Cheap on VGG16."""
    result = {}
    for key, value in model.network.state_dict(keep_vars=True).items():
        flat = value.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 4096)].double().sum()
        result[key] = (id(value), value.data_ptr(), value._version, float(sample))
    return result


@pytest.fixture(scope="module", params=[pytest.param(a, id=a.name, marks=[pytest.mark.slow] if a.name in SLOW_ARCHS
                                                      else []) for a in ARCHS])
def arch(request: pytest.FixtureRequest) -> tuple[Arch, VizModel, dict]:
    spec: Arch = request.param
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = spec.model()
    return spec, model, fingerprint(model)


def images(spec: Arch, seed: int, count: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(seed), device="cpu")


def image_shape(spec: Arch) -> tuple[int, int, int, int]:
    return (1, 3, spec.size, spec.size)


# --------------------------------------------------------------------------------------------------------------
# The techniques: each runs briefly and checks its documented shapes
# --------------------------------------------------------------------------------------------------------------


def check_patches(spec: Arch, model: VizModel) -> None:
    result = patches.top_activating_patches(model, images(spec, 3, count=4), layer=spec.layer, channel=1, k=2,
                                            batch_size=2)
    assert result.values.shape == (2,) and len(result.patches) == 2
    assert all(p.dim() == 3 and p.shape[0] == 3 and 0 < p.shape[1] <= spec.size for p in result.patches)


def check_filters(spec: Arch, model: VizModel) -> None:
    first = filters.filter_grid(model, layer=spec.style_layers[0])
    assert first.mode == "rgb" and first.tiles.shape[-1] == 3 and first.mosaic.ndim == 3
    deep = filters.filter_grid(model, layer=spec.layer)
    assert deep.weight_shape[1] != 3 or deep.mode == "rgb"
    assert deep.tiles.min() >= 0.0 and deep.tiles.max() <= 1.0


def check_tsne(spec: Arch, model: VizModel) -> None:
    result = embeddings.tsne_embedding(model, images(spec, 4, count=6), layer=spec.layer, perplexity=2,
                                       pca_dims=None, batch_size=3)
    assert result.coordinates.shape == (6, 2) and result.features.shape[0] == 6


def check_occlusion(spec: Arch, model: VizModel) -> None:
    image = images(spec, 1)
    options = dict(patch_size=spec.size // 4, stride=spec.size // 4, batch_size=8)
    batched = occlusion.occlusion(model, image, 0, method="batched", **options)
    auto = occlusion.occlusion(model, image, 0, method="auto", **options)
    assert batched.probability.shape == (4, 4) and auto.probability.shape == (4, 4)
    torch.testing.assert_close(auto.probability, batched.probability, atol=1e-5, rtol=1e-4)
    if spec.incremental:
        incremental = occlusion.occlusion(model, image, 0, method="incremental", **options)
        torch.testing.assert_close(incremental.probability, batched.probability, atol=1e-5, rtol=1e-4)
    else:  # the engine cannot serve this architecture: auto fell back to batching
        with pytest.raises(ValueError, match="cannot handle this model"):
            occlusion.occlusion(model, image, 0, method="incremental", **options)
        assert auto.method == "batched"


def check_saliency(spec: Arch, model: VizModel) -> None:
    image = images(spec, 1)
    assert saliency.saliency(model, image, 0).shape == (spec.size, spec.size)
    for method in (saliency.guided_backprop, saliency.deconvnet):
        gradient = method(model, image, 0)
        assert gradient.shape == (3, spec.size, spec.size) and torch.isfinite(gradient).all()
    neuron = saliency.neuron_gradient(model, image, layer=spec.layer, channel=0, rule="guided")
    assert neuron.gradient.shape == (3, spec.size, spec.size) and neuron.position is not None


def check_attribution(spec: Arch, model: VizModel) -> None:
    image = images(spec, 1)
    cam = grad_cam.grad_cam(model, image, 0, layer=spec.layer)
    assert cam.attribution.shape == (spec.size, spec.size) and cam.layer_map.dim() == 2
    assert grad_cam.default_layer(model) in model.layers  # the last convolutional block
    smooth = smooth_grad.smooth_grad(model, image, 0, samples=2)
    assert smooth.gradient.shape == (3, spec.size, spec.size) and smooth.saliency.shape == (spec.size, spec.size)
    integrated = integrated_gradients.integrated_gradients(model, image, 0, steps=2, batch_size=2)
    assert integrated.attribution.shape == (3, spec.size, spec.size)


def check_class_visualization(spec: Arch, model: VizModel) -> None:
    result = class_visualization.class_visualization(model, images(spec, 1), 1, steps=2, blur_every=2)
    assert result.image.shape == image_shape(spec)


def check_inversion(spec: Arch, model: VizModel) -> None:
    result = inversion.invert_features(model, images(spec, 1), layer=spec.layer, steps=2)
    assert result.image.shape == image_shape(spec)


def check_deepdream(spec: Arch, model: VizModel) -> None:
    result = deepdream.deepdream(model, images(spec, 1), layer=spec.layer, steps=1, octaves=1)
    assert result.image.shape == image_shape(spec)


def check_style(spec: Arch, model: VizModel) -> None:
    result = style.style_transfer(model, images(spec, 1), images(spec, 2), content_layer=spec.layer,
                                  style_layers=list(spec.style_layers), optimizer="adam", steps=2)
    assert result.image.shape == image_shape(spec)


def check_adversarial(spec: Arch, model: VizModel) -> None:
    image = images(spec, 1)
    fooled = adversarial.fooling_image(model, image, 1, max_steps=2)
    assert fooled.adversarial.shape == image_shape(spec)
    fgsm = adversarial.fgsm(model, image, epsilon=0.03)
    assert fgsm.adversarial.shape == image_shape(spec)
    assert float((fgsm.adversarial - image.to(fgsm.adversarial)).abs().max()) <= 0.03 + 1e-6


TECHNIQUES = {
    "patches": check_patches,
    "filters": check_filters,
    "tsne": check_tsne,
    "occlusion": check_occlusion,
    "saliency": check_saliency,
    "grad_cam_smoothgrad_ig": check_attribution,
    "class_visualization": check_class_visualization,
    "inversion": check_inversion,
    "deepdream": check_deepdream,
    "style": check_style,
    "adversarial": check_adversarial,
}


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_technique_runs_on_architecture(technique: str, arch: tuple[Arch, VizModel, dict]) -> None:
    spec, model, before = arch
    with NewTensorsOnMeta():  # a tensor made without device= would land on meta and fail (see the docstring)
        TECHNIQUES[technique](spec, model)
    assert not has_hooks(model.network), f"{technique} left hooks on {spec.name}"
    assert _get_current_function_mode_stack() == [], f"{technique} left a torch function mode active"
    assert not any(m.training for m in model.network.modules()), f"{technique} left {spec.name} in training mode"
    assert not any(p.requires_grad for p in model.network.parameters()), f"{technique} unfroze {spec.name}"
    assert fingerprint(model) == before, f"{technique} changed the weights or buffers of {spec.name}"


def test_the_device_check_catches_a_tensor_made_without_device() -> None:
    """What the matrix relies on: under NewTensorsOnMeta a technique that builds a CPU tensor and mixes it with the
    model's fails, while explicit devices, tensors derived from the input and as_tensor(tensor) pass."""
    weight = torch.ones(3, device="cpu")
    with NewTensorsOnMeta(), pytest.raises((RuntimeError, NotImplementedError)):
        float((torch.zeros(3) + weight).sum())  # what `torch.zeros(...)` in a technique would do on a GPU model
    with NewTensorsOnMeta():
        assert float((torch.zeros(3, device=weight.device) + torch.zeros_like(weight) + weight).sum()) == 3.0
        assert torch.as_tensor(weight).device == weight.device
