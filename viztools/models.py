"""Models for the course: the built-in GlyphNet and torchvision's ImageNet classifiers.

``load_model(name)`` returns a :class:`VizModel`, the one object every technique takes. It carries the network
(eval mode, frozen parameters, out-of-place ReLUs so hooks and modified backward passes work), its
normalization, class names, input size and the named layers a dropdown can offer. Metadata travels with the
weights as in torchvision's weights API (``Weights.meta["categories"]``): callers never hard-code mean/std or
class names.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision
from torch import nn

from viztools._validation import check_image, check_int, suggest

WEIGHTS_DIR_ENV = "VIZTOOLS_WEIGHTS_DIR"
OFFLINE_ENV = "VIZTOOLS_OFFLINE"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GLYPHNET_WEIGHTS = Path(__file__).parent / "weights" / "glyphnet.pt"


@dataclass(eq=False)
class VizModel:
    """A classifier ready for visualization: ``model(pixels)`` maps ``(N, 3, H, W)`` pixels in [0, 1] to logits.

    Attributes:
        name: registry name (``"glyphnet"``, ``"squeezenet1_1"``, ...).
        network: the torch module; it expects *normalized* input. Eval mode, parameters frozen.
        categories: class names, index-aligned with the logits.
        input_size: side of the square input the network was trained on.
        mean, std: per-channel normalization applied inside ``__call__``.
        layers: friendly layer name -> dotted module path in ``network``, in forward order. Each names the
            activation after the block's nonlinearity (``"conv1"`` is conv1's ReLU output).
        weights_source: where the weights came from (a path, ``"random"``, ...).
        note: a message for the user (e.g. why ``"auto"`` fell back to GlyphNet), or None.

    ``model.device`` is where the network's parameters live; ``model(pixels)`` and every technique move the
    pixels there, and ``model.to(device)`` moves the network.
    """

    name: str
    network: nn.Module
    categories: list[str]
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layers: dict[str, str] = field(default_factory=dict)
    weights_source: str = "random"
    note: str | None = None

    def __post_init__(self) -> None:
        self._sizes_checked: set[tuple[int, int]] = set()
        prepare_network(self.network)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device="cpu").view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device="cpu").view(1, 3, 1, 1)
        self._statistics_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        for friendly, path in self.layers.items():
            _get_submodule(self.network, path, friendly)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of pixel images in [0, 1] (moved to the model's device)."""
        pixels = check_image(pixels, "pixels", batch=True)
        return self.network(self.normalize(pixels.to(self.device)))

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters (or buffers); CPU for a network without either."""
        tensor = next(self.network.parameters(), None)
        if tensor is None:
            tensor = next(self.network.buffers(), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def to(self, device: str | torch.device) -> VizModel:
        """Move the network to ``device`` (``"cpu"``, ``"cuda"``, ``"mps"``, a ``torch.device``); returns self."""
        self.network.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        return (
            f"VizModel(name={self.name!r}, classes={len(self.categories)}, input_size={self.input_size}, "
            f"layers={list(self.layers)}, weights={self.weights_source!r})"
        )

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ValueError naming the fix when the whole classifier cannot run on ``height x width`` images.

        Found by one forward pass of a blank image of that size (remembered per size): a network with a fixed
        fully connected head (GlyphNet) runs only near its input size, convolutional ones down to a minimum.
        """
        size = (int(height), int(width))
        if size in self._sizes_checked:
            return
        parameter = next(self.network.parameters(), None)
        blank = torch.zeros(1, 3, *size, device=self.device, dtype=None if parameter is None else parameter.dtype)
        try:
            with torch.no_grad():
                self.network(blank)
        except RuntimeError as error:
            raise ValueError(
                f"Model {self.name!r} cannot classify a {size[0]}x{size[1]} px image (its input size is "
                f"{self.input_size} px; the network failed with: {str(error).splitlines()[0]}). Resize the image: "
                f"model.preprocess(source) or viztools.load_image(source, size={self.input_size})."
            ) from None
        self._sizes_checked.add(size)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the network's normalized input."""
        mean, std = self._statistics(pixels)
        return (pixels - mean) / std

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        """The network's normalized input -> pixels (not clamped)."""
        mean, std = self._statistics(normalized)
        return normalized * std + mean

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std on ``like``'s device and dtype, copied there once (no host-device copy per call)."""
        key = (like.device, like.dtype)
        cached = self._statistics_cache.get(key)
        if cached is None:
            cached = self._statistics_cache[key] = (self._mean.to(like), self._std.to(like))
        return cached

    def preprocess(self, source: object) -> torch.Tensor:
        """Any image (example name, path, array, PIL image, tensor) -> ``(1, 3, S, S)`` pixels at the input size,
        on the model's device."""
        from viztools.data import load_image

        return load_image(source, size=self.input_size).to(self.device)

    def deprocess(self, pixels: torch.Tensor) -> np.ndarray:
        """Pixel tensor -> ``(H, W, 3)`` float array in [0, 1] for ``plt.imshow``."""
        from viztools.data import to_numpy_image

        return to_numpy_image(pixels)

    def layer_path(self, name: str) -> str:
        """Resolve a friendly layer name or a dotted module path to the dotted path."""
        if name in self.layers:
            return self.layers[name]
        if isinstance(name, str) and name and name in dict(self.network.named_modules()):
            return name
        if not self.layers:
            raise ValueError(f"Unknown layer {name!r}: model {self.name!r} has no named layers; " + _NO_LAYER_HINT)
        raise ValueError(
            f"Unknown layer {name!r} for model {self.name!r}.{suggest(name, list(self.layers))} "
            f"Choose one of: {', '.join(self.layers)} (or a dotted module path from model.network.named_modules())."
        )

    def layer(self, name: str) -> nn.Module:
        """The module for a friendly layer name or a dotted module path."""
        return self.network.get_submodule(self.layer_path(name))

    def class_index(self, target: int | str) -> int:
        """Resolve a class index or a class name (case-insensitive) to an index."""
        if isinstance(target, str):
            lowered = [c.lower() for c in self.categories]
            if target.lower() in lowered:
                return lowered.index(target.lower())
            raise ValueError(
                f"Unknown class name {target!r} for model {self.name!r}.{suggest(target, self.categories)} "
                f"See model.categories for the {len(self.categories)} class names."
            )
        if isinstance(target, torch.Tensor) and target.numel() == 1:
            target = int(target.item())
        return check_int(target, "target class index", low=0, high=len(self.categories) - 1)

    def resolve_target(self, target: int | str | None, pixels: torch.Tensor) -> int:
        """``class_index(target)``, or the top prediction for ``pixels`` when ``target`` is None."""
        if target is None:
            with torch.no_grad():
                return int(self(pixels).argmax(dim=1)[0])
        return self.class_index(target)

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, classes)``."""
        return torch.softmax(self(pixels), dim=1)

    def top_k(self, pixels: torch.Tensor, k: int = 5) -> list[tuple[int, str, float]]:
        """The k most probable classes of a single image as ``(index, name, probability)``."""
        k = check_int(k, "k", low=1, high=len(self.categories))
        probs = self.predict(check_image(pixels, "pixels"))[0]
        values, indices = probs.topk(k)
        return [(int(i), self.categories[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]


def prepare_network(network: nn.Module) -> nn.Module:
    """Make a network safe for visualization, in place: eval mode, frozen parameters, no in-place ops.

    In-place ReLUs break full backward hooks and overwrite stored activations (pytorch #61519, captum #973).
    """
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    for module in network.modules():
        if hasattr(module, "inplace") and module.inplace:
            module.inplace = False
    return network


def _get_submodule(network: nn.Module, path: str, friendly: str) -> nn.Module:
    try:
        return network.get_submodule(path)
    except AttributeError as error:
        raise ValueError(f"Layer {friendly!r} points at {path!r}, which the network does not have.") from error


# --------------------------------------------------------------------------------------------------------------
# Registry of ImageNet models
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageNetSpec:
    builder: Callable[..., nn.Module]
    weights_enum: type[torchvision.models.WeightsEnum]
    layers: dict[str, str]
    adapt: Callable[[nn.Module], nn.Module] = lambda network: network


def _squeezenet_layers(fire_indices: dict[str, int], pools: dict[str, int]) -> dict[str, str]:
    blocks = {"conv1": 1, "pool1": 2, **fire_indices, **pools}
    ordered = sorted(blocks.items(), key=lambda item: item[1])
    layers = {name: f"features.{index}" for name, index in ordered}
    layers.update({"conv10": "classifier.2", "logits": "classifier.3"})
    return layers


def _vgg16_layers() -> dict[str, str]:
    names = ["conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_2", "conv3_3",
             "pool3", "conv4_1", "conv4_2", "conv4_3", "pool4", "conv5_1", "conv5_2", "conv5_3", "pool5"]
    indices = [1, 3, 4, 6, 8, 9, 11, 13, 15, 16, 18, 20, 22, 23, 25, 27, 29, 30]
    layers = {name: f"features.{i}" for name, i in zip(names, indices, strict=True)}
    layers.update({"fc6": "classifier.1", "fc7": "classifier.4", "logits": "classifier.6"})
    return layers


def _googlenet_explicit_relus(network: nn.Module) -> nn.Module:
    """torchvision's GoogLeNet applies a functional in-place ReLU inside BasicConv2d; make it a module."""
    from torchvision.models.googlenet import BasicConv2d

    for parent in list(network.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BasicConv2d):
                block = nn.Sequential(OrderedDict(conv=child.conv, bn=child.bn, relu=nn.ReLU()))
                setattr(parent, child_name, block)
    return network


_GOOGLENET_BLOCKS = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                     "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                     "inception5a", "inception5b", "avgpool"]

IMAGENET_MODELS: dict[str, _ImageNetSpec] = {
    "squeezenet1_0": _ImageNetSpec(
        torchvision.models.squeezenet1_0,
        torchvision.models.SqueezeNet1_0_Weights,
        _squeezenet_layers({"fire2": 3, "fire3": 4, "fire4": 5, "fire5": 7, "fire6": 8, "fire7": 9, "fire8": 10,
                            "fire9": 12}, {"pool4": 6, "pool8": 11}),
    ),
    "squeezenet1_1": _ImageNetSpec(
        torchvision.models.squeezenet1_1,
        torchvision.models.SqueezeNet1_1_Weights,
        _squeezenet_layers({"fire2": 3, "fire3": 4, "fire4": 6, "fire5": 7, "fire6": 9, "fire7": 10, "fire8": 11,
                            "fire9": 12}, {"pool3": 5, "pool5": 8}),
    ),
    "alexnet": _ImageNetSpec(
        torchvision.models.alexnet,
        torchvision.models.AlexNet_Weights,
        {"conv1": "features.1", "pool1": "features.2", "conv2": "features.4", "pool2": "features.5",
         "conv3": "features.7", "conv4": "features.9", "conv5": "features.11", "pool5": "features.12",
         "fc6": "classifier.2", "fc7": "classifier.5", "logits": "classifier.6"},
    ),
    "vgg16": _ImageNetSpec(torchvision.models.vgg16, torchvision.models.VGG16_Weights, _vgg16_layers()),
    "googlenet": _ImageNetSpec(
        lambda **kwargs: torchvision.models.googlenet(aux_logits=True, transform_input=True, init_weights=False,
                                                      **kwargs),
        torchvision.models.GoogLeNet_Weights,
        {**{name: name for name in _GOOGLENET_BLOCKS}, "logits": "fc"},
        adapt=_googlenet_explicit_relus,
    ),
}



class _BasicBlock(torchvision.models.resnet.BasicBlock):
    """torchvision's BasicBlock with an out-of-place residual add (``out += identity`` changes bn2's output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class _Bottleneck(torchvision.models.resnet.Bottleneck):
    """torchvision's Bottleneck with an out-of-place residual add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class _InvertedResidual(torchvision.models.mobilenetv3.InvertedResidual):
    """torchvision's MobileNetV3 block with an out-of-place residual add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        return result + x if self.use_res_connect else result


_OUT_OF_PLACE_BLOCKS = {torchvision.models.resnet.BasicBlock: _BasicBlock,
                        torchvision.models.resnet.Bottleneck: _Bottleneck,
                        torchvision.models.mobilenetv3.InvertedResidual: _InvertedResidual}


def _out_of_place_residuals(network: nn.Module) -> nn.Module:
    """Residual blocks add in place (``out += identity``): that rewrites the batch norm output a hook recorded, and
    the exact incremental occlusion engine cannot follow it. Same weights, same results, out-of-place add."""
    for module in network.modules():
        if type(module) in _OUT_OF_PLACE_BLOCKS:
            module.__class__ = _OUT_OF_PLACE_BLOCKS[type(module)]
    return network


def _resnet_layers() -> dict[str, str]:
    """conv1 after its ReLU, the stem's max pool, each stage's output (its last block: residual add + ReLU)."""
    stages = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
    return {"conv1": "relu", "maxpool": "maxpool", **stages, "avgpool": "avgpool", "logits": "fc"}


def _mobilenet_v3_layers(blocks: int) -> dict[str, str]:
    """Every block of ``features`` (stem conv, inverted residuals, last conv), the pool, the logits."""
    return {**{f"features.{i}": f"features.{i}" for i in range(blocks)}, "avgpool": "avgpool",
            "logits": "classifier.3"}


IMAGENET_MODELS.update({
    "resnet18": _ImageNetSpec(torchvision.models.resnet18, torchvision.models.ResNet18_Weights, _resnet_layers(),
                              adapt=_out_of_place_residuals),
    "resnet50": _ImageNetSpec(torchvision.models.resnet50, torchvision.models.ResNet50_Weights, _resnet_layers(),
                              adapt=_out_of_place_residuals),
    "mobilenet_v3_large": _ImageNetSpec(torchvision.models.mobilenet_v3_large,
                                        torchvision.models.MobileNet_V3_Large_Weights, _mobilenet_v3_layers(17),
                                        adapt=_out_of_place_residuals),
    "mobilenet_v3_small": _ImageNetSpec(torchvision.models.mobilenet_v3_small,
                                        torchvision.models.MobileNet_V3_Small_Weights, _mobilenet_v3_layers(13),
                                        adapt=_out_of_place_residuals),
})

MODEL_NAMES: tuple[str, ...] = ("glyphnet", *IMAGENET_MODELS)


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def _default_weights(name: str) -> torchvision.models.WeightsEnum:
    return IMAGENET_MODELS[name].weights_enum.DEFAULT


def _weights_dirs() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if p]


def find_local_weights(name: str) -> Path | None:
    """A weights file for ``name`` available offline, or None.

    Looks in the folders of ``$VIZTOOLS_WEIGHTS_DIR`` for ``<name>.pth``, ``<name>-*.pth`` or ``<name>_*.pth``
    (``.pt`` too), then in the torch hub cache where torchvision stores downloads.
    """
    _check_model_name(name)
    if name == "glyphnet":
        return GLYPHNET_WEIGHTS if GLYPHNET_WEIGHTS.is_file() else None
    for folder in _weights_dirs():
        candidates = sorted(
            path for pattern in (f"{name}.pt*", f"{name}-*.pt*", f"{name}_*.pt*") for path in folder.glob(pattern)
        )
        candidates = [path for path in candidates if path.suffix in (".pth", ".pt") and path.is_file()]
        if candidates:
            return candidates[0]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(_default_weights(name).url).path).name
    return cached if cached.is_file() else None


def _can_reach(url: str, timeout: float = 3.0) -> bool:
    if os.environ.get(OFFLINE_ENV):
        return False
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _missing_weights_message(name: str) -> str:
    url = _default_weights(name).url
    filename = Path(urlparse(url).path).name
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"No ImageNet weights for {name!r} are available offline, and they cannot be downloaded now. "
        f"Provide them in one of these ways: (1) load_model({name!r}, weights='/path/to/{filename}'); "
        f"(2) put the file in a folder and set {WEIGHTS_DIR_ENV} to that folder; "
        f"(3) on a machine with internet, run `viztools download {name}` (stores {filename} in {hub}). "
        "Or use load_model('glyphnet'), the built-in model that needs no download."
    )


def _download_weights(name: str) -> Path:
    """Download torchvision's weights for ``name`` into the torch hub cache (only when the host is reachable)."""
    url = _default_weights(name).url
    if not _can_reach(url):
        raise RuntimeError(_missing_weights_message(name))
    _default_weights(name).get_state_dict(progress=True, check_hash=True)
    path = find_local_weights(name)
    if path is None:  # pragma: no cover - torchvision stored it somewhere unexpected
        raise RuntimeError(f"Downloaded weights for {name!r} but cannot find them in {torch.hub.get_dir()}.")
    return path


def download_weights(name: str) -> Path:
    """Fetch ImageNet weights for ``name`` into the torch hub cache and return the file (for ``viztools download``)."""
    _check_model_name(name)
    if name == "glyphnet":
        raise ValueError("GlyphNet's weights ship with viztools; there is nothing to download.")
    return find_local_weights(name) or _download_weights(name)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict file (plain, or wrapped under ``"state_dict"``), casting floating tensors to float32."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist. Check the path (weights=...).")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Cannot read weights file {str(path)!r}: {error}. Is it a PyTorch state_dict?") from error
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"Weights file {str(path)!r} does not hold a state_dict (a dict of tensors).")
    return {k: v.float() if v.is_floating_point() else v for k, v in loaded.items()}


