"""The forward that a module with delta or split tensors runs instead of its class's.

It is an instance attribute put there by :mod:`frostline._patch` (owner ``partial``, the strongest), like the forwards
of :mod:`frostline.lean`: the class never changes, and ``deepcopy``, pickling and ``torch.compile`` see plain
attributes. A strategy that owns the module's whole computation (split; delta on embedding rows) runs it; otherwise
the class forward runs with each delta tensor swapped for a view that routes gradients to its trainable storage.
Every module that uses a tied delta tensor runs it too, so each use feeds the one trainable storage.
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from .. import _patch
from ._base import strategies


def run(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    parts = strategies(module)
    for part in parts.values():
        if part.module is module and getattr(part, "owns_forward", False):
            return part.forward(module, *args, **kwargs)
    for local, part in parts.items():  # a tied tensor: its strategy serves each module that uses it
        if part.tied and part.needs_forward:
            return part.forward_use(module, local, *args, **kwargs)
    return swapped(module, *args, **kwargs)


def swapped(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class forward, with every delta tensor of ``module`` (its own or tied) swapped for its
    gradient-routing tensor."""
    swaps = {local: part.forward_tensor() for local, part in strategies(module).items() if part.needs_forward}
    saved = {local: module._parameters[local] for local in swaps}
    params = cast(dict[str, Any], module._parameters)  # for this call, plain tensors stand in for Parameters
    params.update(swaps)
    try:
        return type(module).forward(module, *args, **kwargs)
    finally:
        module._parameters.update(saved)


def tensor(module: nn.Module, local: str) -> Tensor | None:
    """What a forward must use for ``module.<local>``: a delta tensor's gradient-routing view, else the tensor."""
    part = strategies(module).get(local)
    if part is not None and part.needs_forward:
        return part.forward_tensor()
    return getattr(module, local)


def foreign_forward(module: nn.Module) -> bool:
    """True when someone else replaced this module's forward on the instance (frostline then cannot take it)."""
    return _patch.owner(module, "forward") == "user"


def refresh(module: nn.Module) -> None:
    """Hold ``forward`` with ``run`` while a strategy of the module needs it (it displaces a lean or recomputing
    forward); let it go when none does."""
    if any(part.needs_forward for part in strategies(module).values()):
        _patch.install(module, "forward", "partial", run)
    else:
        _patch.remove(module, "forward", "partial")
