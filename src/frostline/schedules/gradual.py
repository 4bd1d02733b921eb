"""Gradual unfreezing (ULMFiT: Howard and Ruder, "Universal Language Model Fine-tuning for Text
Classification", ACL 2018): train the top group first, then unfreeze one more group from the top each period."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._base import Plan, Schedule
from ._registry import register

__all__ = ["GradualUnfreeze"]


@register
class GradualUnfreeze(Schedule):
    """In period ``k = epoch // every`` the top ``k + 1`` groups train and the ones below are frozen.

    With 4 groups and ``every=1``, epochs 0, 1, 2, 3 train 1, 2, 3, 4 groups, and every later epoch all of them.

    Args:
        groups: selector specs (see :func:`frostline.select`) or name lists, bottom to top; default
            :func:`frostline.layer_groups` of the model (BERT: embeddings, each layer, pooler/head). Given
            groups are the schedule's, even what you froze before its first step; derived ones leave what you
            froze frozen, and each ``Change`` says how many tensors that is.
        every (int): epochs per period.
        lr_divisor (float | None): discriminative fine-tuning: a trainable group ``d`` groups below the top gets
            ``lr / lr_divisor ** d`` (ULMFiT uses 2.6). None leaves learning rates alone.

    Example:
        >>> import torch, torch.nn as nn
        >>> from frostline.schedules import GradualUnfreeze
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sched = GradualUnfreeze()
        >>> for epoch in range(3):
        ...     print(sched.step(model, opt, epoch=epoch).groups, [m.weight.requires_grad for m in model])
        ['0', '1'] [False, False, True]
        ['1'] [False, True, True]
        ['0'] [True, True, True]
    """

    unit = "epoch"

    def __init__(self, groups: Sequence[Any] | None = None, every: int = 1, lr_divisor: float | None = None) -> None:
        super().__init__(groups)
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive number of epochs, got {every!r}")
        if lr_divisor is not None and lr_divisor <= 0:
            raise ValueError(f"lr_divisor must be > 0 (ULMFiT uses 2.6), got {lr_divisor!r}")
        self.every, self.lr_divisor = every, lr_divisor

    def plan(self, epoch: int | None, step: int | None) -> Plan:
        epoch = self._counter(epoch, step)
        n = len(self.groups)
        training = min(epoch // self.every + 1, n)
        frozen = frozenset(range(n - training))
        lr = {}
        if self.lr_divisor is not None:
            lr = {i: self.lr_divisor ** -(n - 1 - i) for i in range(n - training, n)}
        return Plan(frozen, lr, f"{training} of {n} groups train")
