"""The forward that a module with delta or split tensors runs instead of its class's.

It is an instance attribute, ``functools.partial(run, module)`` of a module-level function, like the forwards of
:mod:`frostline.lean`: the class never changes, and ``deepcopy``, pickling and ``torch.compile`` see plain
attributes. A strategy that owns the module's whole computation (split; delta on embedding rows) runs it; otherwise
the class forward runs with each delta tensor swapped for a view that routes gradients to its trainable storage.
Every module that uses a tied delta tensor runs it too, so each use feeds the one trainable storage.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor, nn

from .._state import partial_tensors


def run(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    parts = partial_tensors(module)
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
    swaps = {local: part.forward_tensor() for local, part in partial_tensors(module).items() if part.needs_forward}
    saved = {local: module._parameters[local] for local in swaps}
    module._parameters.update(swaps)
    try:
        return type(module).forward(module, *args, **kwargs)
    finally:
        module._parameters.update(saved)


def tensor(module: nn.Module, local: str) -> Tensor | None:
    """What a forward must use for ``module.<local>``: a delta tensor's gradient-routing view, else the tensor."""
    part = partial_tensors(module).get(local)
    if part is not None and part.needs_forward:
        return part.forward_tensor()
    return getattr(module, local)


def _is_frostline(fn: Any) -> bool:
    return isinstance(fn, functools.partial) and getattr(fn.func, "__module__", "").startswith("frostline.")


def foreign_forward(module: nn.Module) -> bool:
    """True when someone else replaced this module's forward on the instance (frostline then cannot take it)."""
    return "forward" in module.__dict__ and not _is_frostline(module.__dict__["forward"])


def refresh(module: nn.Module) -> None:
    """Install ``run`` while a strategy of the module needs it; remove it (only ours) when none does."""
    wanted = any(part.needs_forward for part in partial_tensors(module).values())
    current = module.__dict__.get("forward")
    ours = isinstance(current, functools.partial) and current.func is run
    if wanted and not ours:
        module.__dict__["forward"] = functools.partial(run, module)  # replaces a lean forward, if one was there
    elif not wanted and ours:
        del module.__dict__["forward"]
