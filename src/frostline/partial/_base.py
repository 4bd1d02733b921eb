"""The interface every strategy implements, and the optimizer hooks that run strategies around each step.

The partially frozen Parameter never leaves its module: it keeps its name, identity and full shape, and holds the
effective values (frostline writes trainable values back after every ``torch.optim`` step) and is the truth
between steps. A strategy adds its storage beside it as ``_frostline_<role>_<name>`` Parameters and
non-persistent buffers, so ``.to()``, ``deepcopy`` and pickling carry everything along.

What cannot live on the module as a plain attribute is rebuilt from it instead:

* the optimizer hooks: one global ``register_optimizer_step_pre_hook`` and one ``..._post_hook``, installed when
  the first strategy in the process comes to life (never at import), which find the strategies to run by the identity of the Parameters the optimizer steps (``_ACTIVE``, filled when a strategy is
  created, copied or unpickled). What an optimizer holds is examined once per change of storage or of its groups
  (``_plan``), not on every step; that examination also refuses an optimizer that holds a Parameter which no
  longer stores its tensor (``_carry.refuse_stale``). Before a step a strategy takes what the visible Parameter
  holds (in-place writes to it count, ``.data`` ones included), after it writes back;
* tensor hooks: ``deepcopy``/``pickle`` of a Parameter drop them, so strategies reinstall theirs in
  ``__setstate__`` (and whenever they find their Parameter replaced, e.g. by ``load_state_dict(assign=True)``).

Under FSDP2 (``fully_shard`` after freezing) the module's Parameters belong to FSDP: shards between steps, gathered
copies during forward and backward. Strategies of such a module (:func:`fsdp_managed`) follow what the module holds
instead of rebinding to it, and are found after a step through ``_FOLLOWING``; :meth:`Strategy.hold_shards` swaps
their references to the shards so no unsharded original stays alive.
"""
from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from .._state import partial_tensors
from .._tensor import is_dtensor, put
from . import _carry
from ._layout import Layout

_ACTIVE: dict[int, weakref.ref] = {}  # id(Parameter an optimizer steps) -> weakref to the strategy to run after
# strategies whose module FSDP2 manages: the Parameters an optimizer steps are FSDP's shards, found on the module
_FOLLOWING: weakref.WeakSet = weakref.WeakSet()
# optimizer -> (what it held when examined, weakrefs to the strategies whose Parameters it steps)
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fsdp_managed(module: nn.Module) -> bool:
    """Whether ``fully_shard`` manages ``module``'s Parameters (it marks every module it manages)."""
    return bool(module.__dict__.get("_is_fsdp_managed_module", False))


