"""Measure what a forward pass keeps for backward, per module, with ``saved_tensors_hooks``.

Every tensor autograd saves (PyTorch's nodes and frostline's lean functions alike, which save only through
``ctx.save_for_backward``) passes the pack hook, so the count is a measurement, not a declaration. Storages are
counted once each, by the innermost module running when they were first saved; the model's own parameters and
buffers are resident anyway and are not counted.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from .._tensor import storage_key


def _enter(stack: list[str], name: str, module: nn.Module, args: Any) -> None:
    stack.append(name)


def _leave(stack: list[str], module: nn.Module, args: Any, output: Any) -> None:
    stack.pop()


def saved_bytes(model: nn.Module, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Run ``model(*args, **kwargs)`` once and return the bytes each module's forward keeps for backward.

    Keys are module names (``""`` for the model itself), in the order modules first saved something; modules
    that keep nothing new are absent. The graph is freed before returning.

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> from frostline.lean import saved_bytes
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(64, 4)
        >>> saved_bytes(model, x)["1"]           # PyTorch's ReLU keeps its float32 output: 64 * 8 * 4 bytes
        2048
        >>> _ = frostline.freeze(model, ["2", "4"], lean=True)
        >>> saved_bytes(model, x)["3"]           # lean: one bit per element
        64
    """
    resident = {key[0] for t in [*model.parameters(), *model.buffers()] if (key := storage_key(t)) is not None}
    seen: dict[int, tuple[int, str]] = {}
    stack: list[str] = [""]

    def pack(t: Tensor) -> Tensor:
        key = storage_key(t)
        if key is not None and key[0] not in resident and key[0] not in seen:
            seen[key[0]] = (key[1], stack[-1])
        return t

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(functools.partial(_enter, stack, name)))
                handles.append(module.register_forward_hook(functools.partial(_leave, stack), always_call=True))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(*args, **kwargs)
        del out
    finally:
        for handle in handles:
            handle.remove()
    result: dict[str, int] = {}
    for nbytes, name in seen.values():
        result[name] = result.get(name, 0) + nbytes
    return result