def _load_into(network: nn.Module, state_dict: dict[str, torch.Tensor], name: str, source: str) -> None:
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(
            f"The weights in {source!r} do not fit the {name!r} architecture ({first_line}). "
            f"Pass a state_dict saved from torchvision.models.{name}() (or viztools' own for glyphnet)."
        ) from error


# --------------------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------------------


def _check_model_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(
            f"Unknown model {name!r}.{suggest(name, MODEL_NAMES)} Choose one of: {', '.join(MODEL_NAMES)}, "
            "or 'auto' (ImageNet SqueezeNet when its weights are available, else GlyphNet)."
        )


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> a GPU when there is one (CUDA, then Apple's MPS), else the CPU; a name or ``torch.device`` is
    checked (a GPU that is not available gives an error saying so)."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"Unknown device {device!r} ({error}). Use 'cpu', 'cuda', 'cuda:0', 'mps' or a torch.device, or None "
            "for a GPU when available."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} asked for, but torch sees no CUDA GPU here. Use device='cpu' (or None).")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"Device {device!r} asked for, but MPS is not available here. Use device='cpu' (or None).")
    return resolved


def load_model(name: str = "auto", weights: str | os.PathLike | None = None, *, quiet: bool = False,
               device: str | torch.device | None = None) -> VizModel:
    """Load a model for visualization.

    Args:
        name: ``"glyphnet"`` (built-in, always available), an ImageNet model (``"squeezenet1_1"``,
            ``"squeezenet1_0"``, ``"alexnet"``, ``"vgg16"``, ``"googlenet"``, ``"resnet18"``, ``"resnet50"``,
            ``"mobilenet_v3_large"``, ``"mobilenet_v3_small"``), or ``"auto"``: ImageNet SqueezeNet when its
            weights are available offline, else GlyphNet with a note.
        weights: None to find the weights (``$VIZTOOLS_WEIGHTS_DIR``, the torch hub cache, then a download
            when online), a path to a state_dict file, or ``"random"`` for an untrained network.
        quiet: with ``"auto"``, do not warn when falling back to GlyphNet; the reason stays in ``model.note``
            (lecture notebooks print it where they want to).
        device: where the network runs: None (default) a GPU when available (CUDA, then MPS), else the CPU;
            or ``"cpu"``, ``"cuda"``, ``"mps"``, a ``torch.device``. ``model.device`` tells; techniques follow it.
    """
    target_device = resolve_device(device)
    if name == "auto":
        return _load_auto(weights, quiet, target_device)
    _check_model_name(name)
    if name == "glyphnet":
        return _load_glyphnet(weights).to(target_device)
    spec = IMAGENET_MODELS[name]
    network = spec.builder(weights=None, num_classes=1000)
    if weights == "random":
        source = "random"
    else:
        path = Path(weights) if weights is not None else find_local_weights(name) or _download_weights(name)
        state_dict = read_state_dict(path)
        if name == "googlenet" and not any(k.startswith("aux1.") for k in state_dict):
            network.aux_logits, network.aux1, network.aux2 = False, None, None
        _load_into(network, state_dict, name, str(path))
        source = str(path)
    if name == "googlenet":
        network.aux_logits, network.aux1, network.aux2 = False, None, None
    network = spec.adapt(network)
    return VizModel(
        name=name,
        network=network,
        categories=list(spec.weights_enum.DEFAULT.meta["categories"]),
        input_size=224,
        layers=dict(spec.layers),
        weights_source=source,
    ).to(target_device)


