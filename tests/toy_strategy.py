"""A fourth partial-freezing strategy, written outside frostline: a strategy is one file and no edits elsewhere.

``restore``: the tensor stays one trainable Parameter (as ``mask`` keeps it), done the plain way: a tensor hook
zeroes the frozen elements of each gradient as it arrives (so clipping, accumulation and ``GradScaler`` see the
trainable gradient only), and a full copy of the Parameter taken before each optimizer step puts the frozen
elements back after it. Exact, at full cost: a dense copy of the tensor per step.

Importing this file registers nothing: tests register it for as long as they need it (:func:`registered`), so the
rest of the suite sees the built-in strategies only.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from frostline.partial import Strategy, register, unregister
from frostline.partial._layout import Layout


class Restore(Strategy):
    strategy = "restore"

    @classmethod
    def why_not(cls, module: nn.Module, local: str, layout: Layout, tied: object) -> str | None:
        if isinstance(module, nn.Embedding) and module.sparse and local == "weight":
            return "the Embedding has sparse=True, and a sparse gradient cannot be masked; build it with sparse=False"
        return None

    def _setup(self, layout: Layout) -> None:
        self.dim = layout.dim
        self._add_buffer("frozen", layout.broadcastable().clone())  # broadcasts against the tensor
        self._add_buffer("saved", self.param.detach().clone())

    def layout(self) -> Layout:
        frozen = self._get("frozen")
        return Layout(self.param.shape, frozen.reshape(-1) if self.dim is not None else frozen, self.dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.param]

    def before_step(self) -> None:
        self._get("saved").copy_(self.param.detach())  # the visible Parameter is the truth between steps

    def after_step(self) -> None:
        with torch.no_grad():
            self.param.copy_(torch.where(self._get("frozen"), self._get("saved"), self.param))

    def _activate(self) -> None:  # also after deepcopy/unpickling, which drop a Parameter's tensor hooks
        super()._activate()
        hooks = self.param._backward_hooks or {}
        if not any(_is_ours(hook, self) for hook in hooks.values()):
            self.param.register_hook(functools.partial(_zero_frozen, weakref.ref(self)))

    def _deactivate(self) -> None:
        super()._deactivate()
        hooks = self.param._backward_hooks or {}
        for key in [key for key, hook in hooks.items() if _is_ours(hook, self)]:
            del hooks[key]


def _is_ours(hook: object, part: Restore) -> bool:
    return isinstance(hook, functools.partial) and hook.func is _zero_frozen and hook.args[0]() is part


def _zero_frozen(ref: weakref.ref, grad: Tensor) -> Tensor | None:
    part = ref()
    return None if part is None else grad.masked_fill(part._get("frozen"), 0)


@contextlib.contextmanager
def registered() -> Iterator[type[Restore]]:
    """``restore`` is a registered strategy inside the ``with`` block, and is not after it."""
    register(Restore)
    try:
        yield Restore
    finally:
        unregister(Restore.strategy)
