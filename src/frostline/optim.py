"""Optimizers over exactly the trainable parameters, and keeping a live optimizer in step with (un)freezing.

PyTorch only promises that a parameter whose ``.grad`` is None is left alone by ``step()``. A frozen parameter
kept in an optimizer moves as soon as its grad is zeros instead of None (momentum, weight decay: research P1), so
frostline keeps frozen parameters out of optimizers altogether: :func:`param_groups` and :func:`optimizer` build
over trainable parameters only, and :func:`sync` takes parameters out (freeing their state) or puts them in when
the trainable set changes, without rebuilding the optimizer.

>>> import torch, torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
>>> _ = frostline.freeze(model, "0")
>>> opt = frostline.optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
>>> [(g["name"], g["param_names"]) for g in opt.param_groups]
[('no_decay', ['1.weight', '1.bias', '2.bias']), ('decay', ['2.weight'])]
>>> print(frostline.sync(opt, frostline.unfreeze(model, "0")))
added 2 (0.weight to decay, 0.bias to no_decay)
"""

from __future__ import annotations

import fnmatch
import inspect
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from ._state import named_logical_parameters, partials_by_name
from ._table import human_bytes
from .errors import FrostlineError
from .groups import layer_groups
from .partial._carry import carried_state, storing
from .selection import Spec, select

__all__ = ["param_groups", "optimizer", "sync", "SyncReport"]

_NORMS = tuple(t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                           getattr(nn, "RMSNorm", None)) if t is not None)
_Optimizer = TypeVar("_Optimizer", bound=torch.optim.Optimizer)  # optimizer() returns what the class builds
_RULE = "_frostline_rule"  # optimizer attribute set by optimizer(): how sync places parameters that start training
PARKED = "frostline_parked"  # group key: logical names of parameters that left this group when they were frozen
# Per optimizer: the model parameters it was built with or synced to (id -> weakref, logical name). A parameter that
# was in the model and no longer is (a partial strategy's storage after unfreezing) leaves; a foreign one stays.
_SEEN: weakref.WeakKeyDictionary[torch.optim.Optimizer, dict[int, tuple[weakref.ref, str]]] = \
    weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Rule:
    """The grouping :func:`param_groups` applies; kept on optimizers built by :func:`optimizer` for :func:`sync`."""

    lr: float
    weight_decay: float
    no_decay: tuple[str, ...]
    layer_decay: float | None
    lr_mult: Mapping[Any, float]

    def place(self, model: nn.Module, logical: dict[int, str] | None = None
              ) -> dict[int, tuple[nn.Parameter, str, str, dict[str, Any]]]:
        """For each trainable Parameter (by id, in model order): it, its name, group name, group hyperparameters.
        ``logical``: :func:`_logical_names` of the model, when the caller has it already."""
        logical = _logical_names(model) if logical is None else logical
        modules = dict(model.named_modules(remove_duplicate=False))  # owners by name, for no_decay's class test
        depth = {n: i for i, group in enumerate(layer_groups(model)) for n in group} if self.layer_decay else {}
        n_layers = 1 + max(depth.values(), default=0)
        mult: dict[str, float] = {}
        for spec, factor in self.lr_mult.items():
            for selected in select(model, spec):
                mult[selected] = mult.get(selected, 1.0) * factor
        out = {}
        for real, param in model.named_parameters():
            if not param.requires_grad:
                continue
            name = logical.get(id(param))
            if name is None or (self.layer_decay and name not in depth):
                raise FrostlineError(f"{real} trains but is no parameter frostline knows: a partial-freezing "
                                     "strategy must list it in trainable_parameters()")
            scale, parts = mult.get(name, 1.0), []
            if self.layer_decay:
                scale *= self.layer_decay ** (n_layers - 1 - depth[name])
                parts.append(f"depth{depth[name]}")
            if mult.get(name, 1.0) != 1.0:
                parts.append(f"lr_x{mult[name]:g}")
            decays = self.weight_decay > 0 and not _exempt(modules[name.rpartition(".")[0]], name, self.no_decay)
            if self.weight_decay > 0:
                parts.append("decay" if decays else "no_decay")
            hyper = {"lr": self.lr * scale, "weight_decay": self.weight_decay if decays else 0.0}
            out[id(param)] = (param, real, "/".join(parts) or "default", hyper)
        return out


