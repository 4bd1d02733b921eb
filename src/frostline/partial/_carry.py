"""What follows a partially frozen tensor across a change of its layout: gradients, optimizer state, optimizers.

Freezing or unfreezing rows can change which Parameter *stores* a tensor's trainable elements: delta and split
make a new one for every layout, the original comes back when the tensor is whole again, mask keeps the original
throughout. A Parameter that stops storing its tensor is *retired*, recorded with the elements it covered, so that

- the gradient accumulated so far moves to the new storage at once, for the elements that train before and after
  (gradient accumulation across the change loses nothing; newly frozen elements' gradient is dropped);
- :func:`frostline.sync` moves the optimizer state the same way (``carried_state``): elements that train on
  keep theirs, newly frozen elements' state is freed, and newly trainable elements start from the state the
  optimizer itself gives an element that has only ever seen zero gradients (what mask, which keeps one dense
  state, holds for an element frozen from the start: Adam's zero moments, Rprop's initial step size);
- an optimizer that still holds retired storage but not its successor refuses to step (``refuse_stale``),
  where it would silently leave the trainable elements where they are.

An optimizer that never saw a layout gets no say in it: state carries from the layout of the Parameter it holds
to the layout of now, whatever happened in between.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from .._state import partial_tensors
from .._tensor import put, take
from ..errors import FrostlineError

if TYPE_CHECKING:  # _base and the strategies import this module
    from ._base import Strategy
    from .delta import Delta


@dataclass(frozen=True)
class Cover:
    """How a Parameter that stores a tensor of ``shape`` maps onto it: the slices along ``dim`` (flat elements
    when ``dim`` is None) at ``index``, or, with ``index`` None, the whole tensor with ``frozen`` elements (a bool
    broadcastable to ``shape``; None when every element trains)."""

    shape: torch.Size
    dim: int | None = None
    index: Tensor | None = None
    frozen: Tensor | None = None

    def spread(self, value: Tensor) -> Tensor:
        """A stored ``value`` at full shape, zero wherever this layout does not train."""
        if self.index is None:
            return value if self.frozen is None else value.masked_fill(self.frozen, 0)
        full = value.new_zeros(self.shape)
        put(full, self.dim, self.index.to(full.device), value)
        return full

    def gather(self, full: Tensor) -> Tensor:
        """The stored shape of a full-shape tensor, zero at the frozen elements of a whole one."""
        if self.index is None:
            return full if self.frozen is None else full.masked_fill(self.frozen, 0)
        return take(full, self.dim, self.index.to(full.device))


def moved(value: Tensor, old: Cover, new: Cover, fresh: Tensor | None = None) -> Tensor:
    """``value`` stored as ``old`` covers it, stored as ``new`` does: elements that train in both keep theirs, the
    others get ``fresh`` (broadcast), or zero. A sparse value stays sparse (row-sparse)."""
    sparse = value.is_sparse
    dense = value.to_dense() if sparse else value
    out = new.gather(old.spread(dense))
    if fresh is not None:
        kept = new.gather(old.spread(torch.ones_like(dense))) != 0
        out = torch.where(kept, out, fresh.to(out))
    return out.to_sparse(1) if sparse else out


def current(module: nn.Module, local: str) -> tuple[nn.Parameter, Cover] | None:
    """The Parameter that stores ``module.<local>`` now (whether or not it trains), and its cover."""
    part = partial_tensors(module).get(local)
    if part is None:
        param = module._parameters.get(local)
        if param is None:
            return None
        frozen = None if param.requires_grad else torch.ones((), dtype=torch.bool, device=param.device)
        return param, Cover(param.shape, frozen=frozen)
    strategy = cast("Strategy", part)  # frostline's partial tensors are Strategies
    (stored,) = cast("list[nn.Parameter]", strategy._stepped())
    if stored is strategy.param:  # mask: the original Parameter, its frozen elements restored after each step
        return stored, Cover(strategy.param.shape, frozen=strategy.frozen_mask())
    delta = cast("Delta", strategy)  # delta or split: a Parameter of the trainable slices
    return stored, Cover(delta.param.shape, delta.dim, delta._get("index"))


# -- retired storage --------------------------------------------------------------------------------------------
class _Retired(NamedTuple):
    ref: weakref.ref
    cover: Cover
    module: weakref.ref
    local: str
    name: str  # the tensor's name as frostline.freeze was given it (for messages)
    seq: int  # later retirements win when several of one tensor's old Parameters meet in one optimizer


_RETIRED: dict[int, _Retired] = {}  # id(retired Parameter) -> where its tensor lives now
_SEQ = itertools.count()
_generation = 0  # bumped whenever storage changes: the step hooks re-examine an optimizer only then


def bump() -> None:
    global _generation
    _generation += 1


def generation() -> int:
    return _generation


def any_retired() -> bool:
    return bool(_RETIRED)


class Before(NamedTuple):
    param: nn.Parameter
    cover: Cover
    grad: Tensor | None


def before(module: nn.Module, local: str) -> Before | None:
    """What stores ``module.<local>`` before a change of its layout (pass it to ``after``)."""
    found = current(module, local)
    return None if found is None else Before(found[0], found[1], found[0].grad)


def after(module: nn.Module, local: str, name: str, was: Before | None) -> None:
    """After a change of ``module.<local>``'s layout: retire the Parameter that stored it (unless it still does)
    and hand its gradient on, for the elements that train before and after."""
    now = current(module, local)
    if was is None or now is None:
        return
    param, cover = now
    if param is was.param:  # mask, or whole again: the same Parameter; newly frozen elements lose their gradient
        if param.grad is not None and not param.grad.is_sparse and cover.frozen is not None:
            param.grad.masked_fill_(cover.frozen, 0)
        return
    _RETIRED.pop(id(param), None)  # it stores the tensor again
    _RETIRED[id(was.param)] = _Retired(weakref.ref(was.param, functools.partial(_forget, id(was.param))), was.cover,
                                       weakref.ref(module), local, name, next(_SEQ))
    bump()
    if was.grad is not None and param.requires_grad:
        param.grad = moved(was.grad, was.cover, cover)


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _RETIRED.get(key)
    if entry is not None and entry.ref is ref:
        del _RETIRED[key]


def _now(param: Tensor) -> tuple[_Retired, nn.Parameter, Cover] | None:
    """For retired storage: its record, and what stores its tensor now (with its cover)."""
    entry = _RETIRED.get(id(param))
    if entry is None or entry.ref() is not param:
        return None
    module = entry.module()
    found = current(module, entry.local) if module is not None else None
    if found is None or found[0] is param:  # gone, or it stores its tensor again
        return None
    return entry, found[0], found[1]


def storing(param: Tensor) -> nn.Parameter | None:
    """For a Parameter that stored a partially frozen tensor once and no longer does (what an optimizer may still
    hold): the Parameter that stores the tensor now, whether it trains or not. None for any other tensor."""
    found = _now(param)
    return None if found is None else found[1]


def _successor(param: Tensor) -> tuple[_Retired, nn.Parameter, Cover] | None:
    """``_now``, when what stores the tensor now trains."""
    found = _now(param)
    return found if found is not None and found[1].requires_grad else None


# -- optimizers -------------------------------------------------------------------------------------------------
def refuse_stale(optimizer: torch.optim.Optimizer) -> None:
    """Raise when ``optimizer`` holds retired storage of a tensor but not the Parameter that trains it now."""
    held: set[int] | None = None
    for group in optimizer.param_groups:
        for param in group["params"]:
            found = _successor(param) if id(param) in _RETIRED else None
            if found is None:
                continue
            held = held if held is not None else {id(p) for g in optimizer.param_groups for p in g["params"]}
            entry, successor, _ = found
            if id(successor) in held:
                continue
            module = entry.module()  # alive: _successor found what stores its tensor now
            part = partial_tensors(module).get(entry.local) if module is not None else None
            now = f"partially frozen, strategy {part.strategy!r}" if part is not None else "whole and trainable"
            raise FrostlineError(
                f"{type(optimizer).__name__}.step() refused: {entry.name!r} was frozen or unfrozen in part since "
                f"this optimizer was built or last synced (it is {now} now), so its trainable elements live in a "
                "Parameter the optimizer does not hold, and would not train. Call frostline.sync(optimizer, model) "
                "after each freeze/unfreeze (it keeps the optimizer state of what trains on), or build the "
                "optimizer afterwards (frostline.optimizer(model, ...))")


def carried_state(optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor
                  ) -> tuple[nn.Parameter, dict[str, Any], int] | None:
    """For retired storage that ``optimizer`` holds state for: the Parameter that stores its tensor now, the state
    for it (see the module docstring), and the retirement's order. None when there is nothing to carry, or the
    state cannot be carried element by element (a factored state, or no fresh state the optimizer would give)."""
    found = _successor(param)
    state = optimizer.state.get(param)
    if found is None or not state:
        return None
    entry, successor, cover = found
    per_element = {k for k, v in state.items() if torch.is_tensor(v) and v.dim() and v.shape == param.shape}
    if any(torch.is_tensor(v) and v.dim() and k not in per_element for k, v in state.items()):
        return None
    fresh: dict[str, Tensor] = {}
    some = next((state[k] for k in per_element), None)
    if some is not None and _starts_training(entry.cover, cover, some):
        fresh = _fresh_state(optimizer, group, successor) or {}
        if not per_element <= set(fresh):
            return None
    out = {k: moved(v, entry.cover, cover, fresh.get(k)) if k in per_element
           else (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
    return successor, out, entry.seq


def _starts_training(old: Cover, new: Cover, like: Tensor) -> bool:
    """Whether an element that trains in ``new`` did not in ``old`` (``like``: a tensor stored as ``old`` covers
    it). A host sync: for sync(), never the step."""
    kept = new.gather(old.spread(torch.ones_like(like))) != 0
    trains = new.gather(torch.ones(new.shape, dtype=like.dtype, device=like.device)) != 0
    return bool((trains & ~kept).any())


def _fresh_state(optimizer: torch.optim.Optimizer, group: dict[str, Any], like: Tensor) -> dict[str, Tensor] | None:
    """The per-element state ``optimizer``'s class gives one element that has only seen zero gradients: one step
    of a throwaway copy (same group hyperparameters) on a zero element with a zero gradient."""
    hyper = {k: v for k, v in group.items()
             if k not in ("params", "param_names", "name", "initial_lr") and not k.startswith("frostline")}
    cls = type(optimizer)
    try:
        accepted: Mapping[str, inspect.Parameter] = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    anything = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    given = {k: v for k, v in hyper.items() if anything or k in accepted}  # AdamW sets decoupled_weight_decay itself
    for sparse in (False, True):  # SparseAdam takes sparse gradients only
        probe = torch.zeros(1, dtype=like.dtype, device=like.device, requires_grad=True)
        try:
            throwaway = cls([probe], **given)
            throwaway.param_groups[0].update(hyper)
            probe.grad = torch.zeros_like(probe).to_sparse() if sparse else torch.zeros_like(probe)
            throwaway.step()
        except Exception:  # any optimizer class may refuse a probe; then nothing is carried, as before
            continue
        return {k: v for k, v in throwaway.state[probe].items() if torch.is_tensor(v) and v.shape == probe.shape}
    return None
