"""load_model and VizModel: registry, weights resolution, frozen eval-mode networks, ImageNet predictions."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import warnings

import pytest
import torch
import torchvision
from torch import nn

import viztools
from viztools import models
from viztools.hooks import attach


def test_glyphnet_is_ready_for_visualization(glyphnet):
    assert glyphnet.name == "glyphnet" and glyphnet.input_size == 64
    assert glyphnet.categories == list(viztools.GLYPHWORLD_CLASSES) and len(glyphnet.categories) == 10
    assert not glyphnet.network.training
    assert all(not p.requires_grad for p in glyphnet.network.parameters())
    assert not any(getattr(m, "inplace", False) for m in glyphnet.network.modules())
    for name in glyphnet.layers:
        assert isinstance(glyphnet.layer(name), nn.Module)
    assert glyphnet.weights_source == "built-in"


def test_glyphnet_metadata_travels_with_its_weights(glyphnet, tmp_path):
    metadata = json.loads(models.GLYPHNET_WEIGHTS.with_suffix(".json").read_text())
    assert glyphnet.categories == metadata["categories"] and glyphnet.input_size == metadata["input_size"]
    assert list(glyphnet.mean) == metadata["mean"] and list(glyphnet.std) == metadata["std"]
    assert viztools.load_model("glyphnet", weights="random").categories == metadata["categories"]
    # Weights elsewhere bring their own json; it, not a constant in the code, names the classes.
    shutil.copy(models.GLYPHNET_WEIGHTS, tmp_path / "renamed.pt")
    renamed = {**metadata, "categories": [name.upper() for name in metadata["categories"]], "mean": [0.4] * 3}
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    model = viztools.load_model("glyphnet", weights=tmp_path / "renamed.pt")
    assert model.categories[0] == "SUN" and model.mean == (0.4, 0.4, 0.4)
    shutil.copy(models.GLYPHNET_WEIGHTS, tmp_path / "bare.pt")  # no json beside it: the shipped metadata
    assert viztools.load_model("glyphnet", weights=tmp_path / "bare.pt").categories == metadata["categories"]
    (tmp_path / "renamed.json").write_text(json.dumps({"categories": ["a"]}))
    with pytest.raises(ValueError, match=r"lacks input_size, mean, std.*viztools train-glyphnet"):
        viztools.load_model("glyphnet", weights=tmp_path / "renamed.pt")


def test_call_normalizes_inside_and_checks_shape(glyphnet):
    pixels = torch.rand(2, 3, 64, 64)
    expected = glyphnet.network((pixels - 0.5) / 0.25)
    torch.testing.assert_close(glyphnet(pixels), expected)
    torch.testing.assert_close(glyphnet.denormalize(glyphnet.normalize(pixels)), pixels)
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        glyphnet(torch.rand(2, 64, 64, 3))
    with pytest.raises(TypeError, match="load_image"):
        glyphnet([[0.0]])


def test_predictions_and_top_k(glyphnet):
    images, _ = viztools.make_glyphworld(10, seed=3)
    probs = glyphnet.predict(images)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(10))
    top = glyphnet.top_k(images[:1], k=3)
    assert [t[2] for t in top] == sorted((t[2] for t in top), reverse=True)
    assert top[0][1] == glyphnet.categories[top[0][0]]
    with pytest.raises(ValueError, match="single image"):
        glyphnet.top_k(images, k=3)


def test_class_index_by_name_and_errors(glyphnet):
    assert glyphnet.class_index("Anchor") == glyphnet.categories.index("anchor")
    assert glyphnet.class_index(3) == 3
    with pytest.raises(ValueError, match="Did you mean 'anchor'"):
        glyphnet.class_index("anchr")
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        glyphnet.class_index(10)
    pixels = torch.rand(1, 3, 64, 64)
    assert glyphnet.resolve_target(None, pixels) == int(glyphnet(pixels).argmax())


def test_unknown_layer_lists_choices(glyphnet):
    assert glyphnet.layer("features.conv1") is glyphnet.network.features.conv1
    assert glyphnet.layer("conv1") is glyphnet.network.features.relu1
    with pytest.raises(ValueError, match=r"Did you mean 'conv2'.*Choose one of: conv1, pool1"):
        glyphnet.layer("cnv2")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="Did you mean 'squeezenet1_1'"):
        viztools.load_model("squeezenet1.1")


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_random_imagenet_models_have_their_layers(name):
    model = viztools.load_model(name, weights="random")
    assert model.input_size == 224 and len(model.categories) == 1000
    assert model.categories[285] == "Egyptian cat"
    assert not any(getattr(m, "inplace", False) for m in model.network.modules())
    assert set(model.layers) >= {"conv1", "fire2", "fire9", "logits"}
    assert model(torch.rand(1, 3, 96, 96)).shape == (1, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name, layers", [
    ("alexnet", {"conv1", "conv5", "fc7"}),
    ("vgg16", {"conv1_1", "conv5_3", "fc7"}),
    ("googlenet", {"conv1", "inception4c", "inception5b"}),
])
def test_other_architectures_load_with_random_weights(name, layers):
    model = viztools.load_model(name, weights="random")
    assert set(model.layers) >= layers
    assert not any(getattr(m, "inplace", False) for m in model.network.modules())
    out = model(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000)


def test_googlenet_relus_are_modules():
    """torchvision's GoogLeNet applies F.relu inside BasicConv2d; ours has ReLU modules that hooks can see."""
    from torchvision.models.googlenet import BasicConv2d

    model = viztools.load_model("googlenet", weights="random")
    assert not any(isinstance(m, BasicConv2d) for m in model.network.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.network.modules()) >= 57


