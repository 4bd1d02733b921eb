"""Case B: a 30522x384 token embedding (MiniLM's vocabulary) of which only 64 rows train, AdamW wd=0.01.

With 64 of 30522 rows trainable, the optimizer step over the frozen rows dominates. The hand-written methods are
those users write by hand: store/restore, gradient mask (not exact: weight decay and Adam's
momentum still move masked rows), and a hand-written sparse delta (only the 64 rows are a Parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import ParamsT

from ..freeze import Strategy, freeze
from ..optim import optimizer as frostline_optimizer
from ._harness import Method, Trial, chosen_strategy, train_step

TITLE = "case B: 30522x384 embedding, 64 trainable rows, AdamW wd=0.01"
VOCAB, DIM = 30522, 384
TRAINABLE = torch.arange(0, VOCAB, VOCAB // 64)[:64]
STRATEGIES: tuple[Strategy, ...] = ("auto", "delta", "mask")


class TokenModel(nn.Module):
    """Embedding, mean over tokens, linear head: the anchors' case-B model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, DIM)
        self.head = nn.Linear(DIM, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


def _adamw(params: ParamsT) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def _keep() -> torch.Tensor:
    keep = torch.ones(VOCAB, dtype=torch.bool)  # True for the frozen rows
    keep[TRAINABLE] = False
    return keep


def methods(quick: bool, model_path: Path | None = None) -> tuple[str, list[Method]]:
    """The setup line and the methods of case B (``model_path`` is unused)."""
    torch.manual_seed(1)
    batch, tokens = (4, 16) if quick else (32, 128)
    ids = torch.randint(0, VOCAB, (batch, tokens))
    ids[:, :4] = TRAINABLE[:4]  # every batch touches trainable rows as well as frozen ones
    y = torch.randint(0, 2, (batch,))
    keep = _keep()
    setup = f"batch {batch}x{tokens} tokens, {VOCAB * DIM:,} embedding elements, {len(TRAINABLE)} rows trainable"

    def trial(m: nn.Module, opt: torch.optim.Optimizer, forward: Callable[[], torch.Tensor] | None = None,
              after: Callable[[], None] | None = None, **extra: Any) -> Trial:
        forward = forward or (lambda: F.cross_entropy(m(ids), y))
        frozen = lambda: [m.state_dict()["emb.weight"][keep]]  # noqa: E731 (effective values, any strategy)
        return Trial(m, train_step(forward, opt, after), opt, frozen, **extra)

    def unfrozen() -> Trial:
        m = TokenModel()
        opt = _adamw(m.parameters())
        return Trial(m, train_step(lambda: F.cross_entropy(m(ids), y), opt), opt)

    def restore() -> Trial:
        m = TokenModel()
        saved = m.emb.weight.detach()[keep].clone()

        def put_back() -> None:
            with torch.no_grad():
                m.emb.weight[keep] = saved

        return trial(m, _adamw(m.parameters()), after=put_back, held=lambda: [saved, keep])

    def gradmask() -> Trial:
        m = TokenModel()
        mask = (~keep).float().unsqueeze(1)
        m.emb.weight.register_hook(lambda g: g * mask)
        return trial(m, _adamw(m.parameters()), held=lambda: [mask])

    def sparse_delta() -> Trial:  # the anchors' hand-written version of what a library can do
        m = TokenModel()
        base = m.emb.weight.detach()
        m.emb.weight.requires_grad_(False)
        delta = nn.Parameter(base[TRAINABLE].clone())
        remap = torch.full((VOCAB,), -1)
        remap[TRAINABLE] = torch.arange(len(TRAINABLE))

        def forward() -> torch.Tensor:
            out = F.embedding(ids, base)
            r = remap[ids]
            hit = r >= 0
            out = out.masked_scatter(hit.unsqueeze(-1), F.embedding(r[hit], delta)) if hit.any() else out
            return F.cross_entropy(m.head(out.mean(1)), y)

        return trial(m, _adamw([delta, *m.head.parameters()]), forward, held=lambda: [delta, remap])

    def strategy(name: Strategy) -> Callable[[], Trial]:
        def setup() -> Trial:
            m = freeze(TokenModel(), "emb.weight", rows=keep.nonzero().flatten(), strategy=name)
            opt = frostline_optimizer(m, torch.optim.AdamW, lr=1e-3, weight_decay=0.01, no_decay=())
            note = f"auto chose {chosen_strategy(m, 'emb.weight')}" if name == "auto" else ""
            return trial(m, opt, note=lambda: note)

        return setup

    return setup, [
        Method("unfrozen", "baseline", unfrozen),
        Method("64 rows: store/restore", "hand", restore),
        Method("64 rows: gradient mask", "hand", gradmask),
        Method("64 rows: sparse delta", "hand", sparse_delta),
        *[Method(f"64 rows: strategy={s}", "frostline", strategy(s)) for s in STRATEGIES],
    ]
