"""What schedules do to an optimizer besides ``frostline.optim.sync``: per-group learning-rate factors, and the
group layout by parameter name that a checkpoint needs to be loadable into a fresh optimizer."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._state import partials_by_name
from ..errors import FrostlineError
from ..optim import PARKED, sync  # the optimizer issue's public sync, never a copy of it

__all__ = ["sync", "scale_lr", "layout", "apply_layout", "track_names"]

# Keys schedules keep in a param group: the lr they scale from, and the lr they last wrote (to notice when an
# LR scheduler or the user has set a new one since, which then becomes the base).
BASE_LR, LAST_LR, GROUP = "frostline_base_lr", "frostline_lr", "frostline_group"


def _real_params(model: nn.Module, names: dict[str, Any]) -> dict[int, Any]:
    """Map each real Parameter behind logical names (a partial tensor's trainable Parameters included) to a value."""
    params, partials = dict(model.named_parameters()), partials_by_name(model)
    out: dict[int, Any] = {}
    for name, value in names.items():
        partial = partials.get(name)
        for p in partial.trainable_parameters() if partial is not None else [params[name]]:
            out[id(p)] = value
    return out


def scale_lr(optimizer: torch.optim.Optimizer, model: nn.Module, factors: dict[str, tuple[str, float]]) -> None:
    """Give each parameter named in ``factors`` (name -> (schedule group label, factor)) the lr ``base * factor``.

    A param group holding parameters of several schedule groups is split into one group per schedule group
    (hyperparameters copied; optimizer state is keyed by parameter, so nothing is lost). ``base`` is the
    group's lr when the schedule first scaled it, or the lr an LR scheduler or the user set since.
    """
    if not factors:
        return
    wanted = _real_params(model, factors)
    # split-off groups go last, so groups keep their index (LR schedulers address groups by index)
    for group in list(optimizer.param_groups):
        for part in _split(group, wanted):
            same = [g for g in optimizer.param_groups if "name" in part and g.get("name") == part["name"]]
            if same:  # an earlier split made this group already: join it
                same[0]["params"].extend(part["params"])
                if "param_names" in same[0]:
                    same[0]["param_names"].extend(part.get("param_names", []))
            else:
                optimizer.param_groups.append(part)
    for group in optimizer.param_groups:
        found = {wanted.get(id(p)) for p in group["params"]}
        entry = found.pop() if len(found) == 1 else None
        if entry is None:  # empty, mixed, or holds parameters the schedule does not manage
            if GROUP in group:  # ...that it scaled before: give the group its unscaled lr back
                group["lr"] = _unscaled(group)
                for key in (GROUP, BASE_LR, LAST_LR):
                    group.pop(key, None)
            continue
        (label, factor), base = entry, _unscaled(group)
        group[GROUP], group[BASE_LR], group["lr"] = label, base, base * factor
        group[LAST_LR] = group["lr"]


def relabel(report: Any, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Point ``report.added`` (a :class:`frostline.optim.SyncReport`) at the groups the parameters are in now:
    :func:`scale_lr` may have split them off the group :func:`frostline.optim.sync` put them in."""
    params = dict(model.named_parameters())
    label = {id(p): str(g["name"]) if "name" in g else f"group {i}"
             for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    for name in report.added:
        if name in params and id(params[name]) in label:
            report.added[name] = label[id(params[name])]


def _unscaled(group: dict[str, Any]) -> float:
    lr = float(group["lr"])
    return group[BASE_LR] if BASE_LR in group and group.get(LAST_LR) == lr else lr


def _split(group: dict[str, Any], wanted: dict[int, tuple[str, float]]) -> list[dict[str, Any]]:
    """Split ``group`` in place into one group per schedule group label (None: parameters the schedule does not
    manage) and return the new groups. ``group`` itself keeps the unmanaged part, else the part of its own
    label, so an LR scheduler addressing it by index keeps driving the same parameters."""
    parts: dict[str | None, list[int]] = {}
    for i, p in enumerate(group["params"]):
        parts.setdefault(wanted[id(p)][0] if id(p) in wanted else None, []).append(i)
    if len(parts) <= 1:
        return []
    # the original dict keeps the user's (unmanaged) parameters if any, else the part it was scaled for
    keep = None if None in parts else group.get(GROUP) if group.get(GROUP) in parts else next(iter(parts))
    template, new = dict(group), []
    for label, index in parts.items():
        part = group if label == keep else dict(template)
        part["params"] = [template["params"][i] for i in index]
        if "param_names" in template:
            part["param_names"] = [template["param_names"][i] for i in index]
        if part is group:
            continue
        part.pop(PARKED, None)  # parameters frozen out of the group return to the original group
        if label is None:
            part["lr"] = _unscaled(template)
            for key in (GROUP, BASE_LR, LAST_LR):
                part.pop(key, None)
        else:
            part[GROUP] = label
            if "name" in template:
                part["name"] = f"{template['name']}/{label}"
        new.append(part)
    return new


def _plain(value: Any) -> bool:
    """JSON-safe scalars, and lists of them (``frostline.optim`` keeps the names of parked parameters in a list)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) and not isinstance(v, (list, tuple)) for v in value)
    return value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))