def _backward_through_hooked_conv1(network: nn.Module) -> torch.Tensor:
    conv1 = network.features[0]  # followed by a ReLU, in place in torchvision's model
    pixels = torch.rand(1, 3, 64, 64, requires_grad=True)
    with attach(conv1, backward=lambda module, grad_in, grad_out: None):
        network(pixels).sum().backward()
    return pixels.grad


def test_inplace_relus_are_replaced_so_full_backward_hooks_work():
    plain = torchvision.models.squeezenet1_1().eval()
    with pytest.raises(RuntimeError, match=r"inplace|view"):
        _backward_through_hooked_conv1(plain)  # the reason for the replacement
    model = viztools.load_model("squeezenet1_1", weights="random")
    assert _backward_through_hooked_conv1(model.network).abs().sum() > 0


def _isolate_weights(monkeypatch, tmp_path, weights_dir=""):
    monkeypatch.setenv(models.WEIGHTS_DIR_ENV, str(weights_dir))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_missing_weights_fail_fast_with_instructions(monkeypatch, tmp_path):
    _isolate_weights(monkeypatch, tmp_path)
    calls = []

    def unreachable(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.delenv(models.OFFLINE_ENV, raising=False)
    with pytest.raises(RuntimeError) as error:
        viztools.load_model("squeezenet1_1")
    message = str(error.value)
    assert "weights='/path/to/squeezenet1_1-" in message and models.WEIGHTS_DIR_ENV in message
    assert "viztools download squeezenet1_1" in message and "glyphnet" in message
    assert calls and calls[0][1] <= 5, "the reachability check must have a short timeout"


def test_offline_switch_skips_network(monkeypatch, tmp_path):
    _isolate_weights(monkeypatch, tmp_path)
    monkeypatch.setenv(models.OFFLINE_ENV, "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("must not touch the network"))
    with pytest.raises(RuntimeError, match="available offline"):
        viztools.load_model("alexnet")


def test_bad_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viztools.load_model("squeezenet1_1", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read weights"):
        viztools.load_model("squeezenet1_1", weights=junk)
    with pytest.raises(ValueError, match="do not fit the 'squeezenet1_1' architecture"):
        viztools.load_model("squeezenet1_1", weights=models.GLYPHNET_WEIGHTS)


def test_auto_falls_back_to_glyphnet_with_a_note(monkeypatch, tmp_path):
    _isolate_weights(monkeypatch, tmp_path)
    with pytest.warns(UserWarning, match="uses GlyphNet"):
        model = viztools.load_model("auto")
    assert model.name == "glyphnet" and "VIZTOOLS_WEIGHTS_DIR" in model.note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = viztools.load_model("auto", quiet=True)
    assert quiet.name == "glyphnet" and quiet.note == model.note


@pytest.mark.imagenet
def test_weights_dir_and_auto_find_imagenet_squeezenet(monkeypatch, tmp_path, imagenet_squeezenet):
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(imagenet_squeezenet.weights_source, folder / "squeezenet1_0_imagenet_fp16.pth")
    _isolate_weights(monkeypatch, tmp_path, folder)
    assert models.find_local_weights("squeezenet1_0") == folder / "squeezenet1_0_imagenet_fp16.pth"
    assert models.find_local_weights("squeezenet1_1") is None
    model = viztools.load_model("auto")
    assert model.name == "squeezenet1_0" and model.note is None
    assert all(p.dtype == torch.float32 for p in model.network.parameters())


@pytest.mark.imagenet
def test_imagenet_squeezenet_recognizes_cat_and_coffee(imagenet_squeezenet):
    cat = imagenet_squeezenet.top_k(imagenet_squeezenet.preprocess("cat"), k=1)[0]
    assert 281 <= cat[0] <= 285, cat
    coffee = imagenet_squeezenet.top_k(imagenet_squeezenet.preprocess("coffee"), k=1)[0]
    assert coffee[1] in {"espresso", "cup"}, coffee


# --------------------------------------------------------------------------------------------------------------
# ResNet and MobileNet in the registry
# --------------------------------------------------------------------------------------------------------------


RESNET_LAYERS = ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "logits"]


@pytest.mark.parametrize("name, layers", [
    ("resnet18", RESNET_LAYERS),
    pytest.param("resnet50", RESNET_LAYERS, marks=pytest.mark.slow),
    ("mobilenet_v3_small", [*(f"features.{i}" for i in range(13)), "avgpool", "logits"]),
    ("mobilenet_v3_large", [*(f"features.{i}" for i in range(17)), "avgpool", "logits"]),
])
def test_resnet_and_mobilenet_load_with_their_layers(name, layers):
    model = viztools.load_model(name, weights="random", device="cpu")
    assert list(model.layers) == layers
    assert model.layers["conv1"] == "relu" if name.startswith("resnet") else model.layers["logits"] == "classifier.3"
    assert model.categories[285] == "Egyptian cat" and model.device == torch.device("cpu")
    assert not any(getattr(m, "inplace", False) for m in model.network.modules())
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1000)
    shapes = {k: v.shape for k, v in viztools.get_activations(model, torch.rand(1, 3, 64, 64), list(layers)).items()}
    assert all(len(shapes[layer]) == 4 for layer in layers[:-1]) and shapes["logits"] == (1, 1000)


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow), "mobilenet_v3_small",
                                  "mobilenet_v3_large"])
