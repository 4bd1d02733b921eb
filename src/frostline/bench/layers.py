"""Whole-layer freezing of a transformer, all-MiniLM-L6-v2, two ways.

- The prefix (embeddings and the first 4 of 6 layers) frozen: the hand-written methods are the usual ones,
  ``requires_grad_(False)`` with a filtered optimizer, an ``lr=0`` group (pays the full backward), and training
  everything then restoring the frozen layers after each step; against :func:`frostline.freeze`.
- The six layers frozen under trainable embeddings: gradients must flow back through the frozen layers, so what
  autograd keeps for backward matters; ``requires_grad`` against ``freeze`` with and without ``lean``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import ParamsT

from ..freeze import freeze
from ..optim import optimizer as frostline_optimizer
from ._harness import Method, Trial, train_step
from ._text import classifier, text_batch

TITLE = "whole layers: all-MiniLM-L6-v2, embeddings + layers 0-3 frozen, or layers 0-5 under trainable embeddings"
SETTINGS = {"rounds": 3, "steps": 5, "warmup": 1}  # a MiniLM step is ~10x a CNN step: fewer, same design
FROZEN = ["backbone.embeddings", "backbone.encoder.layer.[0-3]"]
PREFIXES = ("backbone.embeddings.", *(f"backbone.encoder.layer.{i}." for i in range(4)))
MIDDLE = ("backbone.encoder.",)  # the second setting: every layer frozen, the embeddings below them train


def _adamw(params: ParamsT) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def _frozen_state(model: nn.Module, prefixes: tuple[str, ...] = PREFIXES) -> list[torch.Tensor]:
    return [v for k, v in model.state_dict().items() if k.startswith(prefixes)]


def methods(quick: bool, model_path: Path | None = None) -> tuple[str, list[Method]]:
    """The setup line and the methods of the whole-layer case."""
    ids, mask, y, setup = text_batch(quick)

    def trial(m: nn.Module, opt: torch.optim.Optimizer, frozen: tuple[str, ...] = PREFIXES,
              after: Callable[[], None] | None = None, **extra: Any) -> Trial:
        step = train_step(lambda: F.cross_entropy(m(ids, mask), y), opt, after)
        return Trial(m, step, opt, (lambda: _frozen_state(m, frozen)) if frozen else None, **extra)

    def unfrozen() -> Trial:
        m = classifier(model_path)
        return trial(m, _adamw(m.parameters()), frozen=())

    def requires_grad(prefixes: tuple[str, ...]) -> Callable[[], Trial]:
        def setup() -> Trial:
            m = classifier(model_path)
            for name, p in m.named_parameters():
                p.requires_grad_(not name.startswith(prefixes))
            return trial(m, _adamw([p for p in m.parameters() if p.requires_grad]), prefixes)

        return setup

    def lr0() -> Trial:
        m = classifier(model_path)
        named = list(m.named_parameters())
        groups: list[dict[str, Any]] = [{"params": [p for n, p in named if n.startswith(PREFIXES)], "lr": 0.0},
                                        {"params": [p for n, p in named if not n.startswith(PREFIXES)]}]
        return trial(m, _adamw(groups))

    def restore() -> Trial:
        m = classifier(model_path)
        frozen = [p for n, p in m.named_parameters() if n.startswith(PREFIXES)]
        saved = [p.detach().clone() for p in frozen]

        def put_back() -> None:
            with torch.no_grad():
                for p, s in zip(frozen, saved, strict=False):
                    p.copy_(s)

        return trial(m, _adamw(m.parameters()), after=put_back, held=lambda: saved)

    def frostline(spec: str | list[str], prefixes: tuple[str, ...], lean: bool) -> Callable[[], Trial]:
        def setup() -> Trial:
            m = freeze(classifier(model_path), spec, lean=lean)
            opt = frostline_optimizer(m, torch.optim.AdamW, lr=1e-4, weight_decay=0.01, no_decay=())
            return trial(m, opt, prefixes)

        return setup

    return setup, [
        Method("unfrozen", "baseline", unfrozen),
        Method("prefix: requires_grad + filtered optimizer", "hand", requires_grad(PREFIXES)),
        Method("prefix: lr=0 group", "hand", lr0),
        Method("prefix: store/restore", "hand", restore),
        Method("prefix: freeze", "frostline", frostline(FROZEN, PREFIXES, lean=True)),
        Method("layers 0-5: requires_grad + filtered optimizer", "hand", requires_grad(MIDDLE)),
        Method("layers 0-5: freeze(lean=False)", "frostline", frostline("backbone.encoder", MIDDLE, lean=False)),
        Method("layers 0-5: freeze (lean, the default)", "frostline", frostline("backbone.encoder", MIDDLE, lean=True)),
    ]
