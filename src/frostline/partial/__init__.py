"""Exact partial freezing: some rows, filters, channels or single elements of a tensor stay bit-identical.

``frostline.freeze(model, name, rows=..., dim=..., mask=..., strategy=...)`` lands here. A partially frozen
Parameter keeps its name, identity and shape and always holds the effective values, so ``state_dict`` keys never
change; a *strategy* decides how the trainable part is stored and trained. One file per strategy, one small
interface (:class:`Strategy`), one registry (:data:`STRATEGIES`, filled by the classes: :func:`register`). Built in:

- ``mask``: the Parameter stays trainable; frozen gradients are zeroed and frozen values restored after each step.
- ``delta``: only the trainable rows/elements are a Parameter; optimizer state exists for them alone.
- ``split``: delta's storage, for Linear/Conv output rows; the frozen rows' weight gradient is never computed.
- ``auto``: split for Linear/Conv output rows, delta for Embedding rows and when at most half trains, else mask.
  A tied Parameter (one tensor, several modules: an input embedding and its LM head) gets one strategy for every
  name: delta when at most half trains (every use feeds its one trainable storage), else mask. A strategy you
  register is picked by ``auto`` only when it sets ``auto_pick = True`` (see :func:`choose`).

The visible Parameter is the truth: an in-place write to it (``nn.init``, ``.data.copy_``, ``mul_`` under
``no_grad``) takes effect for trainable and frozen elements alike. Changing which rows train while an optimizer
exists needs :func:`frostline.sync` (delta and split store each layout in a new Parameter): it keeps the optimizer
state of what trains on, the gradient accumulated so far follows at once, and until then an optimizer that holds
the old storage refuses to step instead of silently not training it.

>>> import torch, torch.nn as nn, frostline, frostline.partial
>>> conv = nn.Conv2d(3, 10, 3)
>>> _ = frostline.freeze(conv, "weight", rows=[0, 2, 4, 6, 8])   # 5 of 10 filters
>>> frostline.is_frozen(conv, "weight"), frostline.partial.get_partial(conv, "weight").strategy
('partial', 'split')
>>> before = conv.weight.detach().clone()
>>> opt = torch.optim.AdamW([p for p in conv.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
>>> conv(torch.randn(2, 3, 8, 8)).square().mean().backward(); opt.step()
>>> torch.equal(conv.weight[0::2], before[0::2]), torch.equal(conv.weight[1::2], before[1::2])
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .._state import get_partial, partial_tensors
from ..errors import FreezeError
from . import _carry, _forward
from ._base import Strategy, strategies
from ._hooks import attach, detach
from ._layout import Layout, Rows, request, row_index  # noqa: F401  (row_index: tokens validates rows with it)
from ._registry import STRATEGIES, auto_pickable, register

# the built-in strategies, each module registering its class: this import order is the registry's (names are
# listed in it)
# isort: off
from .mask import Mask
from .delta import Delta
from .split import Split

# isort: on

__all__ = ["STRATEGIES", "Strategy", "choose", "freeze_partial", "unfreeze_partial", "remove_partial", "get_partial",
           "refuse_non_parameter", "register", "unregister"]

AUTO_DELTA_FRACTION = 0.5  # auto: delta when at most this fraction trains (optimizer work and state ∝ fraction)
BUILT_IN = (Mask, Delta, Split)  # the strategies auto's own rule picks among (choose)


def choose(module: nn.Module, local: str, layout: Layout, *, tied: Sequence[tuple[str, nn.Module, str]] = (),
           current: Strategy | None = None) -> type[Strategy]:
    """The strategy ``auto`` picks for ``layout`` of ``module.<local>``.

    A tensor that is already partial keeps its strategy while that can serve the new layout (so the Parameters an
    optimizer holds do not change under it). Otherwise the first registered strategy with ``auto_pick = True``
    (none is built in) that can serve it, then the built-in rule: split for output rows of a Linear/Conv weight; delta for
    Embedding rows and whenever at most half the elements train; mask for the rest. ``tied`` names the other
    modules that use the same Parameter, as ``(name, module, local)``: then delta when at most half trains and
    delta can route every use, else mask.

    Example:
        >>> import torch.nn as nn
        >>> from frostline.partial import choose
        >>> from frostline.partial._layout import request
        >>> emb = nn.Embedding(10, 4)
        >>> choose(emb, "weight", request("weight", emb.weight, rows=[1, 2], dim=0, mask=None)).strategy
        'delta'
    """
    if current is not None and type(current).why_not(module, local, layout, tied) is None:
        return type(current)
    for cls in auto_pickable():
        if cls.why_not(module, local, layout, tied) is None:
            return cls
    if tied:  # split would serve one module's op only; delta routes every use into one storage
        can_delta = Delta.why_not(module, local, layout, tied) is None
        few = layout.trainable_fraction() <= AUTO_DELTA_FRACTION
        return Delta if can_delta and (few or Mask.why_not(module, local, layout, tied) is not None) else Mask
    if Split.why_not(module, local, layout, tied) is None:
        return Split
    can_delta = Delta.why_not(module, local, layout, tied) is None
    if can_delta and (isinstance(module, nn.Embedding) and layout.dim == 0
                      or layout.trainable_fraction() <= AUTO_DELTA_FRACTION):
        return Delta
    if Mask.why_not(module, local, layout, tied) is None or not can_delta:
        return Mask
    return Delta


def unregister(name: str) -> type[Strategy]:
    """Forget the strategy registered as ``name`` (tensors it stores already keep working); returns its class.

    Raises:
        FreezeError: ``name`` is not registered, or names a built-in strategy (``auto`` picks those by its rule).
    """
    if not isinstance(name, str) or name not in STRATEGIES:
        raise FreezeError(f"no strategy {name!r} is registered (registered: {', '.join(map(repr, STRATEGIES))})")
    if STRATEGIES[name] in BUILT_IN:
        raise FreezeError(f"strategy {name!r} is built into frostline and stays registered (strategy='auto' picks "
                          "it by its own rule); unregister only strategies you registered")
    return STRATEGIES.remove(name)


def freeze_partial(model: nn.Module, name: str, *, rows: Rows | None = None, dim: int = 0,
                   mask: Tensor | None = None, strategy: str = "auto") -> None:
    """Freeze ``rows`` along ``dim`` (or the True elements of ``mask``) of parameter ``name``, on top of what is
    frozen already. A parameter frozen whole stays frozen whole. (Use :func:`frostline.freeze`.)"""
    module, local, param = _target(model, name)
    wanted = request(name, param, rows, dim, mask)
    _check_strategy(strategy)
    current = strategies(module).get(local)
    if current is None and not param.requires_grad:
        return
    before = current.layout() if current is not None else Layout.whole(param.shape, False, param.device)
    _settle(model, name, before.union(wanted), strategy)


def unfreeze_partial(model: nn.Module, name: str, *, rows: Rows | None = None, dim: int = 0,
                     mask: Tensor | None = None) -> None:
    """Make ``rows``/``mask`` elements of ``name`` trainable again; unfreezing part of a parameter frozen whole
    makes it partial. (Use :func:`frostline.unfreeze`.)"""
    module, local, param = _target(model, name)
    wanted = request(name, param, rows, dim, mask)
    current = strategies(module).get(local)
    if current is None and param.requires_grad:
        return
    before = current.layout() if current is not None else Layout.whole(param.shape, True, param.device)
    _settle(model, name, before.minus(wanted), "auto")


def remove_partial(model: nn.Module, name: str) -> None:
    """Turn partially frozen ``name`` back into its one plain, trainable Parameter (the original object, holding
    the effective values). Does nothing when ``name`` is not partially frozen.

    Example:
        >>> import torch.nn as nn, frostline
        >>> from frostline.partial import remove_partial
        >>> lin = nn.Linear(3, 3)
        >>> weight = lin.weight
        >>> remove_partial(frostline.freeze(lin, "weight", rows=[0]), "weight")
        >>> frostline.is_frozen(lin, "weight"), lin.weight is weight
        (False, True)
    """
    module, local = _owner(model, name)
    if partial_tensors(module).get(local) is None:
        return
    was = _carry.before(module, local)
    _remove(model, module, local)
    _carry.after(module, local, name, was)


def _remove(model: nn.Module, module: nn.Module, local: str) -> None:
    part = strategies(module)[local]
    param = part.param
    part.teardown()
    for _, alias, alias_local in _aliases(model, param):
        if partial_tensors(alias).get(alias_local) is part:
            detach(alias, alias_local)
        _forward.refresh(alias)
    param.requires_grad_(True)


def refuse_non_parameter(model: nn.Module, spec: object) -> None:
    """Raise :class:`FreezeError` when ``spec`` is the name of a buffer (rows=/mask= apply to parameters only)."""
    if isinstance(spec, str) and spec in dict(model.named_buffers()):
        _target(model, spec)


# ---------------------------------------------------------------------------------------------------------------
def _settle(model: nn.Module, name: str, layout: Layout, strategy: str) -> None:
    """Store ``name`` in ``layout``; the gradient so far follows to whatever stores it next (see _carry.py)."""
    module, local, param = _target(model, name)
    current = strategies(module).get(local)
    was = _carry.before(module, local)
    if layout.none_frozen() or layout.all_frozen():
        if current is not None:
            _remove(model, module, local)
        param.requires_grad_(not layout.all_frozen())
        if layout.all_frozen():
            param.grad = None
        _carry.after(module, local, name, was)
        return
    aliases = _aliases(model, param)
    tied = [(n, m, loc) for n, m, loc in aliases if m is not module or loc != local]
    cls = choose(module, local, layout, tied=tied, current=current) if strategy == "auto" else STRATEGIES[strategy]
    reason = cls.why_not(module, local, layout, tied)
    if reason is not None:
        fix = "(strategy='auto' picks one that can)" if strategy != "auto" else "(and no other strategy can)"
        raise FreezeError(f"strategy={cls.strategy!r} cannot serve {name}: {reason} {fix}")
    if current is not None:
        _remove(model, module, local)
    part = cls(module, local, layout)
    attach(module, local, part)
    for _, alias, alias_local in tied:  # every name of the Parameter answers "partial", every use is served
        attach(alias, alias_local, part)
        part.serve(alias, alias_local)
    for _, alias, _ in aliases:
        _forward.refresh(alias)
    _carry.after(module, local, name, was)


def _check_strategy(strategy: str) -> None:
    if strategy != "auto" and strategy not in STRATEGIES:
        raise FreezeError(f"unknown strategy {strategy!r}; choose one of 'auto', {', '.join(map(repr, STRATEGIES))} "
                          "(a strategy of your own: frostline.partial.register)")


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, local = name.rpartition(".")
    try:
        return model.get_submodule(module_name), local
    except AttributeError:
        raise FreezeError(f"{name!r} is not a parameter of the model") from None


def _target(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Parameter]:
    module, local = _owner(model, name)
    param = module._parameters.get(local)
    if param is None:
        what = "a buffer" if local in module._buffers else "not a parameter"
        raise FreezeError(f"{name!r} is {what} of the model; rows=/mask= freeze parts of parameters "
                          "(frostline.select(model) lists them)")
    if isinstance(param, nn.parameter.UninitializedParameter):
        raise FreezeError(f"{name!r} is a lazy parameter that has no shape yet; run one forward pass first")
    if isinstance(module, nn.Embedding) and module.max_norm is not None and local == "weight":
        raise FreezeError(f"{name!r}: Embedding(max_norm={module.max_norm}) rescales rows in place during forward, "
                          "frozen ones included; partial freezing needs max_norm=None")
    return module, local, param


def _aliases(model: nn.Module, param: Tensor) -> list[tuple[str, nn.Module, str]]:
    """Every ``(name, module, local)`` that holds ``param`` (several when it is tied)."""
    return [(f"{prefix}.{local}" if prefix else local, m, local)
            for prefix, m in model.named_modules(remove_duplicate=False)
            for local, p in m._parameters.items() if p is param]