def test_out_of_place_residual_blocks_compute_what_torchvision_computes(name):
    """The registry swaps torchvision's in-place residual add (``out += identity``) for an out-of-place one."""
    torch.manual_seed(0)
    original = getattr(torchvision.models, name)().eval()
    for module in original.modules():  # non-trivial batch-norm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    model = viztools.load_model(name, weights="random", device="cpu")
    model.network.load_state_dict(original.state_dict())
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), original(model.normalize(pixels)), rtol=0, atol=1e-5)


def test_resnet_block_hooks_see_the_block_output_and_the_batch_norm_before_the_add():
    model = viztools.load_model("resnet18", weights="random", device="cpu")
    block = model.network.layer1[0]
    pixels = torch.rand(1, 3, 64, 64)
    with viztools.capture_activations(model, ["layer1.0", "layer1.0.bn2", "maxpool"]) as seen, torch.no_grad():
        model(pixels)
    # the block's input is the max pool's output (no downsampling): output = relu(bn2 + input)
    torch.testing.assert_close(seen["layer1.0"], torch.relu(seen["layer1.0.bn2"] + seen["maxpool"]))
    with torch.no_grad():  # bn2's record is bn2's own output, not overwritten by the residual add
        expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(seen["maxpool"])))))
    torch.testing.assert_close(seen["layer1.0.bn2"], expected)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs):
        ctx.save_for_backward(inputs)
        return inputs.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (inputs,) = ctx.saved_tensors
        return grad.clamp(min=0) * (inputs > 0)


