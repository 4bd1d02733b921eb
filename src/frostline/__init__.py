"""frostline: freeze neural-network parameters in PyTorch precisely, fast and visibly.

>>> import torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
>>> frostline.freeze(model, "0") is model
True
>>> frostline.summary(model).trainable
18
"""

from . import distributed as distributed  # frostline.distributed.ddp / audit_ranks / trainable_state_dict
from . import lean as lean  # frostline.lean.keeps / saved_bytes
from ._patch import patched
from .audit import Finding, audit
from .cache import FeatureCache, with_ids
from .checkpoint import load_trainable_state_dict, trainable_state_dict
from .errors import FreezeError, FrostlineError, FrozenParameterChanged, SelectionError
from .explain import Explanation, explain
from .freeze import freeze, frozen_names, is_frozen, unfreeze
from .groups import freeze_to, layer_groups
from .guard import Snapshot, guard, snapshot
from .optim import optimizer, param_groups, sync
from .selection import select
from .spectrum import spectrum
from .summary import Summary, summary
from .tokens import token_rows, train_token_rows

__version__ = "0.1.0"

# Imported on first use, so that ``import frostline`` imports no framework (lightning, transformers) and
# ``frostline.integrations.lightning.FreezeCallback`` still works after a bare ``import frostline``.
_LAZY = ("datasets", "integrations", "models", "schedules")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "Explanation",
    "FeatureCache",
    "Finding",
    "FreezeError",
    "FrostlineError",
    "FrozenParameterChanged",
    "SelectionError",
    "Snapshot",
    "Summary",
    "audit",
    "explain",
    "freeze",
    "freeze_to",
    "frozen_names",
    "guard",
    "is_frozen",
    "layer_groups",
    "load_trainable_state_dict",
    "optimizer",
    "param_groups",
    "patched",
    "select",
    "snapshot",
    "spectrum",
    "summary",
    "trainable_state_dict",
    "sync",
    "token_rows",
    "train_token_rows",
    "unfreeze",
    "with_ids",
]
