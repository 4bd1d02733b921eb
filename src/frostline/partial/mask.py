"""mask: the tensor stays one Parameter; frozen gradients are zeroed, frozen values restored after each step.

Nothing about the model changes shape or identity, so an optimizer built before freezing keeps working, with its
state, and tied weights stay tied. Two things keep frozen elements exact:

* a post-accumulate-grad hook zeroes their gradient, so clipping, accumulation and ``GradScaler`` see only the
  trainable gradient (a zero gradient alone is not enough: weight decay and momentum still move an element);
* before every optimizer step that touches the Parameter, the frozen elements are copied aside (gathered by
  index: no host sync), and written back after it (``index_copy_`` for whole slices, ``masked_scatter_``
  otherwise). Copying them before each step, rather than once, makes the visible Parameter the truth: an in-place
  write to it between steps (``nn.init``, ``.data.copy_``, ``mul_`` under ``no_grad``) takes effect for frozen
  elements too (and a live ``guard`` reports it), where a copy taken once would silently undo it.

The cost is a dense gradient and dense optimizer state, two passes over the frozen elements per step, and for
single elements a 4-byte index per frozen element: the cheapest strategy when most elements train.

Under FSDP2 (``fully_shard`` after freezing) the strategy follows the module's tensors: the hook goes on FSDP's
gathered Parameter (so the reduce-scattered gradient has zeros at frozen elements), and after a step each rank
writes back the frozen elements of its own shard (located once per shard layout, from the DTensor's placements).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from .._tensor import gathered, is_dtensor
from ._base import Strategy, fsdp_managed
from ._layout import Layout
from ._registry import register

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


@register
class Mask(Strategy):
    strategy = "mask"

    @classmethod
    def why_not(cls, module: nn.Module, local: str, layout: Layout,
                tied: Sequence[tuple[str, nn.Module, str]] | bool) -> str | None:
        if isinstance(module, nn.Embedding) and module.sparse and local == "weight":
            return ("the Embedding has sparse=True, and a sparse gradient cannot be masked in place; use "
                    "strategy='delta' with rows= (or rows=..., dim=1), or build it with sparse=False")
        return None

    def _setup(self, layout: Layout) -> None:
        self.dim = layout.dim
        self._add_buffer("frozen", layout.broadcastable().clone())
        index = layout.frozen_index()  # slices along dim, or flat elements (int32 when it fits: half the bytes)
        small = self.dim is None and self.param.numel() < 2 ** 31
        self._add_buffer("index", index.to(torch.int32) if small else index)
        self._add_buffer("saved", self._frozen_values())

    def _frozen_values(self) -> Tensor:
        values = gathered(self.param.detach())  # a collective for FSDP2's shard (a checkpoint loaded into it)
        if self.dim is not None:
            return values.index_select(self.dim, self._get("index")).clone()
        return values.masked_select(self._get("frozen"))

    def layout(self) -> Layout:
        frozen = self._get("frozen")
        return Layout(self.param.shape, frozen.reshape(-1) if self.dim is not None else frozen, self.dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        if fsdp_managed(self.module):
            self.follow()
            self.hold_shards()
            return [cast(nn.Parameter, self.module._parameters[self.local])]  # FSDP's shard, held there
        return [self.param]

    def _stepped(self) -> list[Tensor]:
        return [self.param]

    def check(self) -> None:
        if not fsdp_managed(self.module):
            return super().check()
        self.follow()  # the optimizer steps FSDP's shard of the tensor: found on the module after a step
        current = self.module._parameters.get(self.local)
        if current is not None and not is_dtensor(current):
            self._hook(current)  # FSDP's gathered Parameter, reused every step: hooked once

    def full(self) -> Tensor:
        if not fsdp_managed(self.module):
            return super().full()
        return gathered(cast(nn.Parameter, self.module._parameters[self.local]).detach())

    def before_step(self) -> None:
        if fsdp_managed(self.module):  # shards: their frozen values were located once (_restore_shard)
            return
        source, dim = (self.param.detach().reshape(-1), 0) if self.dim is None else (self.param.detach(), self.dim)
        with torch.no_grad():
            torch.index_select(source, dim, self._get("index"), out=self._get("saved"))

    def after_step(self) -> None:
        current = self.module._parameters.get(self.local)
        if fsdp_managed(self.module) and is_dtensor(current):
            self.hold_shards()
            return self._restore_shard(cast("DTensor", current))
        with torch.no_grad():
            if self.dim is not None:
                self.param.index_copy_(self.dim, self._get("index"), self._get("saved"))
            else:
                self.param.masked_scatter_(self._get("frozen"), self._get("saved"))

    def _restore_shard(self, shard: DTensor) -> None:
        local = shard.to_local()
        place = self.__dict__.get("_shard")
        if place is None or place[0] != (tuple(shard.placements), tuple(local.shape)):
            place = self._shard = self._locate(shard, local)
        _, frozen, saved = place
        with torch.no_grad():
            local.masked_scatter_(frozen, saved)

    def _locate(self, shard: DTensor, local: Tensor) -> tuple:
        """This rank's frozen elements: their mask over the local shard and their saved values (once per layout)."""
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(shard.shape, shard.device_mesh, shard.placements)
        mine = tuple(slice(start, start + size) for start, size in zip(offset, shape, strict=False))
        frozen = self.layout().full().to(local.device)
        values = torch.zeros(shard.shape, dtype=local.dtype, device=local.device)
        if self.dim is not None:
            values.index_copy_(self.dim, self._get("index"), self._get("saved"))
        else:
            values.masked_scatter_(frozen, self._get("saved"))
        frozen = frozen[mine].contiguous()
        return (tuple(shard.placements), tuple(local.shape)), frozen, values[mine][frozen]

    def _reload(self) -> None:
        self._get("saved").copy_(self._frozen_values())
        self.__dict__.pop("_shard", None)  # located from the old values

    def _activate(self) -> None:
        super()._activate()
        self._hook(self.param)

    def _hook(self, param: Tensor) -> None:
        if is_dtensor(param):  # FSDP2 runs a shard's hooks after the reduce-scatter: the gathered one's did it
            return
        hooks = getattr(param, "_post_accumulate_grad_hooks", None) or {}
        if not any(_is_ours(hook, self) for hook in hooks.values()):
            param.register_post_accumulate_grad_hook(functools.partial(_zero_frozen_grad, weakref.ref(self)))

    def _deactivate(self) -> None:
        super()._deactivate()
        hooks = getattr(self.param, "_post_accumulate_grad_hooks", None) or {}
        for key in [key for key, hook in hooks.items() if _is_ours(hook, self)]:
            del hooks[key]


def _is_ours(hook: object, part: Mask) -> bool:
    return isinstance(hook, functools.partial) and hook.func is _zero_frozen_grad and hook.args[0]() is part


def _zero_frozen_grad(ref: weakref.ref, param: Tensor) -> None:
    part = ref()
    if part is None or param.grad is None:
        return
    if part.module._parameters.get(part.local) is not param and not fsdp_managed(part.module):
        return
    if part.dim is not None:  # whole slices: index_fill_ is several times faster than a broadcast mask
        param.grad.index_fill_(part.dim, part._get("index"), 0)
    else:
        param.grad.masked_fill_(part._get("frozen"), 0)
