"""Freeze and unfreeze parameters, whole or in part, in place.

>>> import torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.1), nn.Linear(4, 2))
>>> frostline.freeze(model, ["0", "1"]) is model
True
>>> frostline.is_frozen(model, "0.weight"), frostline.is_frozen(model, "3.weight")
(True, False)
>>> _ = model.train(); model[1].training   # a frozen BatchNorm keeps inference behaviour
False
>>> frostline.frozen_names(model)
['0.weight', '0.bias', '1.weight', '1.bias']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, cast

import torch
from torch import Tensor, nn

from . import _patch
from ._state import FreezeState, kept_in_eval, named_logical_parameters, partial_tensors, partials_by_name
from .errors import FreezeError
from .selection import Spec, select

__all__ = ["freeze", "unfreeze", "is_frozen", "frozen_names"]

Strategy = str  # "auto" or a registered strategy's name (frostline.partial.STRATEGIES)
PreChange = Callable[..., None]  # check(model, names, *, freezing, partial): raises to refuse a change
_PRE_CHANGE: list[PreChange] = []


def on_change(check: PreChange) -> PreChange:
    """Register ``check(model, names, *, freezing, partial)``, run by ``freeze``/``unfreeze`` before anything
    changes; it raises to refuse the change (:mod:`frostline.distributed` registers the DDP/FSDP2 check)."""
    if check not in _PRE_CHANGE:
        _PRE_CHANGE.append(check)
    return check


def _check_change(model: nn.Module, names: list[str], *, freezing: bool, partial: bool) -> None:
    for check in _PRE_CHANGE:
        check(model, names, freezing=freezing, partial=partial)


def _partial_request(rows, mask) -> bool:
    return rows is not None or mask is not None


def _refuse_inference_mode(action: str) -> None:
    if torch.is_inference_mode_enabled():
        raise FreezeError(f"{action} cannot run inside torch.inference_mode(): what it creates there (a partial "
                          "freeze's storage, masks and saved values) would be inference tensors, which autograd "
                          f"refuses for good, so the model could not train; call {action} outside the "
                          "inference_mode block (inside torch.no_grad() is fine)")


def freeze(
    model: nn.Module,
    spec: Spec = "*",
    *,
    rows: Sequence[int] | range | Tensor | None = None,
    dim: int = 0,
    mask: Tensor | None = None,
    strategy: Strategy = "auto",
    eval_frozen: bool = True,
    lean: bool | None = None,
) -> nn.Module:
    """Freeze the parameters ``spec`` selects, in place, and return ``model``.

    Whole parameters get ``requires_grad=False`` and ``.grad = None``; the Parameter objects keep their identity,
    so optimizers and checkpoints that refer to them stay valid.

    Args:
        model (nn.Module): the model.
        spec: which parameters (see :func:`frostline.select`); default every one.
        rows: freeze only these slices along ``dim`` (a list, range or 1-D index tensor): output filters of a
            Conv, output rows of a Linear, token rows of an Embedding.
        dim (int): the dimension ``rows`` index (1 for input channels / columns).
        mask (Tensor): bool tensor of the parameter's shape, True where the element is frozen.
        strategy (str): how a partial freeze is stored: ``"auto"`` or a registered strategy's name (built in:
            ``"delta"``, ``"split"``, ``"mask"``; see :mod:`frostline.partial`). Partial freezes of one tensor
            combine; frozen elements stay bit-identical.
        eval_frozen (bool): keep frozen running-statistics norms and dropout in inference behaviour, even after a
            later ``model.train()`` (Keras ``trainable=False`` semantics). False keeps PyTorch's default.
        lean (bool): run fully frozen modules through autograd functions that keep only what input gradients
            need (see :mod:`frostline.lean`). None means ``frostline.lean.DEFAULT`` as it is now (True unless you
            set it).

    Returns:
        nn.Module: ``model`` itself.

    Raises:
        SelectionError: ``spec`` matches nothing.
        FreezeError: bad ``rows``/``mask``/``dim``/``strategy``, or called inside ``torch.inference_mode()``.

    Example:
        >>> import torch.nn as nn, frostline
        >>> m = frostline.freeze(nn.Linear(3, 3), "bias")
        >>> m.bias.requires_grad, m.weight.requires_grad
        (False, True)
    """
    _refuse_inference_mode("freeze")
    if _partial_request(rows, mask):
        from .partial import refuse_non_parameter

        refuse_non_parameter(model, spec)
    names = select(model, spec)
    _check_change(model, names, freezing=True, partial=_partial_request(rows, mask))
    if _partial_request(rows, mask):
        from .partial import freeze_partial

        for name in names:
            freeze_partial(model, name, rows=rows, dim=dim, mask=mask, strategy=strategy)
    else:
        if strategy != "auto":
            raise FreezeError(f"strategy={strategy!r} applies to partial freezing only; pass rows= or mask= as well")
        for (module, local), name in zip(_owners(model, names), names, strict=True):
            _freeze_whole(model, name, module, local)
    _refresh(model, set(names) if eval_frozen else set(), lean)
    return model


def unfreeze(
    model: nn.Module,
    spec: Spec = "*",
    *,
    rows: Sequence[int] | range | Tensor | None = None,
    dim: int = 0,
    mask: Tensor | None = None,
) -> nn.Module:
    """Make the parameters ``spec`` selects trainable again (or only ``rows``/``mask`` of them); return ``model``.

    A partially frozen tensor unfrozen whole becomes one plain Parameter again. Norms and dropout kept in eval by
    ``freeze`` return to following ``model.train()``/``eval()`` once their region is no longer fully frozen.

    Example:
        >>> import torch.nn as nn, frostline
        >>> m = frostline.unfreeze(frostline.freeze(nn.Linear(3, 3)))
        >>> m.weight.requires_grad
        True
    """
    _refuse_inference_mode("unfreeze")
    names = select(model, spec)
    _check_change(model, names, freezing=False, partial=_partial_request(rows, mask))
    if _partial_request(rows, mask):
        from .partial import unfreeze_partial

        for name in names:
            unfreeze_partial(model, name, rows=rows, dim=dim, mask=mask)
    else:
        for (module, local), name in zip(_owners(model, names), names, strict=True):
            if local in partial_tensors(module):
                from .partial import remove_partial

                remove_partial(model, name)
            cast(nn.Parameter, module._parameters[local]).requires_grad_(True)  # a name select() gave
    _refresh(model, set(), None)
    return model


def is_frozen(model: nn.Module, name: str) -> bool | Literal["partial"]:
    """Whether parameter or module ``name`` is frozen: True, False (it trains) or ``"partial"``.

    For a parameter, ``"partial"`` means some of its elements are frozen (``freeze(..., rows=/mask=)``). For a
    module (or any spec :func:`frostline.select` takes), the answer covers every parameter beneath it: True when
    all are frozen, False when all train, ``"partial"`` when they are mixed or one of them is partially frozen.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "0")
        >>> _ = frostline.freeze(model, "2.weight", rows=[0])
        >>> [frostline.is_frozen(model, name) for name in ("0.bias", "2.weight", "2.bias")]
        [True, 'partial', False]
        >>> [frostline.is_frozen(model, module) for module in ("0", "2")]
        [True, 'partial']

    Raises:
        SelectionError: ``name`` names no parameter or module of the model (the message names the closest ones).
    """
    tensors = dict(named_logical_parameters(model, remove_duplicate=False))
    names = [name] if name in tensors else select(model, name)
    states: set[bool | Literal["partial"]] = {
        "partial" if local in partial_tensors(module) else not tensors[n].requires_grad
        for (module, local), n in zip(_owners(model, names), names, strict=True)}
    return states.pop() if len(states) == 1 else "partial"


def frozen_names(model: nn.Module) -> list[str]:
    """Names of the fully frozen parameters, in model order (partially frozen ones are not listed).

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "0")
        >>> frostline.frozen_names(model)
        ['0.weight', '0.bias']"""
    partial = partials_by_name(model)
    return [n for n, t in named_logical_parameters(model) if not t.requires_grad and n not in partial]


# ---------------------------------------------------------------------------------------------------------------
def _owners(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, str]]:
    """``(module, local name)`` of each parameter name, from one walk of the model (not a lookup per name)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    return [(modules[module_name], local) for module_name, _, local in (n.rpartition(".") for n in names)]


