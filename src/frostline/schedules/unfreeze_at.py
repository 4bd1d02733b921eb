"""Train a head first, unfreeze the backbone at a given epoch (Lightning ``BackboneFinetuning`` semantics)."""

from __future__ import annotations

from ..selection import Spec
from ._base import Plan, Schedule
from ._registry import register

__all__ = ["UnfreezeAt"]


@register
class UnfreezeAt(Schedule):
    """Keep the parameters ``spec`` selects frozen until ``epoch``, then let them train at a lower lr.

    When they unfreeze they join the optimizer at ``lr_factor`` times the lr of the group they join
    (Lightning's ``backbone_initial_ratio_lr``). With ``warmup_epochs > 0`` their lr then grows by the same
    factor every epoch until it reaches the full lr after ``warmup_epochs`` epochs (Lightning's multiplicative
    ``lambda_func`` with ``should_align=True``); with 0 it stays at ``lr_factor`` times the lr.

    It owns what ``spec`` selects, whoever froze it first: freeze the backbone yourself (in the module's
    ``__init__``, as with Lightning's ``BackboneFinetuning``) and it still trains from ``epoch`` on (a log line
    says the schedule took it over). Partially frozen tensors in it stay as you froze them.

    Args:
        spec: what to hold back, e.g. ``"backbone"`` or ``"encoder"`` (see :func:`frostline.select`).
        epoch (int): the first epoch in which it trains.
        lr_factor (float): its lr relative to the rest when it unfreezes, in (0, 1].
        warmup_epochs (int): epochs over which that factor grows to 1.

    Example:
        >>> import torch, torch.nn as nn
        >>> from frostline.schedules import UnfreezeAt
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sched = UnfreezeAt("0", epoch=2, lr_factor=0.1)
        >>> [model[0].weight.requires_grad for e in range(3) if sched.step(model, opt, epoch=e) or True]
        [False, False, True]
        >>> [round(g["lr"], 3) for g in opt.param_groups]
        [0.1, 0.01]
    """

    unit = "epoch"

    def __init__(self, spec: Spec, epoch: int, lr_factor: float = 0.1, warmup_epochs: int = 0) -> None:
        super().__init__([spec])
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if not 0 < lr_factor <= 1:
            raise ValueError(f"lr_factor must be in (0, 1], got {lr_factor!r}")
        if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        self.epoch, self.lr_factor, self.warmup_epochs = epoch, lr_factor, warmup_epochs

    def plan(self, epoch: int | None, step: int | None) -> Plan:
        epoch = self._counter(epoch, step)
        if epoch < self.epoch:
            return Plan(frozenset({0}), reason=f"trains from epoch {self.epoch}")
        factor = self.lr_factor
        if self.warmup_epochs:  # geometric: the same multiplier each epoch, reaching 1 after warmup_epochs
            factor **= 1.0 - min((epoch - self.epoch) / self.warmup_epochs, 1.0)
        return Plan(frozenset(), {0: factor}, f"lr x{factor:.3g}")