class Strategy:
    """One partially frozen tensor, ``module.<local>``, stored the way a strategy stores it.

    Subclasses set ``strategy`` and implement ``_setup``, ``layout``, ``trainable_parameters``, ``after_step`` and,
    where they keep copies of values, ``sync``/``_reload``/``internal_values``/``load_trainable``; registered
    (:func:`frostline.partial.register`), ``freeze(..., strategy=<its name>)`` uses them.
    """

    strategy: ClassVar[str]
    auto_pick: ClassVar[bool] = False  # a registered strategy, not built in: strategy="auto" may pick it (choose)
    needs_forward: ClassVar[bool] = False  # the module must run through frostline's forward (see _forward.py)
    tied = False  # True once another module's use of the Parameter is served too (``serve``)

    @classmethod
    def why_not(cls, module: nn.Module, local: str, layout: Layout,
                tied: Sequence[tuple[str, nn.Module, str]] | bool) -> str | None:
        """None when this strategy can serve ``layout`` of ``module.<local>``, else the reason it cannot."""
        return None

    def __init__(self, module: nn.Module, local: str, layout: Layout) -> None:
        self.module, self.local = module, local
        self.param = cast(nn.Parameter, module._parameters[local])
        self._internal: list[str] = []
        self._setup(layout)
        self._activate()

    # -- the PartialTensor protocol (frostline._state) ------------------------------------------------------
    def full(self) -> Tensor:
        self.sync()
        return self.param.detach()

    def frozen_mask(self) -> Tensor:
        return self.layout().full()

    def internal_names(self) -> tuple[str, ...]:
        return tuple(self._internal)

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    # -- for strategies that set needs_forward or owns_forward (see _forward.py) ------------------------------
    forward: Callable[..., Tensor]  # ``module``'s forward, run by this strategy (``owns_forward``)

    def forward_use(self, module: nn.Module, local: str, *args: Any, **kwargs: Any) -> Any:
        """Tied: the forward of ``module``, another module that uses this Parameter (as ``local``)."""
        raise NotImplementedError

    def forward_tensor(self) -> Tensor:
        """The tensor a forward uses in the Parameter's place (``needs_forward``)."""
        raise NotImplementedError

    def serve(self, module: nn.Module, local: str) -> None:
        """Tied: ``module.<local>`` is this Parameter too; prepare what that module's forward needs."""
        self.tied = True

    # -- what subclasses provide ------------------------------------------------------------------------------
    def _setup(self, layout: Layout) -> None:
        raise NotImplementedError

    def layout(self) -> Layout:
        raise NotImplementedError

    def before_step(self) -> None:
        """Run before an optimizer steps one of ``trainable_parameters()``: take what the visible Parameter holds
        now (someone may have written it in place since the last step)."""

    def after_step(self) -> None:
        """Run after an optimizer stepped one of ``trainable_parameters()``."""
        raise NotImplementedError

    def sync(self, force: bool = False) -> None:
        """Make ``self.param`` hold the effective values (strategies that keep trainable values apart); without
        ``force``, only when the trainable storage changed since the last write."""

    def internal_values(self, full: Tensor) -> dict[str, Tensor]:
        """The internal Parameters' values for a loaded full tensor (``load_state_dict`` pre-hook)."""
        return {}

    def load_trainable(self, values: Tensor, index: Tensor) -> None:
        """Write trainable ``values`` (the layout of :func:`frostline.trainable_state_dict`) into storage."""
        with torch.no_grad():
            full = self.param.detach().clone()
            put(full, self.layout().dim, index.to(full.device), values.to(full))
            self.param.detach().copy_(full)
            for name, value in self.internal_values(full).items():
                cast(Tensor, self.module._parameters[name]).detach().copy_(value)
        self._reload()

    def _reload(self) -> None:
        """The Parameter holds new values (a checkpoint was loaded): refresh what was derived from them."""

    # -- lifecycle --------------------------------------------------------------------------------------------
    def _stepped(self) -> Sequence[Tensor]:
        """The Parameters this strategy holds that an optimizer steps (as bound now: no lookups, no side effects)."""
        return self.trainable_parameters()

    def _activate(self) -> None:
        _install_hooks()
        for param in self._stepped():
            _ACTIVE[id(param)] = weakref.ref(self, functools.partial(_forget, id(param)))
        _carry.bump()

    def _deactivate(self) -> None:
        for param in self._stepped():
            ref = _ACTIVE.get(id(param))
            if ref is not None and ref() is self:
                del _ACTIVE[id(param)]
        _carry.bump()

    def check(self) -> None:
        """Before a forward (eager): adopt a Parameter put in our place (``module.weight = ...``), with its values."""
        if self.module._parameters.get(self.local) is not self.param:
            self.after_load()

    def _bind(self) -> None:
        """Take the direct references to the module's Parameters again."""
        self.param = cast(nn.Parameter, self.module._parameters[self.local])  # FSDP2's may be a DTensor

    def _rebind(self) -> None:
        self._deactivate()
        self._bind()
        self._activate()

    def follow(self) -> None:
        """Under FSDP2, until this strategy holds FSDP's shards: have the next optimizer step look for it."""
        if not is_dtensor(self.param):
            _install_hooks()
            _FOLLOWING.add(self)

    def hold_shards(self) -> None:
        """Under FSDP2, refer to FSDP's shards instead of the unsharded originals (which would keep a full copy of
        the tensor alive on every rank); from then on an optimizer step finds this strategy by them (``_ACTIVE``)."""
        current = self.module._parameters.get(self.local)
        if current is self.param or not is_dtensor(current):
            return
        self._deactivate()
        self._bind_shards()
        self._activate()
        _FOLLOWING.discard(self)

    def _bind_shards(self) -> None:
        self.param = cast(nn.Parameter, self.module._parameters[self.local])  # FSDP2's may be a DTensor

    def after_load(self) -> None:
        self._rebind()
        self._reload()

    def teardown(self) -> None:
        """Write the effective values into the Parameter and remove this strategy's storage and hooks."""
        self.sync(force=True)
        self._deactivate()
        for name in self._internal:
            self.module._parameters.pop(name, None)
            self.module._buffers.pop(name, None)
            self.module._non_persistent_buffers_set.discard(name)
        self._internal = []

    def __setstate__(self, state: dict[str, Any]) -> None:
        # deepcopy/unpickle: the Parameters referenced here are the new ones; their tensor hooks are gone
        self.__dict__.update(state)
        self._activate()

    # -- storage helpers ------------------------------------------------------------------------------------
    def _name(self, role: str) -> str:
        return f"_frostline_{role}_{self.local}"

    def _add_buffer(self, role: str, tensor: Tensor) -> None:
        self.module.register_buffer(self._name(role), tensor, persistent=False)
        self._internal.append(self._name(role))

    def _add_parameter(self, role: str, tensor: Tensor) -> nn.Parameter:
        param = nn.Parameter(tensor)
        self.module.register_parameter(self._name(role), param)
        self._internal.append(self._name(role))
        return param

    def _get(self, role: str) -> Tensor:
        name = self._name(role)
        held = self.module._buffers[name] if name in self.module._buffers else self.module._parameters[name]
        return cast(Tensor, held)  # our own storage: set while this strategy lives


