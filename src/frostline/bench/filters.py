"""Case A: half of every conv's filters frozen in the seed CNN (CIFAR-sized input, batch 64, AdamW wd=0.01).

The hand-written methods are those users write (the seed threads'): freezing the front four modules with
``requires_grad`` or an ``lr=0`` group (BatchNorm statistics still drift), and for the half-filter freeze,
restoring the frozen filters after every step or masking their gradient (AdamW's weight decay still moves them).
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
from ..models import seed_cnn
from ..optim import optimizer as frostline_optimizer
from ._harness import Method, Trial, strategies, train_step

TITLE = "case A: seed CNN, half of every conv's filters frozen, AdamW wd=0.01"
FRONT = ["0", "2", "3"]  # the front four modules of the Sequential (module 1 is a ReLU)
Batch = tuple[Tensor, Tensor]


def batch(quick: bool) -> Batch:
    """Images and labels: 64x3x32x32 (8x3x16x16 for a quick run), the same every time."""
    torch.manual_seed(1)
    size, side = (8, 16) if quick else (64, 32)
    return torch.randn(size, 3, side, side), torch.randint(0, 10, (size,))


def model() -> nn.Sequential:
    """The seed CNN, the same weights every time, in training mode."""
    torch.manual_seed(0)
    return seed_cnn().train()


def convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _adamw(params: ParamsT) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def _front_state(model: nn.Module) -> list[Tensor]:
    # parameters AND BatchNorm buffers: "frozen" layers whose running statistics drift are not frozen
    return [v for k, v in model.state_dict().items() if k.split(".")[0] in ("0", "1", "2", "3")]


def _frozen_filters(model: nn.Module) -> list[Tensor]:
    state = model.state_dict()  # effective values, also for tensors a partial strategy stores in pieces
    return [state[f"{name}.weight"][: conv.out_channels // 2] for name, conv in convs(model)]


def _trial(data: Batch, m: nn.Module, opt: torch.optim.Optimizer, frozen: Callable[[], list[Tensor]] | None = None,
           after: Callable[[], None] | None = None, **extra: Any) -> Trial:
    x, y = data
    return Trial(m, train_step(lambda: F.cross_entropy(m(x), y), opt, after), opt, frozen, **extra)


def unfrozen(data: Batch) -> Trial:
    m = model()
    return _trial(data, m, _adamw(m.parameters()))


def front_requires_grad(data: Batch) -> Trial:
    m = model()
    for i in FRONT:
        m.get_submodule(i).requires_grad_(False)
    return _trial(data, m, _adamw([p for p in m.parameters() if p.requires_grad]), lambda: _front_state(m))


def front_lr0(data: Batch) -> Trial:
    m = model()
    front = {id(p) for i in FRONT for p in m.get_submodule(i).parameters()}
    groups: list[dict[str, Any]] = [{"params": [p for p in m.parameters() if id(p) in front], "lr": 0.0},
                                    {"params": [p for p in m.parameters() if id(p) not in front]}]
    return _trial(data, m, _adamw(groups), lambda: _front_state(m))


def front_frostline(data: Batch) -> Trial:
    m = freeze(model(), FRONT)
    opt = frostline_optimizer(m, torch.optim.AdamW, lr=1e-3, weight_decay=0.01, no_decay=())
    return _trial(data, m, opt, lambda: _front_state(m))


def convs_requires_grad(data: Batch) -> Trial:
    """Every conv weight frozen whole: what the half-filter methods would cost at best (it trains none)."""
    m = model()
    for _, conv in convs(m):
        conv.weight.requires_grad_(False)
    return _trial(data, m, _adamw([p for p in m.parameters() if p.requires_grad]),
                  lambda: [conv.weight.detach() for _, conv in convs(m)])


def half_restore(data: Batch) -> Trial:
    m = model()
    halves = [conv.weight[: conv.out_channels // 2] for _, conv in convs(m)]
    saved = [h.detach().clone() for h in halves]

    def restore() -> None:
        with torch.no_grad():
            for h, s in zip(halves, saved, strict=False):
                h.copy_(s)

    return _trial(data, m, _adamw(m.parameters()), lambda: _frozen_filters(m), restore, held=lambda: saved)


def half_gradmask(data: Batch) -> Trial:
    m = model()
    masks = []
    for _, conv in convs(m):
        keep = torch.ones(conv.out_channels, 1, 1, 1)
        keep[: conv.out_channels // 2] = 0
        conv.weight.register_hook(lambda g, k=keep: g * k)
        masks.append(keep)
    return _trial(data, m, _adamw(m.parameters()), lambda: _frozen_filters(m), held=lambda: masks)


def half_frostline(data: Batch, strategy: str) -> Trial:
    m = model()
    for name, conv in convs(m):
        freeze(m, f"{name}.weight", rows=range(conv.out_channels // 2), strategy=strategy)
    opt = frostline_optimizer(m, torch.optim.AdamW, lr=1e-3, weight_decay=0.01, no_decay=())
    chosen = sorted({part.strategy for part in partials_by_name(m).values()})
    note = f"auto chose {', '.join(chosen)}" if strategy == "auto" else ""
    return _trial(data, m, opt, lambda: _frozen_filters(m), note=lambda: note)


def methods(quick: bool, model_path: Path | None = None) -> tuple[str, list[Method]]:
    """The setup line and the methods of case A (``model_path`` is unused: the CNN is built in)."""
    data = batch(quick)
    x = data[0]
    setup = (f"batch {x.shape[0]}x3x{x.shape[2]}x{x.shape[3]}, "
             f"{sum(p.numel() for p in seed_cnn().parameters()):,} parameters")
    return setup, [
        Method("unfrozen", "baseline", partial(unfrozen, data)),
        Method("front 4 modules: requires_grad", "hand", partial(front_requires_grad, data)),
        Method("front 4 modules: lr=0 group", "hand", partial(front_lr0, data)),
        Method("front 4 modules: freeze", "frostline", partial(front_frostline, data)),
        Method("half filters: store/restore", "hand", partial(half_restore, data)),
        Method("half filters: gradient mask", "hand", partial(half_gradmask, data)),
        *[Method(f"half filters: strategy={s}", "frostline", partial(half_frostline, data, s)) for s in strategies(nn.Conv2d(2, 4, 3), spec="weight", rows=[0, 1])],
    ]
