"""What every schedule shares: one small interface, applying a plan, the change log, and checkpoints by name.

A schedule divides the parameters it manages into *groups* (bottom to top) and, at each ``step``, says which
groups are frozen and, optionally, a learning-rate factor per trainable group. The base class turns that plan
into ``freeze``/``unfreeze`` calls, brings the optimizer along with :func:`frostline.optim.sync` (never a
rebuild), scales learning rates, logs and records what changed, and checkpoints all of it by parameter name.

Who owns a parameter the user froze: a schedule given its groups (a spec, ``groups=[...]``; ``UnfreezeAt``
always) owns what they name, whoever froze it first: what is fully frozen when it starts (or restores) is its
own to unfreeze, as in Lightning's ``BackboneFinetuning`` (freeze the backbone, unfreeze it at epoch N). A schedule
whose groups are derived (``groups=None``: :func:`frostline.layer_groups`) never unfreezes what it did not freeze
(unless its class overrides ``_claim``, as ``LayerwiseSampling`` does for its blocks), and every ``Change`` says how
many tensors stay frozen because the user froze them. Partially frozen tensors are left to their strategy (their
frozen elements never train), and each ``Change`` says so too.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .._state import named_logical_parameters, partials_by_name
from ..errors import FrostlineError
from ..freeze import freeze, unfreeze
from ..groups import layer_groups
from ..selection import select_each
from . import _optim

__all__ = ["Schedule", "Change", "Plan"]

log = logging.getLogger("frostline.schedules")


@dataclass
class Change:
    """One change a schedule made to the freeze state: what ``step`` returns and ``Schedule.history`` keeps.

    ``frozen``/``unfrozen`` are parameter names; ``groups`` names the affected groups for humans; ``optimizer``
    is what :func:`frostline.optim.sync` reported (None without an optimizer; not checkpointed). ``kept`` names
    what the plan trains but stays fully frozen because the user froze it and the schedule does not own it;
    ``kept_partial`` the partially frozen tensors of its groups, left to their strategy whatever the plan says.
    """

    epoch: int | None
    step: int | None
    frozen: list[str] = field(default_factory=list)
    unfrozen: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    reason: str = ""
    optimizer: Any = None
    kept: list[str] = field(default_factory=list)
    kept_partial: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        when = ", ".join(f"{k} {v}" for k, v in (("epoch", self.epoch), ("step", self.step)) if v is not None)
        what = []
        if self.frozen:
            what.append(f"froze {len(self.frozen)} tensors")
        if self.unfrozen:
            what.append(f"unfroze {len(self.unfrozen)} tensors")
        text = f"{when or 'start'}: {' and '.join(what) or 'no change'} ({', '.join(self.groups)})"
        if self.reason:
            text += f"; {self.reason}"
        if self.kept:
            text += (f"; {_tensors(self.kept)} frozen: frozen by you, not by the schedule (it takes over what "
                     "you froze only when its groups= name it at its first step)")
        if self.kept_partial:
            text += (f"; {_tensors(self.kept_partial)} partially frozen: frozen by you, not by the schedule "
                     "(their frozen elements never train)")
        if self.optimizer is not None:
            text += f"; optimizer: {self.optimizer}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "frozen": list(self.frozen),
                "unfrozen": list(self.unfrozen), "groups": list(self.groups), "reason": self.reason,
                "kept": list(self.kept), "kept_partial": list(self.kept_partial)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        # absent from older checkpoints
        kept: dict[str, Any] = {k: list(data.get(k, [])) for k in ("kept", "kept_partial")}
        return cls(**{k: data[k] for k in ("epoch", "step", "frozen", "unfrozen", "groups", "reason")}, **kept)


@dataclass
class Plan:
    """What a schedule wants now: the indices of its frozen groups, and lr factors by trainable group index."""

    frozen: frozenset[int]
    lr: dict[int, float] = field(default_factory=dict)
    reason: str = ""


class Schedule:
    """Base class of frostline's schedules. Subclasses implement :meth:`plan` (and, if they keep state of
    their own, ``_extra_state``/``_load_extra_state``); everything else is shared.

    Attributes:
        unit (str): ``"epoch"`` or ``"step"``: which counter ``step`` needs, and how often the integrations
            call it (each epoch, or each optimizer step).
        total_steps (int | None): length of training in optimizer steps, for schedules that need it; the
            Lightning and transformers callbacks fill it in when it is None.
        history (list[Change]): every change so far, checkpointed with the schedule.

    Example: a schedule of your own is one method.
        >>> import torch.nn as nn
        >>> from frostline.schedules import Plan, Schedule
        >>> class HeadFirst(Schedule):  # all but the top group frozen for two epochs
        ...     def plan(self, epoch, step):
        ...         return Plan(frozenset(range(len(self.groups) - 1)) if epoch < 2 else frozenset())
        >>> schedule, model = HeadFirst(), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> print(schedule.step(model, epoch=0))
        epoch 0: froze 2 tensors (0)
        >>> schedule.step(model, epoch=1) is None, schedule.step(model, epoch=2).unfrozen
        (True, ['0.weight', '0.bias'])
    """

    unit: ClassVar[Literal["epoch", "step"]] = "epoch"

    def __init__(self, groups: Sequence[Any] | None = None) -> None:
        self.total_steps: int | None = None
        self.history: list[Change] = []
        self._group_specs = None if groups is None else list(groups)
        self._groups: list[list[str]] | None = None
        self._frozen_groups: frozenset[int] = frozenset()
        self._mine: set[str] = set()  # what this schedule froze or owns; it never unfreezes anything else
        self._started = False  # the first step (or restore) takes over what explicit groups name
        self._epoch: int | None = None
        self._step: int | None = None
        self._pending: dict[str, Any] | None = None
        self._model_ref: weakref.ref | None = None
        self._optimizer_ref: weakref.ref | None = None
        self._label_cache: tuple[Any, list[str]] = (None, [])

    # -- what subclasses implement ------------------------------------------------------------------------------
    def plan(self, epoch: int | None, step: int | None) -> Plan:
        """The frozen groups and lr factors wanted at this position (groups are resolved by then)."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -- the interface ------------------------------------------------------------------------------------------
    @property
    def groups(self) -> list[list[str]]:
        """Parameter names per group, bottom to top (resolved on the first ``step``)."""
        if self._groups is None:
            raise FrostlineError(f"{type(self).__name__} resolves its groups on the first step(model, ...); "
                                 "call step first")
        return self._groups

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
             epoch: int | None = None, step: int | None = None) -> Change | None:
        """Bring ``model`` (and ``optimizer``) to the state this schedule wants at ``epoch``/``step``.

        Call it at the start of each epoch (``unit == "epoch"``) or before each optimizer step
        (``unit == "step"``). Freezing and unfreezing happen in place; the optimizer follows through
        :func:`frostline.optim.sync`, so parameters that stay trainable keep their optimizer state.

        Returns:
            Change | None: what changed in the freeze state (also logged and appended to ``history``), or None.

        Raises:
            ValueError: the counter this schedule needs (``unit``) is missing or negative.
        """
        self._counter(epoch, step)
        if self._groups is None:
            self._groups = self._resolve(model)
        if self._pending is not None:
            self.restore(model, optimizer)
        claimed = 0 if self._started else self._claim(model)
        self._started = True
        plan = self.plan(epoch, step)
        change = None
        if plan.frozen != self._frozen_groups or claimed:  # what it took over may have to be unfrozen now
            change = self._apply(model, plan, epoch, step)
        if optimizer is not None:
            if change is not None or self._optimizer_ref is None or self._optimizer_ref() is not optimizer:
                report = _optim.sync(optimizer, model)
                if change is not None:
                    change.optimizer = report
            _optim.scale_lr(optimizer, model, self._lr_by_param(plan.lr))
            if change is not None and change.optimizer is not None and change.optimizer.added:
                _optim.relabel(change.optimizer, optimizer, model)  # the lr split may have moved them
        self._epoch, self._step = epoch, step
        self._remember(model, optimizer)
        if change is not None:
            self.history.append(change)
            log.info("%s %s", type(self).__name__, change)
        return change

    def _counter(self, epoch: int | None, step: int | None) -> int:
        """The counter ``unit`` names, given and >= 0 (``step`` checks it before it calls ``plan``)."""
        counter = epoch if self.unit == "epoch" else step
        if counter is None or counter < 0:
            raise ValueError(f"{type(self).__name__} is driven by {self.unit}s: pass {self.unit}=<int >= 0> to step()")
        return counter

    def frozen_upto(self) -> str | None:
        """The module that ends the frozen prefix of groups (e.g. ``"encoder.layer.3"``), or None.

        Everything up to and including it is frozen, so a frozen-prefix feature cache can be (re)built there:
        ``FeatureCache(model, upto=schedule.frozen_upto())`` after a ``step`` that returned a change.
        """
        prefix = 0
        while prefix in self._frozen_groups:
            prefix += 1
        if prefix == 0 or self._groups is None:
            return None
        last = self._groups[prefix - 1]
        # a group that is one module ends there; a group of sibling layers (a stem's conv + norm) ends at its last
        return _module_of(last) if _common_module(last) else last[-1].rpartition(".")[0] or last[-1]

    # -- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, keyed by parameter names; plain JSON-compatible values.

        Holds the groups, what the schedule froze, its position, its history, the optimizer's group layout
        (parameter names and scalar hyperparameters per group) and the schedule's own state.
        """
        model = self._model_ref() if self._model_ref else None
        optimizer = self._optimizer_ref() if self._optimizer_ref else None
        layout = _optim.layout(optimizer, model) if optimizer is not None and model is not None else None
        return {"schedule": type(self).__name__, "version": 1, "groups": self._groups,
                "frozen": self._ordered(self._mine), "frozen_groups": sorted(self._frozen_groups),
                "epoch": self._epoch, "step": self._step, "total_steps": self.total_steps,
                "history": [c.to_dict() for c in self.history], "optimizer_layout": layout,
                "state": self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`. The model and optimizer are brought back by :meth:`restore` (called by the
        next ``step`` if you do not call it yourself); call it *before* ``optimizer.load_state_dict``.

        Raises:
            FrostlineError: the state belongs to another schedule class.
        """
        if state.get("schedule") != type(self).__name__:
            raise FrostlineError(f"this checkpoint holds the state of a {state.get('schedule')!r} schedule, "
                                 f"not of a {type(self).__name__}")
        self._pending = dict(state)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Apply a loaded state: re-freeze what the schedule had frozen and give ``optimizer`` the checkpointed
        group layout (by parameter name), so that ``optimizer.load_state_dict`` of the same checkpoint fits.

        Raises:
            FrostlineError: the checkpoint names parameters the model does not have.
        """
        state, self._pending = self._pending, None
        if state is None:
            return
        self._groups = state["groups"] or self._resolve(model)
        self.history = [Change.from_dict(c) for c in state["history"]]
        self._epoch, self._step = state["epoch"], state["step"]
        if self.total_steps is None:
            self.total_steps = state.get("total_steps")
        self._load_extra_state(state.get("state", {}))
        self._claim(model)  # the resuming script may have frozen them again: the checkpoint's state wins
        self._started = True
        self._set_frozen(model, set(state["frozen"]))
        self._frozen_groups = frozenset(state["frozen_groups"])
        if optimizer is not None and state.get("optimizer_layout") is not None:
            _optim.apply_layout(optimizer, model, state["optimizer_layout"])
        self._remember(model, optimizer)
        log.info("%s restored at epoch %s, step %s: %d tensors frozen", type(self).__name__, self._epoch,
                 self._step, len(self._mine))

    # -- internals ----------------------------------------------------------------------------------------------
    def _resolve(self, model: nn.Module) -> list[list[str]]:
        if self._group_specs is None:
            groups = layer_groups(model)
        else:
            groups = select_each(model, self._group_specs)
        seen: dict[str, int] = {}
        for i, group in enumerate(groups):
            for name in group:
                if name in seen:
                    raise FrostlineError(f"{name!r} is in group {seen[name]} and group {i}; each parameter may be "
                                         "in one group only")
                seen[name] = i
        if not groups:
            raise FrostlineError(f"{type(self).__name__} found no parameters to schedule")
        return groups

    def _claim(self, model: nn.Module) -> int:
        """Take over what the explicit groups name and the user froze fully before this schedule started; the
        number taken over. Derived groups (``groups=None``) take nothing: the user's freeze stays theirs."""
        if self._group_specs is None:
            return 0
        tensors, partials = dict(named_logical_parameters(model)), partials_by_name(model)
        claimed = [n for g in self.groups for n in g if n not in self._mine and n in tensors
                   and not tensors[n].requires_grad and n not in partials]
        if claimed:
            self._mine |= set(claimed)
            log.info("%s takes over %d tensors frozen before it (its spec names them), e.g. %s: it unfreezes them "
                     "when its plan says so", type(self).__name__, len(claimed), claimed[:3])
        return len(claimed)

    def _apply(self, model: nn.Module, plan: Plan, epoch: int | None, step: int | None) -> Change:
        before = set(self._mine)
        target = {n for i in plan.frozen for n in self.groups[i]}
        self._set_frozen(model, target)
        moved = before ^ self._mine
        touched = sorted(set(plan.frozen ^ self._frozen_groups)
                         | {i for i, g in enumerate(self.groups) if any(n in moved for n in g)})
        self._frozen_groups = plan.frozen
        kept, kept_partial = self._kept(model, target)
        return Change(epoch, step, frozen=self._ordered(self._mine - before),
                      unfrozen=self._ordered(before - self._mine),
                      groups=[self._labels()[i] for i in touched], reason=plan.reason,
                      kept=kept, kept_partial=kept_partial)

    def _kept(self, model: nn.Module, target: set[str]) -> tuple[list[str], list[str]]:
        """What the user froze in this schedule's groups and it leaves as it is: fully frozen ones the plan
        trains (not its own to unfreeze), and partially frozen ones (left to their strategy)."""
        tensors, partials = dict(named_logical_parameters(model)), partials_by_name(model)
        names = [n for g in self.groups for n in g]
        partial = [n for n in names if n in partials]
        kept = [n for n in names if n not in target and n not in self._mine and n in tensors
                and not tensors[n].requires_grad and n not in partials]
        return kept, partial

    def _set_frozen(self, model: nn.Module, target: set[str]) -> None:
        """Make exactly ``target`` frozen by this schedule: unfreeze only what it froze itself or took over
        (:meth:`_claim`), and leave other parameters the user froze (or froze partially) alone."""
        tensors, partials = dict(named_logical_parameters(model)), partials_by_name(model)
        missing = sorted((target | self._mine) - tensors.keys())
        if missing:
            raise FrostlineError(f"{len(missing)} scheduled parameter(s) are not in the model, e.g. {missing[:3]}; "
                                 "was the checkpoint written for another model?")
        thaw = self._ordered(self._mine - target)
        chill = [n for n in self._ordered(target - self._mine)
                 if tensors[n].requires_grad and n not in partials]
        if thaw:
            unfreeze(model, thaw)
        if chill:
            freeze(model, chill)
        self._mine = (self._mine & target) | set(chill)

    def _lr_by_param(self, factors: dict[int, float]) -> dict[str, tuple[str, float]]:
        """``{parameter name: (group label, factor)}`` for the trainable groups a plan gives a factor."""
        labels = self._labels()
        return {name: (labels[i], factor) for i, factor in factors.items()
                if i not in self._frozen_groups for name in self.groups[i] if name not in self._mine}

    def _labels(self) -> list[str]:
        if self._label_cache[0] is not self._groups:
            self._label_cache = (self._groups, [_module_of(g) for g in self.groups])
        return self._label_cache[1]

    def _ordered(self, names: set[str]) -> list[str]:
        if self._groups is None:
            return sorted(names)
        order = [n for g in self._groups for n in g]
        return [n for n in order if n in names]

    def _remember(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self._model_ref = weakref.ref(model)
        if optimizer is not None:
            self._optimizer_ref = weakref.ref(optimizer)

    def __repr__(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in (("epoch", self._epoch), ("step", self._step)) if v is not None)
        frozen = f"{len(self._frozen_groups)}/{len(self._groups)} groups frozen" if self._groups else "not started"
        return f"{type(self).__name__}({frozen}{', ' + where if where else ''})"


def _tensors(names: list[str]) -> str:
    return f"{len(names)} tensor stays" if len(names) == 1 else f"{len(names)} tensors stay"


def _common_module(names: list[str]) -> str:
    """The deepest module holding every name of a group (``encoder.layer.3``), or ``""``."""
    common: list[str] = []
    for level in zip(*[n.split(".")[:-1] for n in names], strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _module_of(names: list[str]) -> str:
    """A group's label: its deepest common module, or its first name's module."""
    return _common_module(names) or (names[0].rpartition(".")[0] or names[0])
