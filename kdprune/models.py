"""Small CPU-friendly models, a registry by name, and checkpoints that load without running code.

A checkpoint is a directory-free single file pair: ``<path>`` holds the state dict (loaded with
``torch.load(weights_only=True)``) and ``<path>.json`` the spec (model name and keyword arguments),
so loading never unpickles arbitrary objects. ``torchvision:NAME`` / ``timm:NAME`` build models from
those libraries (randomly initialised: nothing is downloaded), behind a layer that converts kdprune's
[-1, 1] inputs to the ImageNet normalisation their pretrained weights expect.

>>> from kdprune.models import build_model
>>> build_model("torchvision:resnet18", num_classes=10, in_channels=3)(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from kdprune.atomic import atomic_open
from kdprune.errors import ConfigError


NORMS = ("batch", "group", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch`` (BatchNorm2d), ``group`` (GroupNorm, per sample: exact under DDP without SyncBN) or
    ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if channels % g == 0), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def conv(cin: int, cout: int, k: int, stride: int, norm: str) -> nn.Conv2d:
    # a bias is redundant before a normalisation layer, needed without one
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=norm == "none")


class SmallCNN(nn.Module):
    """A compact CNN: two conv blocks of ``width`` and ``2*width`` channels, then a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, norm: str = "batch"):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv(in_channels, w, 3, 1, norm), norm_layer(norm, w), nn.ReLU(inplace=True),
            conv(w, w, 3, 1, norm), norm_layer(norm, w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            conv(w, 2 * w, 3, 1, norm), norm_layer(norm, 2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (used by prototype scores)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "batch"):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, norm)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = conv(cout, cout, 3, 1, norm)
        self.bn2 = norm_layer(norm, cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(conv(cin, cout, 1, stride, norm), norm_layer(norm, cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): depth = 6n + 2, three stages of ``width * (1, 2, 4)``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 20, width: int = 16,
                 norm: str = "batch"):
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(conv(in_channels, width, 3, 1, norm), norm_layer(norm, width),
                                  nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)

    def embed(self, x):
        return self.pool(self.layers(self.stem(x)))

    def forward(self, x):
        return self.head(self.embed(x))


class ImageNetInput(nn.Module):
    """kdprune's inputs lie in [-1, 1]; torchvision and timm weights expect ``(x - mean) / std`` of
    [0, 1] pixels with ImageNet statistics. This layer converts, so pretrained weights see what they
    were trained on; a grey image (one channel) comes out as the RGB image of the same grey."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", 0.5 / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (0.5 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                             / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return x * self.scale + self.shift


def _imagenet_input(model: nn.Module) -> nn.Module:
    """``model`` behind :class:`ImageNetInput`; its own weights are under ``.net`` (load pretrained
    weights with ``wrapped.net.load_state_dict(...)``)."""
    from collections import OrderedDict
    return nn.Sequential(OrderedDict(input=ImageNetInput(), net=model))


MODELS = {
    "cnn": SmallCNN,
    "resnet20": lambda **kw: ResNetCifar(depth=20, **kw),
    "resnet32": lambda **kw: ResNetCifar(depth=32, **kw),
    "resnet56": lambda **kw: ResNetCifar(depth=56, **kw),
}


def model_kwargs(name: str, width: int, norm: str = "batch") -> dict:
    """The keyword arguments a TrainConfig's ``width``/``norm`` give model ``name`` (kdprune's own models
    take both; torchvision/timm models take their library's defaults)."""
    return {"width": width, "norm": norm} if name in MODELS else {}


def _check_rgb(name: str, in_channels: int) -> None:
    """Library models take RGB; grey images (one channel) become RGB in :class:`ImageNetInput`."""
    if in_channels not in (1, 3):
        raise ConfigError(f"model {name} takes RGB (or grey) input, but the dataset has {in_channels} channels")


def build_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """Build a model by name: one of :data:`MODELS`, or ``torchvision:NAME`` / ``timm:NAME`` (behind an
    :class:`ImageNetInput` layer, so pretrained weights get the input normalisation they expect).

    >>> import torch, kdprune
    >>> kdprune.build_model("cnn", num_classes=10, in_channels=1, width=8)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    if name.startswith("torchvision:"):
        try:
            import torchvision
        except Exception as err:  # a CUDA torchvision wheel fails to load against a CPU torch
            raise ConfigError(f"--model {name} needs a torchvision that loads with this torch ({err})") from err
        _check_rgb(name, in_channels)
        arch = name.split(":", 1)[1]
        if arch not in torchvision.models.list_models():
            raise ConfigError(f"torchvision has no model {arch!r}; e.g. torchvision:resnet50, torchvision:resnet18")
        return _imagenet_input(torchvision.models.get_model(arch, num_classes=num_classes, **kwargs))
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise ConfigError(f"--model {name} needs timm: pip install timm") from err
        arch = name.split(":", 1)[1]
        if not timm.list_models(arch):
            raise ConfigError(f"timm has no model {arch!r}; e.g. timm:resnet18, timm:vit_tiny_patch16_224 "
                              "(timm.list_models() lists them)")
        _check_rgb(name, in_channels)
        return _imagenet_input(timm.create_model(arch, num_classes=num_classes, in_chans=3, **kwargs))
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, "
                          "torchvision:NAME or timm:NAME")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


def save_model(path: str, model: nn.Module, spec: dict) -> None:
    """Save ``model``'s weights to ``path`` and ``spec`` (``name``, ``num_classes``, ``in_channels``,
    ``kwargs``, anything else descriptive) to ``path + '.json'``, each atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    with atomic_open(path + ".json") as f:
        json.dump(spec, f, indent=2)


def load_model(path: str, map_location="cpu") -> nn.Module:
    """Rebuild the model described by ``path + '.json'`` and load its weights; returned in eval mode."""
    if not os.path.exists(path) or not os.path.exists(path + ".json"):
        raise ConfigError(f"model checkpoint {path} (with {path}.json) not found; train one with "
                          "`kdprune teacher` or pass the right path")
    with open(path + ".json") as f:
        spec = json.load(f)
    model = build_model(spec["name"], spec["num_classes"], spec["in_channels"], **spec.get("kwargs", {}))
    model.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
    return model.eval()