def _read_glyphnet_metadata(path: str | os.PathLike) -> dict:
    """GlyphNet's metadata (``categories``, ``input_size``, ``mean``, ``std``, training settings) from a json file.

    ``viztools train-glyphnet`` writes it next to the weights (``glyphnet.pt`` -> ``glyphnet.json``), as torchvision's
    ``Weights.meta`` carry their class names and transforms.
    """
    path = Path(path)
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read GlyphNet's metadata file {str(path)!r} ({error}). Recreate the weights and "
                         "their metadata with `viztools train-glyphnet`.") from error
    missing = [key for key in ("categories", "input_size", "mean", "std") if key not in metadata]
    if missing:
        raise ValueError(f"GlyphNet's metadata file {str(path)!r} lacks {', '.join(missing)}. Recreate it with "
                         "`viztools train-glyphnet`.")
    return metadata


def _load_glyphnet(weights: str | os.PathLike | None) -> VizModel:
    """GlyphNet with its class names, input size and normalization from the json beside the weights (the shipped
    json for ``weights="random"`` or a weights file without one)."""
    from viztools.glyphnet import GLYPHNET_LAYERS, GlyphNet

    if weights is None and not GLYPHNET_WEIGHTS.is_file():
        raise FileNotFoundError(
            f"GlyphNet's weights are missing from the package ({GLYPHNET_WEIGHTS}). Reinstall viztools, or recreate "
            "them with `viztools train-glyphnet`."
        )
    path = None if weights == "random" else GLYPHNET_WEIGHTS if weights is None else Path(weights)
    beside = GLYPHNET_WEIGHTS.with_suffix(".json") if path is None else path.with_suffix(".json")
    metadata = _read_glyphnet_metadata(beside if beside.is_file() else GLYPHNET_WEIGHTS.with_suffix(".json"))
    network = GlyphNet(num_classes=len(metadata["categories"]))
    if path is None:
        source = "random"
    else:
        _load_into(network, read_state_dict(path), "glyphnet", str(path))
        source = "built-in" if weights is None else str(path)
    return VizModel(
        name="glyphnet",
        network=network,
        categories=list(metadata["categories"]),
        input_size=int(metadata["input_size"]),
        mean=tuple(metadata["mean"]),
        std=tuple(metadata["std"]),
        layers=dict(GLYPHNET_LAYERS),
        weights_source=source,
    )