class _GuidedReLUModule(nn.Module):
    def forward(self, inputs):
        return _GuidedReLU.apply(inputs)


def test_guided_backprop_acts_on_every_application_of_resnets_shared_relu():
    """BasicBlock calls one ``self.relu`` twice; the reference replaces every ReLU module by a guided one."""
    model = viztools.load_model("resnet18", weights="random", device="cpu")
    pixels = torch.rand(1, 3, 64, 64)
    guided = viztools.guided_backprop(model, pixels, 3)
    reference = copy.deepcopy(model.network)
    for parent in list(reference.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _GuidedReLUModule())
    leaf = pixels.clone().requires_grad_(True)
    reference(model.normalize(leaf))[0, 3].backward()
    torch.testing.assert_close(guided, leaf.grad[0], rtol=1e-4, atol=1e-7)
    assert not torch.equal(guided, viztools.saliency.input_gradient(model, pixels, 3))


def test_guided_backprop_on_mobilenet_changes_relus_only():
    """MobileNetV3 mixes ReLU and Hardswish blocks (and Hardsigmoid gates): only ReLU calls get the guided rule."""
    from viztools.saliency import _RuleReLU

    model = viztools.load_model("mobilenet_v3_small", weights="random", device="cpu")
    relus = sum(isinstance(m, nn.ReLU) for m in model.network.modules())
    calls = []
    original = _RuleReLU.forward

    def counting(ctx, inputs, use_forward_mask):
        calls.append(inputs.shape)
        return original(ctx, inputs, use_forward_mask)

    _RuleReLU.forward = staticmethod(counting)
    try:
        viztools.guided_backprop(model, torch.rand(1, 3, 64, 64), 0)
    finally:
        _RuleReLU.forward = staticmethod(original)
    # blocks 1-3 use ReLU (5 convs), blocks 1 and 4-11 gate with a squeeze-excitation ReLU (9); 19 Hardswish and 9
    # Hardsigmoid keep their true gradient
    assert len(calls) == relus == 14


# --------------------------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------------------------


def test_device_defaults_to_a_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.resolve_device(None) == torch.device("cuda")
    moved = []
    monkeypatch.setattr(models.VizModel, "to", lambda self, device: moved.append(torch.device(device)) or self)
    viztools.load_model("glyphnet")
    viztools.load_model("squeezenet1_1", weights="random")
    assert moved == [torch.device("cuda")] * 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert models.resolve_device(None) == torch.device("cpu")


def test_device_names_are_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("cpu") == models.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"no CUDA GPU.*device='cpu'"):
        viztools.load_model("glyphnet", device="cuda")
    with pytest.raises(ValueError, match=r"Unknown device 'gpu0'"):
        viztools.load_model("glyphnet", device="gpu0")


def test_model_records_its_device_and_moves_inputs_there(glyphnet):
    model = viztools.load_model("glyphnet", device="cpu")
    assert model.device == torch.device("cpu") and model.to("cpu") is model
    assert model.preprocess("cat").device == model.device
    moved = []
    real_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:  # model(pixels) and techniques' image checks move to model.device
        patch.setattr(torch.Tensor, "to", recording_to)
        model(torch.rand(1, 3, 64, 64))
        viztools._validation.check_image(torch.rand(1, 3, 64, 64), model=model)
    assert moved.count(model.device) >= 2


# --------------------------------------------------------------------------------------------------------------
# wrap_model: your own classifier
# --------------------------------------------------------------------------------------------------------------