def _logical_names(model: nn.Module) -> dict[int, str]:
    """Map each real Parameter (a partial tensor's internals included) to the logical name users know it by."""
    out: dict[int, str] = {}
    partials = partials_by_name(model)
    for name, tensor in named_logical_parameters(model):
        partial = partials.get(name)
        for param in partial.trainable_parameters() if partial is not None else [tensor]:
            out.setdefault(id(param), name)
    return out


def _exempt(module: nn.Module, name: str, patterns: tuple[str, ...]) -> bool:
    """True when ``name`` (a parameter of ``module``) gets no weight decay: a glob pattern matches the full name, or
    a plain word is part of a dotted component of the name or of the owning module's class name; "norm" also
    matches torch norm layers."""
    words = [part.lower() for part in name.split(".")] + [type(module).__name__.lower()]
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            if fnmatch.fnmatchcase(name, pattern):
                return True
        elif any(pattern.lower() in word for word in words) or (pattern == "norm" and isinstance(module, _NORMS)):
            return True
    return False


def _rule(lr: float, weight_decay: float, no_decay: Sequence[str], layer_decay: float | None,
          lr_mult: Mapping[Spec, float] | None) -> _Rule:
    for label, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{label} must be a number >= 0, got {value!r}")
    if isinstance(no_decay, str) or not all(isinstance(p, str) for p in no_decay):
        raise TypeError(f"no_decay must be a sequence of name patterns, e.g. ('bias', 'norm'), got {no_decay!r}")
    if layer_decay is not None and (isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float))
                                    or not 0 < layer_decay <= 1):
        raise ValueError(f"layer_decay must be a number in (0, 1] (timm/BEiT use 0.65-0.75; 1 means no decay) or "
                         f"None, got {layer_decay!r}")
    for spec, factor in (lr_mult or {}).items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0:
            raise ValueError(f"lr_mult[{spec!r}] must be a number >= 0 (the factor on lr), got {factor!r}")
    return _Rule(float(lr), float(weight_decay), tuple(no_decay), layer_decay, dict(lr_mult or {}))


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, no_decay: Sequence[str] = ("bias", "norm"),
                 layer_decay: float | None = None, lr_mult: Mapping[Spec, float] | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups over the trainable parameters of ``model``; never changes ``requires_grad``.

    Args:
        model (nn.Module): the model, frozen as you want it (partial tensors contribute their trainable Parameters).
        lr (float): the base learning rate.
        weight_decay (float): weight decay for every parameter that ``no_decay`` does not exempt.
        no_decay (Sequence[str]): parameters without weight decay: a plain word matches when it is part of a dotted
            component of the name or of the owning module's class name (case-insensitive; ``"norm"`` also matches
            every torch normalisation layer by type), a pattern with ``*?[`` is a glob over the full name.
        layer_decay (float): timm/BEiT layer-wise decay over :func:`frostline.layer_groups`: group ``i`` of ``n``
            gets ``lr * layer_decay ** (n - 1 - i)`` (the head keeps ``lr``).
        lr_mult (dict): ``{spec: factor}``, discriminative rates (``{"backbone": 0.1}``); a parameter several
            specs select gets the product of their factors.

    Returns:
        list[dict]: groups in model order, each with ``name`` (e.g. ``"depth3/lr_x0.1/decay"``: layer group 3,
        lr factor 0.1, with weight decay; ``"default"`` when nothing differs), ``params``, ``param_names``
        (PyTorch's own key, kept in ``optimizer.state_dict()``), ``lr`` and ``weight_decay``.

    Raises:
        SelectionError: an ``lr_mult`` spec selects nothing.
        ValueError / TypeError: a negative or non-numeric rate, or ``no_decay`` given as one string.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> [(g["name"], g["lr"]) for g in frostline.param_groups(model, lr=1.0, layer_decay=0.5)]
        [('depth0', 0.5), ('depth1', 1.0)]
    """
    return _build(_rule(lr, weight_decay, no_decay, layer_decay, lr_mult), model)


def _build(rule: _Rule, model: nn.Module) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for param, real, name, hyper in rule.place(model).values():
        group = groups.setdefault(name, {"name": name, "params": [], "param_names": [], **hyper})
        group["params"].append(param)
        group["param_names"].append(real)
    return list(groups.values())


def optimizer(model: nn.Module, optimizer_cls: Callable[..., _Optimizer], lr: float | None = None,
              weight_decay: float | None = None, no_decay: Sequence[str] = ("bias", "norm"),
              layer_decay: float | None = None, lr_mult: Mapping[Spec, float] | None = None,
              **kwargs: Any) -> _Optimizer:
    """Build ``optimizer_cls`` over :func:`param_groups` (same arguments); ``kwargs`` go to the optimizer.

    ``lr`` and ``weight_decay`` default to the class's own defaults (AdamW: 1e-3 and 0.01, SGD: 1e-3 and 0); a
    class without weight decay gets none. The optimizer remembers the grouping, so :func:`sync` puts parameters
    that start training later into the group this rule gives them (creating it if needed).

    Raises:
        FrostlineError: every parameter is frozen, so there is nothing to optimize.
        TypeError: ``optimizer_cls`` is an optimizer instance (or not callable) instead of a class; ``lr`` is
            missing for a class without a default one; ``weight_decay > 0`` for a class that has no weight decay.

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "0")
        >>> opt = frostline.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9)
        >>> opt.param_groups[0]["param_names"]
        ['1.weight', '1.bias']
    """
    if isinstance(optimizer_cls, torch.optim.Optimizer) or not callable(optimizer_cls):
        given = (f"an instance of {type(optimizer_cls).__name__}" if isinstance(optimizer_cls, torch.optim.Optimizer)
                 else repr(optimizer_cls))
        raise TypeError("frostline.optimizer builds the optimizer itself, over the trainable parameters only: pass "
                        f"the optimizer class, e.g. torch.optim.AdamW (got {given}); to keep an optimizer you built, "
                        "call frostline.sync(optimizer, model) after each freeze instead")
    cls_name = getattr(optimizer_cls, "__name__", repr(optimizer_cls))
    if lr is None:
        lr = _default(optimizer_cls, "lr")
        if lr is None:
            raise TypeError(f"{cls_name} has no default learning rate; pass lr=...")
    if weight_decay is None:  # the class's own default, so frostline.optimizer(m, AdamW) decays as AdamW(...) does
        weight_decay = _default(optimizer_cls, "weight_decay") or 0.0
    rule = _rule(lr, weight_decay, no_decay, layer_decay, lr_mult)
    groups = _build(rule, model)
    if not groups:
        raise FrostlineError("every parameter of the model is frozen, so there is nothing to optimize; unfreeze "
                             "some parameters first (frostline.unfreeze) or skip the optimizer")
    if rule.weight_decay and not _accepts(optimizer_cls, "weight_decay"):
        raise TypeError(f"{cls_name} has no weight decay; pass weight_decay=0 (or choose AdamW/SGD)")
    built = optimizer_cls(groups, lr=lr, **kwargs)
    setattr(built, _RULE, rule)
    _remember(built, [p for group in groups for p in group["params"]], _logical_names(model))
    return built


def _remember(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], logical: dict[int, str]) -> None:
    seen = _SEEN.setdefault(optimizer, {})
    seen.update((id(p), (weakref.ref(p), logical[id(p)])) for p in params if id(p) in logical)


def _name_when_seen(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> str | None:
    """The logical name ``param`` had when it was last seen in the model, or None if it never was."""
    ref, name = _SEEN.get(optimizer, {}).get(id(param), (None, None))
    return name if ref is not None and ref() is param else None


def _default(cls: Any, argument: str) -> Any:
    """The default ``cls`` declares for ``argument``, or None when it declares none (or has no such argument)."""
    try:
        param = inspect.signature(cls).parameters.get(argument)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is param.empty else param.default


def _accepts(cls: Callable[..., Any], argument: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return argument in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@dataclass
class SyncReport:
    """What :func:`sync` changed (parameter names as ``named_parameters`` gives them); falsy when nothing did.

    ``added`` maps each parameter that joined to the name of its group; ``removed`` lists those that left;
    ``state_freed`` those whose optimizer state was dropped (``freed_bytes`` in all); ``state_kept`` maps each
    partially frozen tensor's old storage that left to the Parameter that took its state over (the state of the
    elements that still train; newly frozen elements' state is freed); ``groups_added`` the names of groups created.
    """

    added: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    state_freed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    groups_added: list[str] = field(default_factory=list)
    state_kept: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.state_freed or self.state_kept)

    def __str__(self) -> str:
        parts = []
        if self.added:
            per_group: dict[str, int] = {}
            for group in self.added.values():
                per_group[group] = per_group.get(group, 0) + 1
            def to(group: str) -> str:  # a group sync created is named as such: it is no group the user had
                return f"new group {group!r}" if group in self.groups_added else group

            where = ", ".join(f"{n} to {to(g)}" for g, n in per_group.items())
            if len(self.added) <= 3:
                where = ", ".join(f"{p} to {to(g)}" for p, g in self.added.items())
            parts.append(f"added {len(self.added)} ({where})")
        if self.removed:
            parts.append(f"removed {len(self.removed)}")
        if self.state_freed:
            parts.append(f"freed the state of {len(self.state_freed)} ({human_bytes(self.freed_bytes)})")
        if self.state_kept:
            moves = ", ".join(f"{old} -> {new}" for old, new in self.state_kept.items())
            parts.append(f"kept the state of {len(self.state_kept)} for what still trains ({moves})")
        return ", ".join(parts) or "no change"


def sync(optimizer: torch.optim.Optimizer, model: nn.Module, *, lr_factor: float | None = None) -> SyncReport:
    """Bring ``optimizer`` in line with what trains in ``model`` now, in place; returns what changed.

    - Parameters that no longer train (frozen, or gone from the model, like a partial-freezing strategy's storage
      after unfreezing) leave their group and their optimizer state is freed; so is state left behind for
      parameters in no group.
    - Parameters that train but are in no group join one: the group they left when frozen, else the group
      the optimizer's :func:`param_groups` rule gives them (optimizers built by :func:`optimizer`), else group 0.
      With ``lr_factor`` they go to a new group instead, with that group's hyperparameters and ``lr * lr_factor``
      (Lightning's ``unfreeze_and_add_param_group``), named ``"<group>/unfrozen"``.
    - Parameters that stay keep their state; groups are never removed or reordered (an emptied group stays,
      empty), so LR schedulers that address groups by index keep working. Calling it twice changes nothing.
    - A partially frozen tensor whose storage changed (rows frozen or unfrozen with delta/split, or whole again)
      keeps the state of the elements that train before and after, as mask does: the new storage takes it over
      (``state_kept``); newly frozen elements' state is freed; newly trainable ones start from the state the
      optimizer gives an element that has only seen zero gradients. Until ``sync`` runs, an optimizer holding the
      old storage refuses to step.

    Parameters the optimizer holds that were never in ``model`` and still require grad (a loss module's) stay.
    ``param_names`` (when the optimizer has them) follow every change, so ``state_dict()``/``load_state_dict()``
    keep working and groups can be matched by parameter name.

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> print(frostline.sync(opt, frostline.freeze(model, "0")))
        removed 2, freed the state of 2 (24 B)
        >>> print(frostline.sync(opt, model))
        no change
    """
    if lr_factor is not None and (isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float))
                                  or not lr_factor >= 0):
        raise ValueError(f"lr_factor must be a number >= 0 or None, got {lr_factor!r}")
    report = SyncReport()
    real = {id(p): n for n, p in model.named_parameters()}
    stored = _logical_names(model)  # the Parameters that store logical tensors; logical adds the tensors themselves
    logical = _all_logical_names(model, stored)
    known = set(real.values()) | set(logical.values())
    carried: dict[int, tuple[torch.Tensor, dict[str, Any], str, int]] = {}  # successor id -> it, state, from, order
    for group in optimizer.param_groups:
        _leave(optimizer, group, real, logical, known, report, carried)
        _remember(optimizer, group["params"], logical)
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for param in [p for p in optimizer.state if torch.is_tensor(p) and id(p) not in grouped]:
        if not (param.requires_grad and id(param) in real):  # orphaned state nothing will ever use
            _free(optimizer, param, real.get(id(param), logical.get(id(param), "<not in the model>")), report)
    fresh = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
    if fresh:
        _join(optimizer, model, fresh, logical, stored, lr_factor, report)
        _remember(optimizer, [p for _, p in fresh], logical)
    _hand_over(optimizer, carried, real, report)
    return report


def _all_logical_names(model: nn.Module, stored: dict[int, str]) -> dict[int, str]:
    out = dict(stored)
    for name, tensor in named_logical_parameters(model):
        out.setdefault(id(tensor), name)
    return out


def _leave(optimizer: torch.optim.Optimizer, group: dict[str, Any], real: dict[int, str], logical: dict[int, str],
           known: set[str], report: SyncReport, carried: dict[int, tuple]) -> None:
    recorded = group.get("param_names")
    keep = []
    for k, param in enumerate(group["params"]):
        recorded_name = recorded[k] if recorded else None
        seen_as = _name_when_seen(optimizer, param)
        now = storing(param)  # for a partial tensor's old storage: what stores that tensor now
        # gone from the model: another tensor now holds its name, it was in the model when last seen, or it is a
        # partial tensor's old storage
        gone = id(param) not in real and (recorded_name in known or seen_as is not None or now is not None)
        if param.requires_grad and not gone:
            keep.append(k)
            continue
        name = logical.get(id(param)) or seen_as or recorded_name or (logical.get(id(now)) if now is not None else None)
        label = real.get(id(param)) or recorded_name or name or f"<{tuple(param.shape)} tensor>"
        report.removed.append(label)
        if name is not None:  # whatever trains under this name next comes back to this group
            group.setdefault(PARKED, []).append(name)
        if not _carry_over(optimizer, group, param, label, carried, report):
            _free(optimizer, param, label, report)
    if len(keep) != len(group["params"]):
        group["params"] = [group["params"][k] for k in keep]
        if recorded:
            group["param_names"] = [recorded[k] for k in keep]


def _free(optimizer: torch.optim.Optimizer, param: torch.Tensor, name: str, report: SyncReport) -> None:
    state = optimizer.state.pop(param, None)
    if state:
        report.state_freed.append(name)
        report.freed_bytes += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))


def _carry_over(optimizer: torch.optim.Optimizer, group: dict[str, Any], param: torch.Tensor, label: str,
                carried: dict[int, tuple], report: SyncReport) -> bool:
    """Set aside the state of a partial tensor's old storage for the Parameter that stores the tensor now; of two
    old storages of one tensor, the later one's. False when there is nothing to carry (then it is freed)."""
    found = carried_state(optimizer, group, param)
    if found is None:
        return False
    successor, state, order = found
    earlier = carried.get(id(successor))
    if earlier is not None and earlier[3] > order:
        return False
    if earlier is not None:
        report.state_freed.append(earlier[2])
    carried[id(successor)] = (successor, state, label, order)
    optimizer.state.pop(param, None)
    return True


def _hand_over(optimizer: torch.optim.Optimizer, carried: dict[int, tuple], real: dict[int, str],
               report: SyncReport) -> None:
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for successor, state, label, _ in carried.values():
        if id(successor) in grouped and not optimizer.state.get(successor):
            optimizer.state[successor] = state
            report.state_kept[label] = real.get(id(successor), label)
        else:  # it had state of its own already, or does not join this optimizer
            report.state_freed.append(label)


def _join(optimizer: torch.optim.Optimizer, model: nn.Module, fresh: list[tuple[str, nn.Parameter]],
          logical: dict[int, str], stored: dict[int, str], lr_factor: float | None, report: SyncReport) -> None:
    rule: _Rule | None = getattr(optimizer, _RULE, None)
    placed = rule.place(model, stored) if rule is not None else {}
    named = {g["name"]: g for g in optimizer.param_groups if "name" in g}
    parked = {n: g for g in optimizer.param_groups for n in g.get(PARKED, ())}
    # target: an existing group (by id) or a group the rule describes but the optimizer lacks (by name)
    targets: dict[Any, tuple[dict[str, Any] | None, str, dict[str, Any], list[tuple[str, nn.Parameter]]]] = {}
    returning: dict[int, tuple[dict[str, Any], list[str]]] = {}  # names to take off each group's parked list
    for real_name, param in fresh:
        name = logical.get(id(param), real_name)
        if name in parked:
            group = parked[name]
            returning.setdefault(id(group), (group, []))[1].append(name)
            hyper, label = {}, _label(optimizer, group)
        elif id(param) in placed and placed[id(param)][2] not in named:
            group, label, hyper = None, placed[id(param)][2], placed[id(param)][3]
        else:
            group = named[placed[id(param)][2]] if id(param) in placed else optimizer.param_groups[0]
            hyper, label = {}, _label(optimizer, group)
        key = id(group) if group is not None else label
        targets.setdefault(key, (group, label, hyper, []))[3].append((real_name, param))
    for group, names in returning.values():
        _unpark(group, names)
    with_names = "param_names" in optimizer.param_groups[0]
    for group, label, hyper, members in targets.values():
        if group is not None and lr_factor is None:
            group["params"].extend(p for _, p in members)
            if "param_names" in group:
                group["param_names"].extend(n for n, _ in members)
        else:
            template = {k: v for k, v in (group or hyper).items()
                        if k not in ("params", "param_names", "name", "initial_lr") and not k.startswith("frostline")}
            if lr_factor is not None:
                base_lr = template.get("lr", optimizer.defaults.get("lr"))
                if base_lr is None:
                    raise FrostlineError(f"sync(lr_factor={lr_factor}) scales the lr of the parameters that join as "
                                         f"{label!r}, but neither their group nor {type(optimizer).__name__}'s "
                                         "defaults hold an lr; give the optimizer an lr, or pass no lr_factor")
                template["lr"] = base_lr * lr_factor
                label = _unique(optimizer, f"{label}/unfrozen")
            new = {**template, "name": label, "params": [p for _, p in members]}
            if "initial_lr" in optimizer.param_groups[0]:  # an LR scheduler was made: it resumes only with one
                new["initial_lr"] = new["lr"]
            if with_names:
                new["param_names"] = [n for n, _ in members]
            optimizer.add_param_group(new)
            report.groups_added.append(label)
        report.added.update((n, label) for n, _ in members)


def _unpark(group: dict[str, Any], names: list[str]) -> None:
    """Take ``names`` off ``group``'s parked list (one entry each) in one pass, and the list when it is empty:
    ``list.remove`` per name costs the list's length per name, and a deep model parks thousands of names."""
    leaving = Counter(names)
    kept = []
    for name in group[PARKED]:
        if leaving[name] > 0:
            leaving[name] -= 1
        else:
            kept.append(name)
    if kept:
        group[PARKED][:] = kept
    else:
        del group[PARKED]


def _label(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> str:
    if "name" in group:
        return str(group["name"])
    return f"group {next(i for i, g in enumerate(optimizer.param_groups) if g is group)}"


def _unique(optimizer: torch.optim.Optimizer, base: str) -> str:
    taken = {g.get("name") for g in optimizer.param_groups}
    candidate, i = base, 2
    while candidate in taken:
        candidate, i = f"{base}{i}", i + 1
    return candidate