def _freeze_whole(model: nn.Module, name: str, module: nn.Module, local: str) -> None:
    if local in partial_tensors(module):
        from .partial import remove_partial

        remove_partial(model, name)
    param = cast(nn.Parameter, module._parameters[local])  # a name select() gave
    param.requires_grad_(False)
    param.grad = None


def _keep_eval_train(module: nn.Module, mode: bool = True) -> nn.Module:
    # Installed as the instance's ``train``: a parent's ``.train()`` reaches here, and the module stays in eval.
    if not isinstance(mode, bool):
        raise ValueError("training mode is expected to be boolean")
    module.training = False
    for child in module.children():
        child.train(mode)
    return module


def _refresh(model: nn.Module, selected: set[str], lean: bool | None) -> None:
    """After the frozen set changed: derive the state once, then the eval marks, lean forwards and repr marks.

    Fully frozen modules whose region holds a just-``selected`` parameter are kept in eval; kept modules that
    train again are released; lean re-decides; ``repr(model)`` shows the result.
    """
    from . import lean as lean_module

    state = FreezeState(model)
    keep = state.beneath(selected) if selected else set()
    for name, module in state.modules.items():
        if state.frozen[name] and name in keep:
            _patch.keep_eval(module, _keep_eval_train)
        elif kept_in_eval(module) and not state.frozen[name]:
            _patch.release_eval(module)
    lean_module.refresh(model, lean, state)
    _patch.mark(state.modules.values())  # the walk FreezeState already made
