"""frostline: freeze neural-network parameters in PyTorch precisely, fast and visibly.

>>> import torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
>>> frostline.freeze(model, "0") is model
True
>>> frostline.summary(model).trainable
18
"""

from .errors import FreezeError, FrostlineError, FrozenParameterChanged, SelectionError
from .freeze import freeze, frozen_names, is_frozen, unfreeze
from .groups import freeze_to, layer_groups
from .select import select
from .summary import Summary, summary

__version__ = "0.1.0"

__all__ = [
    "FreezeError",
    "FrostlineError",
    "FrozenParameterChanged",
    "SelectionError",
    "Summary",
    "freeze",
    "freeze_to",
    "frozen_names",
    "is_frozen",
    "layer_groups",
    "select",
    "summary",
    "unfreeze",
]
