"""Case B: a 30522x384 token embedding (MiniLM's vocabulary) of which only 64 rows train, AdamW wd=0.01.

With 64 of 30522 rows trainable, the optimizer step over the frozen rows dominates. The hand-written methods are
those users write by hand: store/restore, gradient mask (not exact: weight decay and Adam's
momentum still move masked rows), and a hand-written sparse delta (only the 64 rows are a Parameter).
Each method is a function of the batch (:func:`batch`) returning a :class:`~frostline.bench._harness.Trial`;
``benchmarks/partial.py`` runs some of them under its own names.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from .._state import partials_by_name
from ..freeze import freeze
from ..optim import optimizer as frostline_optimizer
from ._harness import Method, Trial, strategies, train_step

TITLE = "case B: 30522x384 embedding, 64 trainable rows, AdamW wd=0.01"
VOCAB, DIM = 30522, 384
TRAINABLE = torch.arange(0, VOCAB, VOCAB // 64)[:64]
Batch = tuple[Tensor, Tensor]


class TokenModel(nn.Module):
    """Embedding, mean over tokens, linear head: the anchors' case-B model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, DIM)
        self.head = nn.Linear(DIM, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.emb(ids).mean(1))


def batch(quick: bool) -> Batch:
    """Token ids (32x128; 4x16 for a quick run) that touch trainable rows as well as frozen ones, and labels."""
    torch.manual_seed(1)
    size, tokens = (4, 16) if quick else (32, 128)
    ids = torch.randint(0, VOCAB, (size, tokens))
    ids[:, :4] = TRAINABLE[:4]  # every batch touches trainable rows as well as frozen ones
    return ids, torch.randint(0, 2, (size,))


def frozen_rows() -> Tensor:
    """True for the frozen rows."""
    keep = torch.ones(VOCAB, dtype=torch.bool)
    keep[TRAINABLE] = False
    return keep


def _adamw(params: ParamsT) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def _trial(data: Batch, m: nn.Module, opt: torch.optim.Optimizer, forward: Callable[[], Tensor] | None = None,
           after: Callable[[], None] | None = None, **extra: Any) -> Trial:
    ids, y = data
    forward = forward or (lambda: F.cross_entropy(m(ids), y))
    keep = frozen_rows()
    frozen = lambda: [m.state_dict()["emb.weight"][keep]]  # noqa: E731 (effective values, any strategy)
    return Trial(m, train_step(forward, opt, after), opt, frozen, **extra)


def unfrozen(data: Batch) -> Trial:
    m = TokenModel()
    opt = _adamw(m.parameters())
    return Trial(m, train_step(lambda: F.cross_entropy(m(data[0]), data[1]), opt), opt)


def emb_requires_grad(data: Batch) -> Trial:
    """The whole embedding frozen: what the 64-row methods would cost at best (it trains no row)."""
    m = TokenModel()
    m.emb.weight.requires_grad_(False)
    return _trial(data, m, _adamw([p for p in m.parameters() if p.requires_grad]))


def restore(data: Batch) -> Trial:
    m = TokenModel()
    keep = frozen_rows()
    saved = m.emb.weight.detach()[keep].clone()

    def put_back() -> None:
        with torch.no_grad():
            m.emb.weight[keep] = saved

    return _trial(data, m, _adamw(m.parameters()), after=put_back, held=lambda: [saved, keep])


def gradmask(data: Batch) -> Trial:
    m = TokenModel()
    mask = (~frozen_rows()).float().unsqueeze(1)
    m.emb.weight.register_hook(lambda g: g * mask)
    return _trial(data, m, _adamw(m.parameters()), held=lambda: [mask])


def sparse_delta(data: Batch) -> Trial:
    """The anchors' hand-written version of what a library can do (its host syncs included)."""
    ids, y = data
    m = TokenModel()
    base = m.emb.weight.detach()
    m.emb.weight.requires_grad_(False)
    delta = nn.Parameter(base[TRAINABLE].clone())
    remap = torch.full((VOCAB,), -1)
    remap[TRAINABLE] = torch.arange(len(TRAINABLE))

    def forward() -> Tensor:
        out = F.embedding(ids, base)
        r = remap[ids]
        hit = r >= 0
        out = out.masked_scatter(hit.unsqueeze(-1), F.embedding(r[hit], delta)) if hit.any() else out
        return F.cross_entropy(m.head(out.mean(1)), y)

    return _trial(data, m, _adamw([delta, *m.head.parameters()]), forward, held=lambda: [delta, remap])


def strategy(data: Batch, name: str) -> Trial:
    m = freeze(TokenModel(), "emb.weight", rows=frozen_rows().nonzero().flatten(), strategy=name)
    opt = frostline_optimizer(m, torch.optim.AdamW, lr=1e-3, weight_decay=0.01, no_decay=())
    note = f"auto chose {partials_by_name(m)['emb.weight'].strategy}" if name == "auto" else ""
    return _trial(data, m, opt, note=lambda: note)


def methods(quick: bool, model_path: Path | None = None) -> tuple[str, list[Method]]:
    """The setup line and the methods of case B (``model_path`` is unused)."""
    data = batch(quick)
    size, tokens = data[0].shape
    setup = f"batch {size}x{tokens} tokens, {VOCAB * DIM:,} embedding elements, {len(TRAINABLE)} rows trainable"
    return setup, [
        Method("unfrozen", "baseline", partial(unfrozen, data)),
        Method("64 rows: store/restore", "hand", partial(restore, data)),
        Method("64 rows: gradient mask", "hand", partial(gradmask, data)),
        Method("64 rows: sparse delta", "hand", partial(sparse_delta, data)),
        *[Method(f"64 rows: strategy={s}", "frostline", partial(strategy, data, s)) for s in strategies(nn.Embedding(8, 4), spec="weight", rows=[0, 1])],
    ]
