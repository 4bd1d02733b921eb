"""Adaptive freezing (AutoFreeze: Liu, Agarwal and Venkataraman, "AutoFreeze: Automatically Freezing Model
Blocks to Accelerate Fine-tuning", arXiv:2102.01386, 2021): freeze the leading groups whose gradients stopped
changing."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ._base import Change, Plan, Schedule
from ._registry import register

__all__ = ["AutoFreeze"]


@register
class AutoFreeze(Schedule):
    """Every ``every_n_steps`` optimizer steps, compare each trainable group's gradient L1 norm over the last
    interval with the interval before: the relative change is ``|prev - cur| / prev``. Freeze every group
    before the first one whose change is at least the ``percentile`` of the changes (the median by default).

    Freezing only ever grows a prefix, so a group never freezes above one that trains, and the top group
    (the head) always trains. Gradient norms are read in an optimizer step post-hook, when every trainer has
    the step's gradients in place (Lightning runs backward inside ``optimizer.step``): no extra pass and no
    copy of the gradients. The paper takes the norm of the gradient summed over the interval; this sums the
    per-step norms. A group with no gradient in an interval never counts as converged.

    With the frozen-prefix feature cache (the paper's caching), give the cache the schedule: it runs the model
    until a prefix is frozen, then follows it (stored rows advance through newly frozen blocks, once)::

        cache = frostline.FeatureCache(model, upto=schedule)
        schedule.step(model, optimizer, step=s)
        out = cache(sample_ids, batch)

    Args:
        every_n_steps (int): optimizer steps between decisions (the paper: a tenth of training).
        percentile (float): which percentile of the changes marks a group as still learning, in [0, 100].
        groups: selector specs or name lists, bottom to top; default :func:`frostline.layer_groups`. Given
            groups are the schedule's, even what you froze before its first step; derived ones leave it frozen.

    Example:
        >>> import torch, torch.nn as nn
        >>> from frostline.schedules import AutoFreeze
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sched = AutoFreeze(every_n_steps=5)
        >>> for s in range(20):
        ...     _ = sched.step(model, opt, step=s)
        ...     opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
        >>> model[2].weight.requires_grad
        True
    """

    unit = "step"

    def __init__(self, every_n_steps: int, percentile: float = 50.0, groups: Sequence[Any] | None = None) -> None:
        super().__init__(groups)
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
        self.every_n_steps, self.percentile = every_n_steps, percentile
        self.prefix = 0  # groups [0, prefix) are frozen
        self._acc: list[Any] = []
        self._prev: list[float] | None = None
        self._last_eval: int | None = None
        self._hook: Any = None
        self._hooked: weakref.ref | None = None
        self._params: list[list[torch.Tensor]] = []

    def step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
             epoch: int | None = None, step: int | None = None) -> Change | None:
        if optimizer is not None:  # gradient norms are read when this optimizer steps; without one, nothing freezes
            self._watch(model, optimizer)
        return super().step(model, optimizer, epoch=epoch, step=step)

    def plan(self, epoch: int | None, step: int | None) -> Plan:
        step = self._counter(epoch, step)
        reason = ""
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_eval:
            reason = self._decide()
            self._last_eval = step
        return Plan(frozenset(range(self.prefix)), reason=reason)

    def close(self) -> None:
        """Remove the optimizer hook (the integrations call this when training ends)."""
        if self._hook is not None:
            self._hook.remove()
        self._hook = self._hooked = None

    # -- internals ----------------------------------------------------------------------------------------------
    def _watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self._hooked is not None and self._hooked() is optimizer:
            return
        self.close()
        if self._groups is None:
            self._groups = self._resolve(model)
        params = dict(model.named_parameters())
        self._params = [[params[n] for n in g if n in params] for g in self.groups[:-1]]
        if len(self._acc) != len(self._params):
            self._acc = [0.0] * len(self._params)
        me = weakref.ref(self)

        # runs right after each optimizer step: grads are complete
        def accumulate(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            schedule = me()
            if schedule is not None:
                schedule._accumulate()

        self._hook = optimizer.register_step_post_hook(accumulate)
        self._hooked = weakref.ref(optimizer)

    @torch.no_grad()
    def _accumulate(self) -> None:
        for i in range(self.prefix, len(self._params)):
            for p in self._params[i]:
                if p.grad is not None:
                    self._acc[i] = self._acc[i] + torch.linalg.vector_norm(p.grad, 1, dtype=torch.float32)

    def _decide(self) -> str:
        current = [float(a) for a in self._acc]  # one device sync per decision, not per step
        self._acc = [0.0] * len(self._params)
        candidates = range(self.prefix, len(current))
        previous, self._prev = self._prev, current
        if previous is None or not candidates:
            return ""
        change = {i: (abs(previous[i] - current[i]) / previous[i] if previous[i] > 0 and current[i] > 0
                      else math.inf) for i in candidates}
        finite = [c for c in change.values() if math.isfinite(c)]
        if not finite:
            return ""
        threshold = float(torch.quantile(torch.tensor(finite, dtype=torch.float64), self.percentile / 100))
        first = next(i for i in candidates if change[i] >= threshold)
        self.prefix = first
        changes = ", ".join(f"{change[i]:.3g}" for i in candidates)
        return f"gradient-norm changes {changes}; threshold {threshold:.3g}"

    def _extra_state(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "prev": self._prev, "acc": [float(a) for a in self._acc],
                "last_eval": self._last_eval}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.prefix, self._prev, self._last_eval = state["prefix"], state["prev"], state["last_eval"]
        self._acc = list(state["acc"])
