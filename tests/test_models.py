"""load_model and VizModel: registry, weights resolution, frozen eval-mode networks, ImageNet predictions."""

from __future__ import annotations

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