AUTO_PREFERENCE: tuple[str, ...] = ("squeezenet1_1", "squeezenet1_0")


def _load_auto(weights: str | os.PathLike | None, quiet: bool, device: torch.device) -> VizModel:
    if weights is not None:
        raise ValueError("load_model('auto') picks the weights itself; name a model to pass weights=.")
    for name in AUTO_PREFERENCE:
        if find_local_weights(name) is not None:
            return load_model(name, device=device)
    model = load_model("glyphnet", device=device)
    model.note = (
        "No ImageNet SqueezeNet weights are available offline, so this uses GlyphNet, the built-in model "
        f"(64x64 icons, {len(model.categories)} classes). To use ImageNet SqueezeNet, set {WEIGHTS_DIR_ENV} to a "
        "folder holding squeezenet1_1 or squeezenet1_0 weights (see `viztools info`)."
    )
    if not quiet:
        warnings.warn(model.note, stacklevel=2)
    return model


def model_availability() -> list[tuple[str, str | None]]:
    """Each model name with the weights file available offline (None when it would need a download)."""
    return [(name, None if (p := find_local_weights(name)) is None else str(p)) for name in MODEL_NAMES]



# --------------------------------------------------------------------------------------------------------------
# Your own model
# --------------------------------------------------------------------------------------------------------------

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus)
# Modules that take a layer's output as it is and are listed instead of it (conv -> bn -> relu lists the relu).
_FOLLOW_UPS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, *_ACTIVATIONS)
_NEVER_LISTED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                 nn.Identity, nn.Flatten, nn.Unflatten)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # exactly these types; their subclasses are blocks
_MIN_AUTO_LAYERS = 3


