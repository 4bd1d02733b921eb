"""Progressive freezing (FreezeOut: Brock, Lim, Ritchie and Weston, "FreezeOut: Accelerate Training by
Progressively Freezing Layers", arXiv:1706.04983, 2017)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from ._base import Plan, Schedule
from ._registry import register

__all__ = ["ProgressiveFreeze"]

_SCALES = {"linear": lambda t: t, "squared": lambda t: t * t, "cubic": lambda t: t ** 3}


@register
class ProgressiveFreeze(Schedule):
    """Group ``i`` of ``L`` trains until step ``t_i * total_steps``, its lr annealed to zero along a cosine
    before, then freezes; the frozen groups always form a prefix, so they drop out of backward entirely.

    As in the paper's code, ``t_i = scale(t0 + (1 - t0) * i / (L - 1))`` with ``scale`` linear, squared or cubic
    (``t0`` is taken *before* scaling: cubic with ``t0=0.5`` stops the first group at 12.5% of training), so the
    top group trains to the end, and group ``i``'s lr at step ``s`` is
    ``0.5 * lr * (1 + cos(pi * s / (t_i * total_steps)))``, times ``1 / t_i`` with ``scale_lr=True`` (the
    paper's "scaled" variant: every group travels about as far). This replaces any other lr schedule for the
    groups; use a constant lr alongside it to match the paper.

    Args:
        t0 (float): where the first group stops, in (0, 1], before scaling.
        schedule (str): ``"cubic"`` (the paper's default), ``"squared"`` or ``"linear"``.
        total_steps (int | None): optimizer steps in training; the Lightning and transformers callbacks fill
            it in from the trainer when None.
        scale_lr (bool): scale each group's initial lr by ``1 / t_i``.
        groups: selector specs or name lists, bottom to top; default :func:`frostline.layer_groups`. Given
            groups are the schedule's, even what you froze before its first step; derived ones leave it frozen.

    Example:
        >>> import torch, torch.nn as nn
        >>> from frostline.schedules import ProgressiveFreeze
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> sched = ProgressiveFreeze(t0=0.5, schedule="linear", total_steps=100)
        >>> [round(t, 2) for t in sched.thresholds(3)]
        [0.5, 0.75, 1.0]
        >>> sched.step(model, step=60).groups
        ['0']
    """

    unit = "step"

    def __init__(self, t0: float = 0.5, schedule: Literal["cubic", "squared", "linear"] = "cubic",
                 total_steps: int | None = None, scale_lr: bool = False, groups: Sequence[Any] | None = None) -> None:
        super().__init__(groups)
        if not 0 < t0 <= 1:
            raise ValueError(f"t0 must be in (0, 1], got {t0!r}")
        if schedule not in _SCALES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, _SCALES))}, got {schedule!r}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        self.t0, self.schedule, self.total_steps, self.scale_lr = t0, schedule, total_steps, scale_lr

    def thresholds(self, n: int) -> list[float]:
        """``t_i`` for ``n`` groups: the fraction of training after which group ``i`` is frozen."""
        scale = _SCALES[self.schedule]
        return [scale(self.t0 + (1 - self.t0) * i / max(n - 1, 1)) if n > 1 else 1.0 for i in range(n)]

    def plan(self, epoch: int | None, step: int | None) -> Plan:
        step = self._counter(epoch, step)
        if self.total_steps is None:
            raise ValueError("ProgressiveFreeze needs total_steps (optimizer steps in training): pass it to the "
                             "constructor, or let the Lightning or transformers FreezeCallback fill it in")
        ts = self.thresholds(len(self.groups))
        stops = [t * self.total_steps for t in ts]
        # the top group never freezes: FreezeOut keeps the classifier trainable until the end
        frozen = frozenset(i for i, stop in enumerate(stops[:-1]) if step >= stop)
        lr = {}
        for i, (t, stop) in enumerate(zip(ts, stops, strict=False)):
            if i not in frozen:
                progress = min(step / stop, 1.0)
                lr[i] = 0.5 * (1 + math.cos(math.pi * progress)) / (t if self.scale_lr else 1.0)
        return Plan(frozen, lr, f"{len(frozen)} of {len(ts)} groups frozen")