def layout(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[dict[str, Any]] | None:
    """The optimizer's groups by parameter name, with their scalar hyperparameters; None when the optimizer holds
    parameters that are not in the model (then no layout can be restored by name)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        if any(id(p) not in names for p in group["params"]):
            return None
        entry = {k: (float(v) if torch.is_tensor(v) and v.numel() == 1 else v) for k, v in group.items()
                 if k not in ("params", "param_names")}
        entry = {k: v for k, v in entry.items() if _plain(v)}
        entry["params"] = [names[id(p)] for p in group["params"]]
        out.append(entry)
    return out


def apply_layout(optimizer: torch.optim.Optimizer, model: nn.Module, saved: list[dict[str, Any]]) -> None:
    """Rebuild ``optimizer.param_groups`` to a saved :func:`layout`, in place; state of parameters that are kept
    stays, state of the others is dropped. Non-scalar hyperparameters (``betas``...) come from the group of the
    same ``name`` in the optimizer, else from its first group."""
    params = dict(model.named_parameters())
    missing = sorted({n for entry in saved for n in entry["params"]} - params.keys())
    if missing:
        raise FrostlineError(f"the checkpointed optimizer layout names {len(missing)} parameter(s) the model does "
                             f"not have, e.g. {missing[:3]}")
    by_name = {g.get("name"): g for g in optimizer.param_groups if "name" in g}
    first = optimizer.param_groups[0] if optimizer.param_groups else optimizer.defaults
    groups = []
    for entry in saved:
        template = by_name.get(entry.get("name"), first)
        group = {k: v for k, v in template.items() if k not in ("params", "param_names")}
        group.update({k: v for k, v in entry.items() if k != "params"})
        group["params"] = [params[n] for n in entry["params"]]
        if "param_names" in template:
            group["param_names"] = list(entry["params"])
        groups.append(group)
    optimizer.param_groups[:] = groups
    kept = {id(p) for g in groups for p in g["params"]}
    for p in [p for p in optimizer.state if id(p) not in kept]:
        del optimizer.state[p]


NAMES = "frostline_params"  # parameter names per group, written into optimizer.state_dict() by track_names


def track_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Make ``optimizer``'s checkpoints self-describing, for trainers that load optimizer state before any
    callback can restore a schedule (the transformers ``Trainer``): ``state_dict()`` records the parameter
    names of each group, and ``load_state_dict()`` first rearranges the groups to those names.

    Idempotent per optimizer. Uses PyTorch's documented optimizer state-dict hooks; nothing is patched.
    """
    if getattr(optimizer, "_frostline_tracked", False):
        return
    import weakref

    model_ref = weakref.ref(model)

    def add_names(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        current = model_ref()
        if current is None:
            return
        names = {id(p): n for n, p in current.named_parameters()}
        for saved, group in zip(state["param_groups"], opt.param_groups, strict=False):
            if all(id(p) in names for p in group["params"]):
                saved[NAMES] = [names[id(p)] for p in group["params"]]

    def arrange(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        current = model_ref()
        saved = state["param_groups"]
        if current is not None and saved and all(NAMES in g for g in saved):
            apply_layout(opt, current, [{**{k: v for k, v in g.items() if k not in ("params", NAMES)},
                                         "params": g[NAMES]} for g in saved])

    optimizer.register_state_dict_post_hook(add_names)
    optimizer.register_load_state_dict_pre_hook(arrange)
    optimizer._frostline_tracked = True  # type: ignore[attr-defined]
