"""Activation recording, hook removal and receptive fields (checked by hand and by perturbation)."""

from __future__ import annotations

import pytest
import torch

import viztools
from viztools.hooks import (
    attach,
    capture_activations,
    get_activations,
    has_hooks,
    layer_output_shape,
    receptive_field,
    receptive_field_geometry,
)


def test_get_activations_match_a_manual_forward(glyphnet):
    pixels = torch.rand(4, 3, 64, 64)
    acts = get_activations(glyphnet, pixels, ["conv1", "pool2", "fc1"])
    features = glyphnet.network.features
    manual = features.relu1(features.conv1(glyphnet.normalize(pixels)))
    torch.testing.assert_close(acts["conv1"], manual)
    assert acts["pool2"].shape == (4, 48, 16, 16)
    assert acts["fc1"].shape == (4, 128)
    assert not has_hooks(glyphnet.network)


def test_capture_keeps_graph_when_asked(glyphnet):
    pixels = torch.rand(1, 3, 64, 64, requires_grad=True)
    with capture_activations(glyphnet, ["conv2"], detach=False) as recorded:
        glyphnet(pixels)
    recorded["conv2"].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_hooks_are_removed_after_an_error(glyphnet):
    with pytest.raises(RuntimeError, match="boom"), capture_activations(glyphnet, ["conv1", "conv3"]):
        assert has_hooks(glyphnet.network)
        raise RuntimeError("boom")
    assert not has_hooks(glyphnet.network)
    module = glyphnet.layer("conv4")
    with pytest.raises(ValueError), attach(module, forward=lambda *a: None, backward=lambda *a: None):
        raise ValueError
    assert not has_hooks(glyphnet.network)


def test_unknown_layer_is_rejected_before_any_hook(glyphnet):
    with pytest.raises(ValueError, match="Unknown layer 'conv9'"), capture_activations(glyphnet, ["conv1", "conv9"]):
        pass
    assert not has_hooks(glyphnet.network)


def test_layer_output_shape(glyphnet):
    assert layer_output_shape(glyphnet, "conv1") == (24, 64, 64)
    assert layer_output_shape(glyphnet, "pool4") == (128, 4, 4)


def test_glyphnet_receptive_fields_by_hand(random_glyphnet):
    # conv1: 7x7, padding 3 -> unit (10, 10) sees rows/cols 7..13.
    assert receptive_field(random_glyphnet, "features.conv1", (10, 10)) == (slice(7, 14), slice(7, 14))
    # pool1 (2x2, stride 2) over conv1 units 10..11 -> rows 7..14.
    assert receptive_field(random_glyphnet, "pool1", (5, 5)) == (slice(7, 15), slice(7, 15))
    # conv2 (3x3) over pool1 units 4..6 -> conv1 units 8..13 -> rows 5..16.
    assert receptive_field(random_glyphnet, "conv2", (5, 6)) == (slice(5, 17), slice(7, 19))
    # clipped at the image corner
    assert receptive_field(random_glyphnet, "conv2", (0, 0)) == (slice(0, 7), slice(0, 7))
    geometry = receptive_field_geometry(random_glyphnet, "conv2")
    assert (geometry.size, geometry.stride, geometry.offset) == (12, 2, -5)
    assert geometry.box(5, 6, 64) == receptive_field(random_glyphnet, "conv2", (5, 6))
    assert not has_hooks(random_glyphnet.network)


def test_squeezenet_receptive_fields_by_hand():
    model = viztools.load_model("squeezenet1_0", weights="random")
    # conv1 7x7 stride 2, no padding; max pool 3/2; fire2's 3x3 expand branch adds 2 units of stride 4.
    assert receptive_field_geometry(model, "conv1") == viztools.hooks.ReceptiveFieldGeometry(7, 2, 0)
    assert receptive_field_geometry(model, "fire2") == viztools.hooks.ReceptiveFieldGeometry(19, 4, -4)


def test_receptive_field_contains_exactly_what_influences_a_unit(glyphnet):
    """Perturbing a pixel outside the field never changes the unit; the field is not larger than needed."""
    torch.manual_seed(1)
    pixels = torch.rand(1, 3, 64, 64)
    layer, (row, col) = "conv3", (8, 5)
    rows, cols = receptive_field(glyphnet, layer, (row, col))
    base = get_activations(glyphnet, pixels, [layer])[layer][0, :, row, col]
    outside = pixels.clone()
    outside[..., : rows.start, :] = torch.rand_like(outside[..., : rows.start, :])
    outside[..., rows.stop :, :] = torch.rand_like(outside[..., rows.stop :, :])
    outside[..., :, cols.stop :] = torch.rand_like(outside[..., :, cols.stop :])
    torch.testing.assert_close(get_activations(glyphnet, outside, [layer])[layer][0, :, row, col], base)
    inside = pixels.clone()
    inside[..., rows, cols] = torch.rand_like(inside[..., rows, cols])
    assert not torch.allclose(get_activations(glyphnet, inside, [layer])[layer][0, :, row, col], base)


def test_receptive_field_errors(glyphnet):
    with pytest.raises(ValueError, match="no spatial positions"):
        receptive_field(glyphnet, "fc1", (0, 0))
    with pytest.raises(ValueError, match="no spatial positions"):
        receptive_field_geometry(glyphnet, "fc1")
    with pytest.raises(ValueError, match="row must be an integer in \\[0, 15\\]"):
        receptive_field(glyphnet, "conv3", (16, 0))


@pytest.mark.slow
@pytest.mark.parametrize("name, layer, expected", [
    ("alexnet", "conv1", (11, 4, -2)),  # 11x11, stride 4, padding 2
    ("alexnet", "pool1", (19, 8, -2)),  # + 3x3 max pool, stride 2
    ("googlenet", "conv1", (7, 2, -3)),  # 7x7, stride 2, padding 3 (a Sequential after the ReLU rewrite)
])
def test_receptive_fields_of_other_architectures(name, layer, expected):
    model = viztools.load_model(name, weights="random")
    geometry = receptive_field_geometry(model, layer)
    assert (geometry.size, geometry.stride, geometry.offset) == expected


def test_a_background_forward_pass_does_not_disturb_another_threads_forward_passes():
    import threading

    from viztools.hooks import forward_activations

    model = viztools.load_model("glyphnet", weights="random")
    image = torch.rand(1, 3, 64, 64)
    expected = model(image)
    done, failures = threading.Event(), []

    def background() -> None:
        while not done.is_set():
            forward_activations(model, torch.rand(1, 3, 64, 64), ["conv2"])  # hooks that stop at conv2

    worker = threading.Thread(target=background)
    worker.start()
    try:
        for _ in range(200):
            try:
                torch.testing.assert_close(model(image), expected)
            except Exception as error:  # the hooks of the other thread must neither stop nor alter this pass
                failures.append(error)
    finally:
        done.set()
        worker.join()
    assert failures == []
    assert not has_hooks(model.network)
