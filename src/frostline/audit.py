"""Find the ways a "frozen" parameter can still move, and a trainable one can silently not train.

Each check is one small function over the model, the optimizer(s) and optionally a loss; each finding says what
is wrong, for which parameters, and how to fix it. ``str()`` of the result is a table.

>>> import torch, torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
>>> for p in model[:2].parameters():
...     p.requires_grad = False          # plain PyTorch freezing: BatchNorm still in train mode, all in the optimizer
>>> [f.code for f in frostline.audit(model, opt)]
['frozen-in-optimizer', 'frozen-norm-in-train-mode']
>>> _ = frostline.freeze(model, ["0", "1"]); _ = frostline.sync(opt, model)
>>> frostline.audit(model, opt)
[]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ._state import FreezeState
from ._table import WIDTH, brief, human_bytes, paragraph, render

__all__ = ["audit", "Finding", "Findings"]

Severity = Literal["error", "warning", "info"]
# Optimizer state that cannot move a parameter whose gradient is zero (torch.optim's second moments, step counts,
# Rprop's and ASGD's bookkeeping). Any other tensor state (momentum_buffer, exp_avg, an unknown optimizer's) can.
_INERT_STATE = {"step", "sum", "square_avg", "acc_delta", "grad_avg", "exp_avg_sq", "max_exp_avg_sq", "prev",
                "step_size", "eta", "mu", "ax", "mu_product"}


@dataclass
class Finding:
    """One problem: a short ``code``, a ``severity`` (error: training is not what you asked for; warning: waste
    or a trap; info: harmless now), the parameter or module ``names`` involved, a ``message`` and a ``fix``."""

    code: str
    severity: Severity
    names: list[str]
    message: str
    fix: str


class Findings(list):
    """A list of :class:`Finding`; ``str()`` renders a table followed by each message and fix, in at most 120
    columns (``.table(width=None)``: one line each)."""

    def __str__(self) -> str:
        return self.table()

    def table(self, width: int | None = WIDTH) -> str:
        """The table and each finding's message and fix, wrapped at ``width`` columns (None: one line each).

        Example:
            >>> import torch, torch.nn as nn, frostline
            >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
            >>> found = frostline.audit(model, torch.optim.AdamW(model[1].parameters(), lr=0.0))
            >>> max(len(line) for line in found.table(width=60).splitlines()) <= 60
            True
        """
        if not self:
            return "frostline audit: no findings"
        counts = {s: sum(f.severity == s for f in self) for s in ("error", "warning", "info")}
        head = ", ".join(f"{n} {s}{'s' if n > 1 else ''}" for s, n in counts.items() if n)
        rows = [[f.severity, f.code, str(len(f.names)), brief(f.names)] for f in self]
        table = render(["severity", "code", "count", "names"], rows, width=width,
                       title=f"frostline audit: {len(self)} finding{'s' if len(self) > 1 else ''} ({head})")
        details = [paragraph(f"{f.severity} {f.code}: {f.message}", width, "  ") + "\n"
                   + paragraph(f"  fix: {f.fix}", width, "       ") for f in self]
        return table + "\n\n" + "\n".join(details)


def _optimizers(optimizer) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    found = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    for opt in found:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or a list of them, got {type(opt).__name__}")
    return found


class _Context:
    """What every check needs: the model's parameters by identity and the optimizers' groups."""

    def __init__(self, model: nn.Module, optimizers: list[torch.optim.Optimizer]):
        self.model = model
        self.optimizers = optimizers
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.params = {id(p): p for p in model.parameters()}
        self.groups = [(opt, i, g) for opt in optimizers for i, g in enumerate(opt.param_groups)]
        self.grouped = {id(p) for _, _, g in self.groups for p in g["params"]}

    def name(self, param: Tensor, group: dict | None = None) -> str:
        if id(param) in self.names:
            return self.names[id(param)]
        if group is not None and "param_names" in group:
            return group["param_names"][[id(p) for p in group["params"]].index(id(param))]
        return f"<{tuple(param.shape)} tensor not in the model>"

    def label(self, opt: torch.optim.Optimizer, index: int, group: dict) -> str:
        where = f"group {index}" + (f" ({group['name']})" if "name" in group else "")
        return where if len(self.optimizers) == 1 else f"optimizer {self.optimizers.index(opt)} {where}"


def _frozen_in_optimizer(ctx: _Context) -> Iterable[Finding]:
    drifting, idle, reasons = [], [], set()
    for opt, index, group in ctx.groups:
        lr, decay = float(group.get("lr", 0.0)), float(group.get("weight_decay", 0.0) or 0.0)
        lambd = float(group.get("lambd", 0.0) or 0.0)  # ASGD shrinks every parameter it holds by lr * lambd
        for param in (p for p in group["params"] if not p.requires_grad):
            moving = [k for k, v in opt.state.get(param, {}).items() if torch.is_tensor(v) and k not in _INERT_STATE]
            why = ([f"weight decay {decay:g}"] if decay > 0 else []) + ([f"lambd {lambd:g}"] if lambd > 0 else []) + \
                ([f"momentum state ({', '.join(moving)})"] if moving else [])
            if lr > 0 and why:
                drifting.append(ctx.name(param, group))
                reasons.add(f"{ctx.label(opt, index, group)}: lr {lr:g}, {' and '.join(why)}")
            else:
                idle.append(ctx.name(param, group))
    fix = "frostline.sync(optimizer, model) takes them out and frees their state; or build the optimizer with " \
          "frostline.optimizer(model, ...)"
    if drifting:
        yield Finding("frozen-in-optimizer", "error", drifting,
                      f"{len(drifting)} frozen parameters are still in the optimizer ({'; '.join(sorted(reasons))}). "
                      "PyTorch leaves them alone only while their .grad is None: a zeroed grad "
                      "(zero_grad(set_to_none=False), a gradient mask or hook) lets weight decay and momentum "
                      "move them", fix)
    if idle:
        yield Finding("frozen-in-optimizer", "info", idle,
                      f"{len(idle)} frozen parameters are in the optimizer; nothing moves them while their gradients "
                      "are None or zero (no weight decay, no momentum state), but they hold optimizer slots",
                      fix)


def _not_in_optimizer(ctx: _Context) -> Iterable[Finding]:
    if not ctx.optimizers:
        return
    missing = [n for n, p in ctx.model.named_parameters() if p.requires_grad and id(p) not in ctx.grouped]
    if missing:
        yield Finding("not-in-optimizer", "error", missing,
                      f"{len(missing)} trainable parameters are in no optimizer group: they get gradients (compute "
                      "and memory) but never train",
                      "frostline.sync(optimizer, model) adds them (lr_factor=... for a lower rate); or freeze them")


def _zero_lr(ctx: _Context) -> Iterable[Finding]:
    for opt, index, group in ctx.groups:
        trainable = [ctx.name(p, group) for p in group["params"] if p.requires_grad]
        if trainable and float(group.get("lr", 1.0)) == 0.0:
            yield Finding("lr-zero", "warning", trainable,
                          f"{ctx.label(opt, index, group)} has lr 0: its {len(trainable)} trainable parameters pay "
                          "for weight gradients and optimizer updates but never change (fine for a warmup "
                          "that starts at 0)",
                          "freeze them instead: frostline.freeze(model, names), then frostline.sync(optimizer, model)")


def _train_mode_in_frozen_regions(ctx: _Context) -> Iterable[Finding]:
    norms, dropouts = [], []
    state = FreezeState(ctx.model)
    for module_name, module in state.modules.items():
        if not (module.training and state.frozen[module_name]):
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd):
            dropouts.append(module_name)
        elif isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            norms.append(module_name)
    fix = "freeze with frostline.freeze(model, spec) (eval_frozen=True, the default, keeps them in eval); or " \
          "call .eval() on them after every model.train()"
    if norms:
        yield Finding("frozen-norm-in-train-mode", "error", norms,
                      f"{len(norms)} normalisation layers with frozen parameters run in train mode: every forward "
                      "updates their running statistics, so the frozen part of the model drifts", fix)
    if dropouts:
        yield Finding("frozen-dropout-in-train-mode", "warning", dropouts,
                      f"{len(dropouts)} dropout layers inside frozen regions are active: the frozen part computes "
                      "different features every step (not deterministic, cannot be cached)", fix)


def _stale_grad(ctx: _Context) -> Iterable[Finding]:
    stale = [(n, p) for n, p in ctx.model.named_parameters() if not p.requires_grad and p.grad is not None]
    if not stale:
        return
    stepped = {id(p) for _, _, g in ctx.groups if float(g.get("lr", 0.0)) > 0 for p in g["params"]}
    moving = any(id(p) in stepped for _, p in stale)
    yield Finding("stale-grad", "error" if moving else "warning", [n for n, _ in stale],
                  f"{len(stale)} frozen parameters still hold a .grad from before they were frozen"
                  + (": the optimizer applies it again at every step, so they move" if moving else
                     ": it wastes memory, and any optimizer holding them would apply it"),
                  "set .grad = None on them (frostline.freeze does) and use zero_grad(set_to_none=True)")


def _no_gradient(ctx: _Context, loss: Tensor) -> Iterable[Finding]:
    reached = _leaves(loss)
    unreached = [n for n, p in ctx.model.named_parameters() if p.requires_grad and id(p) not in reached]
    if unreached:
        why = "" if loss.requires_grad else " (the loss does not require grad: computed under no_grad?)"
        yield Finding("no-gradient", "warning", unreached,
                      f"{len(unreached)} trainable parameters get no gradient from this loss{why}: they never train "
                      "but hold memory and optimizer slots",
                      "freeze them (frostline.freeze), or check that the forward pass and the loss use them")


def _leaves(loss: Tensor) -> set[int]:
    """Ids of the leaf tensors ``loss`` reaches through its autograd graph (walks the graph, computes nothing)."""
    reached = {id(loss)} if loss.requires_grad and loss.grad_fn is None else set()
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it writes .grad to
        if variable is not None:
            reached.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return reached


def _stale_state(ctx: _Context) -> Iterable[Finding]:
    names, size = [], 0
    for opt in ctx.optimizers:
        for param, state in opt.state.items():
            if torch.is_tensor(param) and (not param.requires_grad or id(param) not in ctx.grouped):
                names.append(ctx.name(param))
                size += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    if names:
        yield Finding("stale-optimizer-state", "warning", names,
                      f"the optimizer keeps {human_bytes(size)} of state for {len(names)} parameters that no longer "
                      "train (or are in no group); if they train again they resume from stale moments",
                      "frostline.sync(optimizer, model) frees it")


def _duplicates(ctx: _Context) -> Iterable[Finding]:
    where: dict[int, list[str]] = {}
    for opt, index, group in ctx.groups:
        for param in group["params"]:
            where.setdefault(id(param), []).append(ctx.label(opt, index, group))
    doubled = {i: places for i, places in where.items() if len(places) > 1}
    if doubled:
        names = [ctx.names.get(i, "<tensor not in the model>") for i in doubled]
        example = f"{names[0]} is in {', '.join(doubled[next(iter(doubled))])}"
        yield Finding("duplicate-in-optimizer", "error", names,
                      f"{len(names)} parameters are listed more than once in the optimizer ({example}): each step "
                      "updates them once per listing",
                      "keep each parameter in one group; frostline.optimizer(model, ...) builds disjoint groups")


def audit(model: nn.Module, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
          loss: Tensor | None = None) -> Findings:
    """Check a model (and its optimizer, and a loss) for the ways freezing silently goes wrong.

    Findings (``code``): ``frozen-in-optimizer`` (frozen parameters an optimizer could still move through weight
    decay or momentum), ``not-in-optimizer`` (trainable but never stepped), ``lr-zero`` (a group with lr 0:
    full compute for nothing), ``frozen-norm-in-train-mode`` / ``frozen-dropout-in-train-mode`` (running
    statistics drift, frozen features change), ``stale-grad`` (a frozen parameter still holds a gradient),
    ``no-gradient`` (the loss never reaches a trainable parameter), ``stale-optimizer-state``,
    ``duplicate-in-optimizer``.

    Args:
        model (nn.Module): the model, in the mode it trains in (``model.train()``).
        optimizer: an optimizer, or a list of them (all of them together must cover the trainable parameters).
        loss (Tensor): a loss from one forward pass; its autograd graph is walked (nothing is computed), so it
            works before or after ``backward()``. Reentrant activation checkpointing hides parameters from it.

    Returns:
        Findings: a list of :class:`Finding`, errors first; empty for a clean set-up; ``str()`` is a table.

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> opt = torch.optim.AdamW(model[1].parameters(), lr=0.0)
        >>> print(frostline.audit(model, opt).pop().code)
        lr-zero
    """
    if loss is not None and not isinstance(loss, Tensor):
        raise TypeError(f"loss must be the Tensor a forward pass returned, got {type(loss).__name__}")
    ctx = _Context(model, _optimizers(optimizer))
    found: list[Finding] = []
    for check in (_frozen_in_optimizer, _not_in_optimizer, _duplicates, _zero_lr, _train_mode_in_frozen_regions,
                  _stale_grad, _stale_state):
        found.extend(check(ctx))
    if loss is not None:
        found.extend(_no_gradient(ctx, loss))
    rank = {"error": 0, "warning": 1, "info": 2}
    return Findings(sorted(found, key=lambda f: rank[f.severity]))