class _TinyNet(nn.Module):
    """conv-bn-relu, a residual conv with a shared ReLU module, functional ReLU at the end."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.shared = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.shared(self.shared(self.conv2(x)) + x)
        return self.head(torch.nn.functional.relu(x).mean(dim=(2, 3)))


def test_wrap_model_lists_the_layers_a_user_would_pick():
    model = viztools.wrap_model(_TinyNet(), ["a", "b", "c"], input_size=16, mean=(0.5,) * 3, std=(0.2,) * 3)
    # `shared` runs twice (ambiguous: left out), so conv2's pre-activation output is listed
    assert model.layers == {"relu1": "relu1", "pool": "pool", "conv2": "conv2", "logits": "head"}
    assert "shared" in model.note
    assert not model.network.training and not any(p.requires_grad for p in model.network.parameters())
    assert not model.network.relu1.inplace and model.device == torch.device("cpu")
    assert model.categories == ["a", "b", "c"] and model.mean == (0.5, 0.5, 0.5)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    assert not viztools.hooks.has_hooks(model.network)
    assert viztools.load_model is not None and viztools.wrap_model is models.wrap_model


def test_wrap_model_on_torchvision_networks_names_blocks():
    resnet = viztools.wrap_model(torchvision.models.resnet18(), input_size=64)
    assert list(resnet.layers) == ["relu", "maxpool", *(f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)),
                                   "avgpool", "logits"]
    assert resnet.categories[:2] == ["class 0", "class 1"] and len(resnet.categories) == 1000
    mobilenet = viztools.wrap_model(torchvision.models.mobilenet_v3_small(), input_size=64)
    assert list(mobilenet.layers)[:3] == ["features.0", "features.1", "features.2"]
    assert mobilenet.layers["logits"] == "classifier.3"
    layers = viztools.wrap_model(torchvision.models.alexnet(), input_size=64, layers=["features.1"]).layers
    assert layers == {"features.1": "features.1"}


def test_wrap_model_warns_when_a_listed_output_is_changed_in_place():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pool(torch.nn.functional.relu(self.conv(x), inplace=True)).flatten(1))

    with pytest.warns(UserWarning, match=r"outputs of conv are changed in place.*nn\.ReLU module"):
        viztools.wrap_model(InPlace(), input_size=8)


def test_wrap_model_errors_say_what_to_do():
    with pytest.raises(TypeError, match=r"torch.nn.Module"):
        viztools.wrap_model("resnet18")
    with pytest.raises(ValueError, match=r"must name the 3 classes"):
        viztools.wrap_model(_TinyNet(), ["a", "b"], input_size=16)
    with pytest.raises(ValueError, match=r"mean must be three numbers"):
        viztools.wrap_model(_TinyNet(), mean=(0.5, 0.5), input_size=16)
    with pytest.raises(ValueError, match=r"looks like 0-255 values.*divide by 255"):
        viztools.wrap_model(_TinyNet(), std=(58.4, 57.1, 57.4), input_size=16)
    with pytest.raises(ValueError, match=r"must return logits of shape \(N, classes\).*\(2, 4, 14, 14\)"):
        viztools.wrap_model(nn.Conv2d(3, 4, 3), input_size=16)
    with pytest.raises(ValueError, match=r"failed on a batch of two.*Check input_size="):
        viztools.wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), input_size=16)
    with pytest.raises(TypeError, match=r"not a plain torch.nn.Module.*viztools.wrap_model"):
        viztools.saliency.saliency(_TinyNet(), torch.rand(1, 3, 16, 16))


def test_a_model_without_spatial_layers_says_which_techniques_need_one():
    model = viztools.wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), input_size=8)
    assert model.layers == {} and "no module" in model.note
    image = torch.rand(1, 3, 8, 8)
    assert viztools.saliency.saliency(model, image).shape == (8, 8)  # class-score techniques work
    with pytest.raises(ValueError, match=r"has no named layers.*DeepDream.*need a named convolutional layer"):
        viztools.deepdream.deepdream(model, image, layer="conv1", steps=1)
    with pytest.raises(ValueError, match=r"has no named layers.*top patches"):
        viztools.top_activating_patches(model, image, layer="features", channel=0)