@dataclass
class _Call:
    """What the probe pass saw of one module: calls, first output (and its version then), first input."""

    order: int
    calls: int
    output: object
    input: object
    version: int


def _probe_calls(network: nn.Module, pixels: torch.Tensor, name: str) -> tuple[dict[str, _Call], object]:
    """One forward pass with a hook on every named module (through viztools.hooks.attach)."""
    from contextlib import ExitStack

    from viztools.hooks import attach

    calls: dict[str, _Call] = {}

    def recorder(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if path in calls:
                calls[path].calls += 1
                return
            first = inputs[0] if inputs else None
            version = output._version if isinstance(output, torch.Tensor) else 0
            calls[path] = _Call(order=len(calls), calls=1, output=output, input=first, version=version)

        return hook

    with ExitStack() as stack, torch.no_grad():
        for path, module in network.named_modules():
            if path:
                stack.enter_context(attach(module, forward=recorder(path)))
        try:
            output = network(pixels)
        except Exception as error:
            raise ValueError(
                f"wrap_model: {name} failed on a batch of two {tuple(pixels.shape[1:])} images (normalized pixels): "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}. Check input_size= (the "
                "side of the square images it was trained on) and that it takes (N, 3, H, W) RGB images."
            ) from error
    return calls, output


def _auto_layers(network: nn.Module, calls: dict[str, _Call]) -> tuple[dict[str, str], list[str]]:
    """The spatial layers a user would pick, in forward order, and the modules left out because they run twice."""
    consumed = {id(call.input) for path, call in calls.items()
                if call.calls == 1 and isinstance(network.get_submodule(path), _FOLLOW_UPS)}
    shared: list[str] = []

    def select(prefix: str, parent: nn.Module) -> list[str]:
        chosen = []
        for child_name, child in parent.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            call = calls.get(path)
            if isinstance(child, _NEVER_LISTED) or call is None:
                continue
            if type(child) in _CONTAINERS:
                chosen += select(path, child)
            elif call.calls > 1:
                shared.append(path)  # a module used twice (one ReLU for a whole block): its output is ambiguous
            elif isinstance(call.output, torch.Tensor) and call.output.dim() == 4:
                leaf = next(child.children(), None) is None
                if not (leaf and id(call.output) in consumed and not isinstance(child, _ACTIVATIONS)):
                    chosen.append(path)
        return chosen

    chosen = select("", network)
    # One big block (a trunk module holding everything) is no choice: open the largest block until there are a few.
    while len(chosen) < _MIN_AUTO_LAYERS:
        blocks = [(sum(1 for _ in network.get_submodule(p).modules()), p) for p in chosen
                  if next(network.get_submodule(p).children(), None) is not None]
        inner = {p: select(p, network.get_submodule(p)) for _, p in sorted(blocks, reverse=True)}
        expandable = next((p for p, found in inner.items() if found), None)
        if expandable is None:
            break
        index = chosen.index(expandable)
        same = any(calls[p].output is calls[expandable].output for p in inner[expandable])  # its last layer's
        chosen[index:index + 1] = [*inner[expandable], *([] if same else [expandable])]
    chosen.sort(key=lambda path: calls[path].order)
    return {path: path for path in chosen}, shared


def _check_statistics(values: object, what: str) -> tuple[float, float, float]:
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    try:
        numbers = tuple(float(v) for v in values)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(np.isfinite(numbers)):
        raise ValueError(f"{what} must be three numbers, one per RGB channel, for pixels in [0, 1]; got {values!r}.")
    if what == "std" and min(numbers) <= 0:
        raise ValueError(f"std must be positive; got {numbers}.")
    if max(abs(v) for v in numbers) > 2.0:
        raise ValueError(f"{what}={numbers} looks like 0-255 values, but viztools' pixels are in [0, 1]: divide by 255 "
                         f"(ImageNet: mean={IMAGENET_MEAN}, std={IMAGENET_STD}).")
    return numbers  # type: ignore[return-value]


def wrap_model(
    module: nn.Module,
    categories: list[str] | None = None,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    input_size: int = 224,
    layers: dict[str, str] | list[str] | None = None,
    name: str | None = None,
) -> VizModel:
    """Turn any image classifier ``nn.Module`` into a :class:`VizModel` that every technique accepts.

    The module takes normalized ``(N, 3, H, W)`` images and returns ``(N, classes)`` logits; ``mean``/``std``
    are its normalization for pixels in [0, 1] (ImageNet's by default), ``categories`` its class names (default
    ``"class 0"``, ...), ``input_size`` the side of its training images. The module is prepared in place as
    ``load_model`` prepares its own: eval mode, frozen parameters, ``inplace`` ReLU-like modules made
    out-of-place; it stays on its device.

    ``layers`` (friendly name -> dotted module path, or a list of paths) defaults to the modules with spatial
    ``(N, C, H, W)`` outputs a user would pick, in forward order, found by one probe forward pass: activation
    modules rather than the convolution or batch norm they follow, whole blocks (a ResNet ``BasicBlock``, an
    Inception module) rather than their insides, named by dotted path, plus ``"logits"``. A module called more
    than once in a pass (one ``self.relu`` for a whole block) is not listed: its output is ambiguous. Functional
    activations (``F.relu(x)``) are not modules, so they cannot be hooked: the layer before them is listed (its
    output is pre-activation), and ``F.relu(x, inplace=True)`` after a listed module overwrites what that
    module recorded (a warning names such layers). Guided backprop and deconvnet still see functional ReLUs.
    """
    if isinstance(module, VizModel):
        raise TypeError("wrap_model takes a torch.nn.Module; this is already a VizModel, use it as it is.")
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"wrap_model takes your classifier as a torch.nn.Module (mapping (N, 3, H, W) normalized images to "
            f"(N, classes) logits); got {type(module).__name__}. For a registered architecture use "
            "viztools.load_model(name)."
        )
    mean, std = _check_statistics(mean, "mean"), _check_statistics(std, "std")
    input_size = check_int(input_size, "input_size", low=1)
    name = type(module).__name__ if name is None else str(name)
    prepare_network(module)
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else next(module.buffers(), torch.empty(0)).device
    dtype = parameter.dtype if parameter is not None else torch.float32
    probe = torch.full((2, 3, input_size, input_size), 0.5, device=device, dtype=dtype)
    probe[1] = torch.linspace(0.0, 1.0, input_size, device=device, dtype=dtype)  # two different images
    mean_t = torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1)
    calls, output = _probe_calls(module, (probe - mean_t) / std_t, name)
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"wrap_model: {name} must return logits of shape (N, classes) for N images; for 2 images it returned "
            f"{shape}. Wrap it so that forward returns only the class scores (e.g. output.logits, or flatten a "
            "(N, classes, 1, 1) output)."
        )
    classes = output.shape[1]
    if categories is None:
        categories = [f"class {i}" for i in range(classes)]
    elif isinstance(categories, str) or len(list(categories)) != classes:
        count = "a string" if isinstance(categories, str) else f"{len(list(categories))} names"
        raise ValueError(f"categories must name the {classes} classes of {name}'s logits, in order; got {count}.")
    categories = [str(c) for c in categories]
    shared: list[str] = []
    if layers is None:
        layers, shared = _auto_layers(module, calls)
        innermost = next((p for p, call in calls.items() if call.output is output), None)
        if layers and innermost is not None and "logits" not in layers:
            layers["logits"] = innermost  # without spatial layers none: the error then explains what is missing
    elif isinstance(layers, (list, tuple)):
        layers = {str(path): str(path) for path in layers}
    elif not isinstance(layers, dict):
        raise TypeError(f"layers must be a dict (friendly name -> dotted module path), a list of dotted paths, or "
                        f"None to find them; got {type(layers).__name__}.")
    overwritten = [friendly for friendly, path in layers.items() if path in calls
                   and isinstance(calls[path].output, torch.Tensor)
                   and calls[path].output._version != calls[path].version]
    if overwritten:
        warnings.warn(
            f"wrap_model: the outputs of {', '.join(overwritten)} are changed in place after the module runs (e.g. "
            "F.relu(x, inplace=True) or x += y in forward), so what a hook records there is the changed tensor. Use "
            "an nn.ReLU module (or an out-of-place op) in forward, or pick another layer.",
            stacklevel=2,
        )
    model = VizModel(name=name, network=module, categories=categories, input_size=input_size, mean=mean, std=std,
                     layers=dict(layers), weights_source="wrapped")
    spatial = [f for f, p in layers.items() if p in calls and isinstance(calls[p].output, torch.Tensor)
               and calls[p].output.dim() == 4]
    notes = []
    if not spatial:
        notes.append(f"wrap_model found no module of {name} with spatial (N, C, H, W) outputs: " + _NO_LAYER_HINT)
    if shared:
        notes.append(f"Modules called more than once per forward pass are not listed (their output is ambiguous): "
                     f"{', '.join(shared[:6])}{', ...' if len(shared) > 6 else ''}.")
    model.note = " ".join(notes) or None
    return model


_NO_LAYER_HINT = (
    "techniques that look inside the network (top patches, filters, t-SNE of a layer, neuron gradients, feature "
    "inversion, DeepDream, style transfer) need a named convolutional layer; pass layers={'name': 'dotted.path'} to "
    "wrap_model (paths from network.named_modules()). Saliency, guided backprop, occlusion, class visualization, "
    "fooling images and FGSM work on the class score alone."
)
