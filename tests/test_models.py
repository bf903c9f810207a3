"""Models: the registry, the normalisation options, checkpoints, and the torchvision/timm bridge."""
import pytest
import torch
from torch import nn

from kdprune.errors import ConfigError
from kdprune.models import ImageNetInput, ResNetCifar, build_model, load_model, model_kwargs, save_model


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
@pytest.mark.parametrize("norm, layer", [("batch", nn.BatchNorm2d), ("group", nn.GroupNorm), ("none", None)])
def test_models_and_norms(name, norm, layer):
    model = build_model(name, 7, 3, width=8, norm=norm)
    kinds = {type(m) for m in model.modules()}
    assert (layer in kinds) if layer else not ({nn.BatchNorm2d, nn.GroupNorm} & kinds)
    x = torch.randn(4, 3, 16, 16)
    assert model(x).shape == (4, 7)
    if norm != "batch":
        # per-sample normalisation: a sample's output does not depend on its batch (the DDP test relies on it)
        torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-5, atol=1e-6)


def test_unknown_model_norm_and_bad_depth():
    with pytest.raises(ConfigError, match="unknown model 'vgg99'"):
        build_model("vgg99", 10, 3)
    with pytest.raises(ConfigError, match="unknown norm"):
        build_model("cnn", 10, 3, norm="layer")
    with pytest.raises(ConfigError, match=r"6n\+2"):
        ResNetCifar(depth=21)


def test_save_and_load_roundtrip(tmp_path):
    kwargs = model_kwargs("resnet20", 8, "group")
    model = build_model("resnet20", 5, 1, **kwargs)
    path = str(tmp_path / "m.pt")
    save_model(path, model, {"name": "resnet20", "num_classes": 5, "in_channels": 1, "kwargs": kwargs})
    back = load_model(path)
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(back(x), model.eval()(x))
    assert model_kwargs("torchvision:resnet50", 8, "batch") == {}  # library models take their own defaults


def test_imagenet_input_matches_torchvision_normalisation():
    pixels = torch.rand(2, 3, 5, 5)  # [0, 1]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(ImageNetInput()(pixels * 2 - 1), (pixels - mean) / std)


def test_torchvision_bridge():
    model = build_model("torchvision:resnet18", 10, 3)
    assert isinstance(model.input, ImageNetInput) and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="no model"):
        build_model("torchvision:resnet_nope", 10, 3)
    assert build_model("torchvision:resnet18", 10, 1)(torch.randn(2, 1, 32, 32)).shape == (2, 10)  # grey -> RGB
    with pytest.raises(ConfigError, match="RGB"):
        build_model("torchvision:resnet18", 10, 2)


def test_timm_bridge_and_checkpoint(tmp_path):
    model = build_model("timm:test_resnet", 5, 3)
    assert isinstance(model.input, ImageNetInput) and model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert build_model("timm:test_resnet", 5, 1)(torch.randn(2, 1, 32, 32)).shape == (2, 5)  # grey -> RGB
    with pytest.raises(ConfigError, match="timm has no model"):
        build_model("timm:resnet_nope", 10, 3)
    path = str(tmp_path / "t.pt")
    save_model(path, model, {"name": "timm:test_resnet", "num_classes": 5, "in_channels": 3, "kwargs": {}})
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_model(path)(x), model.eval()(x))
