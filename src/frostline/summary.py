"""What is frozen, per top-level module and in total, and what the optimizer holds for it.

>>> import torch.nn as nn, frostline
>>> model = frostline.freeze(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2)), "0")
>>> s = frostline.summary(model)
>>> s.total, s.trainable, s.frozen
(132, 22, 110)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._state import named_logical_parameters, partials_by_name, trainable_count
from ._table import WIDTH, brief, human_bytes, human_count, render

__all__ = ["summary", "Summary", "SummaryRow", "optimizer_state_bytes"]


@dataclass
class SummaryRow:
    name: str
    trainable: int
    frozen: int
    optimizer_bytes: int | None = None
    strategies: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


@dataclass
class Summary:
    """Counts of trainable and frozen elements; ``str()`` renders a table."""

    rows: list[SummaryRow]
    total: int
    trainable: int
    frozen: int
    optimizer_bytes: int | None = None

    def __str__(self) -> str:
        return self.table()

    def table(self, width: int | None = WIDTH) -> str:
        """The table; at ``width`` columns each partial column lists 3 tensors and wraps (None: all, one line).

        Example:
            >>> import torch.nn as nn, frostline
            >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), "0.weight", rows=[0, 1])
            >>> print(frostline.summary(model).table(width=None))
            module  trainable  frozen  % trainable  partial (strategy)
            ------  ---------  ------  -----------  ------------------
            0              32       8        80.0%  weight (split)
            1              18       0       100.0%  -
            ------  ---------  ------  -----------  ------------------
            total          50       8        86.2%  -
        """
        with_opt = self.optimizer_bytes is not None
        headers = ["module", "trainable", "frozen", "% trainable"] + (["optimizer state"] if with_opt else [])
        headers.append("partial (strategy)")

        def cells(r: SummaryRow | Summary, name: str, strategies: list[str]) -> list[object]:
            pct = f"{100 * r.trainable / r.total:.1f}%" if r.total else "-"
            row: list[object] = [name, human_count(r.trainable), human_count(r.frozen), pct]
            if with_opt:
                row.append(human_bytes(r.optimizer_bytes or 0))
            row.append((", ".join(strategies) if width is None else brief(strategies)) or "-")
            return row

        body = [cells(r, r.name, r.strategies) for r in self.rows]
        total = cells(self, "total", [])
        return render(headers, body, footer=[total], width=width)

    def __repr__(self) -> str:
        return f"Summary(total={self.total}, trainable={self.trainable}, frozen={self.frozen})"


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, params: Iterable[Tensor] | None = None) -> int:
    """Bytes of tensors the optimizer keeps in its state (for ``params`` only, if given; by identity)."""
    wanted = None if params is None else {id(p) for p in params}
    return sum(_state_bytes(state) for param, state in optimizer.state.items()
               if wanted is None or id(param) in wanted)


def _state_bytes(state: dict) -> int:
    return sum(value.numel() * value.element_size() for value in state.values() if torch.is_tensor(value))


def summary(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Summary:
    """Count trainable and frozen elements per top-level module and in total.

    Partially frozen tensors count their trainable and frozen elements separately, under their original name.
    With an ``optimizer``, each row also shows the bytes of optimizer state held for its parameters.

    Returns:
        Summary: ``.total``, ``.trainable``, ``.frozen`` (ints), ``.rows``; ``str()`` is a readable table of at
        most 120 columns, ``.table(width=None)`` the same with every partial tensor on one line.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "0")
        >>> s = frostline.summary(model)
        >>> s.total, s.trainable, s.frozen
        (58, 18, 40)
    """
    rows: dict[str, SummaryRow] = {}
    partials = partials_by_name(model)
    for name, tensor in named_logical_parameters(model):
        top = name.split(".")[0] if "." in name else "(root)"
        row = rows.setdefault(top, SummaryRow(top, 0, 0))
        partial = partials.get(name)
        trainable = trainable_count(tensor, partial)
        row.trainable += trainable
        row.frozen += tensor.numel() - trainable
        if partial is not None:
            row.strategies.append(f"{name.partition('.')[2] or name} ({partial.strategy})")
    total_opt: int | None = None
    if optimizer is not None:
        owner_of_storage = {id(param): name.split(".")[0] if "." in name else "(root)"
                            for name, param in model.named_parameters()}
        total_opt = 0
        spent = {top: 0 for top in rows}
        for held, state in optimizer.state.items():
            owner = owner_of_storage.get(id(held))
            size = _state_bytes(state)
            total_opt += size
            if owner is not None:
                spent[owner] += size
        for top, row in rows.items():
            row.optimizer_bytes = spent[top]
    trainable = sum(r.trainable for r in rows.values())
    frozen = sum(r.frozen for r in rows.values())
    return Summary(list(rows.values()), trainable + frozen, trainable, frozen, total_opt)