def _forget(key: int, _ref: weakref.ref) -> None:
    if _ACTIVE.get(key) is _ref:
        del _ACTIVE[key]
        _carry.bump()


def _plan(optimizer: torch.optim.Optimizer) -> list[weakref.ref]:
    """The strategies whose Parameters ``optimizer`` steps, found again only when storage or its groups changed
    (so a step costs a comparison per group, not a lookup per parameter). Raises for stale storage it holds."""
    key = (_carry.generation(), tuple((id(g["params"]), len(g["params"])) for g in optimizer.param_groups))
    known = _PLANS.get(optimizer)
    if known is not None and known[0] == key:
        return known[1]
    _carry.refuse_stale(optimizer)
    found: dict[int, weakref.ref] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            ref = _ACTIVE.get(id(param))
            if ref is None:
                continue
            part = ref()
            if part is not None and id(part) not in found and any(p is param for p in part._stepped()):
                found[id(part)] = ref
    _PLANS[optimizer] = (key, list(found.values()))
    return _PLANS[optimizer][1]


def _before_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    if not _ACTIVE and not _carry.any_retired():
        return
    for ref in _plan(optimizer):
        part = ref()
        if part is not None:
            part.before_step()


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    if not _ACTIVE and not _FOLLOWING:
        return
    done: set[int] = set()
    for ref in _plan(optimizer):
        part = ref()
        if part is not None and id(part) not in done:
            done.add(id(part))
            part.after_step()
    if _FOLLOWING:
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for part in list(_FOLLOWING):
            if id(part) not in done and any(id(p) in stepped for p in part.trainable_parameters()):
                done.add(id(part))
                part.after_step()


_HOOKS: list[RemovableHandle] = []  # the two optimizer hooks, once a strategy exists


def _install_hooks() -> None:
    if not _HOOKS:
        _HOOKS.append(register_optimizer_step_pre_hook(_before_optimizer_step))
        _HOOKS.append(register_optimizer_step_post_hook(_after_optimizer_step))


def strategies(module: nn.Module) -> dict[str, Strategy]:
    """``partial_tensors(module)`` as what frostline attaches there: Strategies, by local name."""
    return cast("dict[str, Strategy]", partial_tensors(module))
