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

import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ._state import get_partial, named_logical_parameters
from .distributed import check_change  # refuses changes a live DDP wrapper could not follow
from .errors import FreezeError
from .selection import Spec, select

__all__ = ["freeze", "unfreeze", "is_frozen", "frozen_names"]

Strategy = str  # "auto" or a registered strategy's name (frostline.partial.STRATEGIES)
_KEEP_EVAL = "_frostline_keep_eval"
_WAS_TRAINING = "_frostline_was_training"  # mode before freezing, restored when the module is unfrozen
_STATS_NORMS = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, SyncBatchNorm, InstanceNorm*
_DROPOUTS = (nn.modules.dropout._DropoutNd,)


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
    check_change(model, names, freezing=True, partial=_partial_request(rows, mask))
    if _partial_request(rows, mask):
        from .partial import freeze_partial

        for name in names:
            freeze_partial(model, name, rows=rows, dim=dim, mask=mask, strategy=strategy)
    else:
        if strategy != "auto":
            raise FreezeError(f"strategy={strategy!r} applies to partial freezing only; pass rows= or mask= as well")
        for name in names:
            _freeze_whole(model, name)
    if eval_frozen:
        _mark_eval(model, set(names))
    _refresh_lean(model, lean)
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
    check_change(model, names, freezing=False, partial=_partial_request(rows, mask))
    if _partial_request(rows, mask):
        from .partial import unfreeze_partial

        for name in names:
            unfreeze_partial(model, name, rows=rows, dim=dim, mask=mask)
    else:
        for name in names:
            if get_partial(model, name) is not None:
                from .partial import remove_partial

                remove_partial(model, name)
            module, local = _module_and_local(model, name)
            module._parameters[local].requires_grad_(True)
    _unmark_eval(model)
    _refresh_lean(model, None)
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
    states = {"partial" if get_partial(model, n) is not None else not tensors[n].requires_grad for n in names}
    return states.pop() if len(states) == 1 else "partial"


def frozen_names(model: nn.Module) -> list[str]:
    """Names of the fully frozen parameters, in model order (partially frozen ones are not listed).

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "0")
        >>> frostline.frozen_names(model)
        ['0.weight', '0.bias']"""
    return [n for n, t in named_logical_parameters(model) if not t.requires_grad and get_partial(model, n) is None]


# ---------------------------------------------------------------------------------------------------------------
def _module_and_local(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, local = name.rpartition(".")
    return model.get_submodule(module_name), local


def _freeze_whole(model: nn.Module, name: str) -> None:
    if get_partial(model, name) is not None:
        from .partial import remove_partial

        remove_partial(model, name)
    module, local = _module_and_local(model, name)
    param = module._parameters[local]
    param.requires_grad_(False)
    param.grad = None


def _region(model: nn.Module, every_module: bool = False) -> dict[str, list[Tensor]]:
    """For each eval candidate: the logical parameters whose frozenness decides it.

    Candidates are running-statistics norms and dropouts (what ``audit`` checks), or with ``every_module`` every
    module: a module with parameters is decided by all parameters beneath it, so a fully frozen block that calls
    ``F.dropout`` under its own ``self.training`` (BERT's self-attention) keeps inference behaviour too. A module
    without parameters is decided by its parent's.
    """
    logical = list(named_logical_parameters(model, remove_duplicate=False))
    out: dict[str, list[Tensor]] = {}
    for module_name, module in model.named_modules():
        if not every_module:
            if not isinstance(module, _STATS_NORMS + _DROPOUTS):
                continue
            if isinstance(module, _STATS_NORMS) and not module.track_running_stats:
                continue
        prefix = f"{module_name}." if module_name else ""
        beneath = [t for n, t in logical if n.startswith(prefix)]
        if beneath:
            out[module_name] = beneath
            continue
        parent = module_name.rpartition(".")[0]
        prefix = f"{parent}." if parent else ""
        out[module_name] = [t for n, t in logical if n.startswith(prefix)]
    return out


def _fully_frozen(model: nn.Module, tensors: list[Tensor], names: dict[int, str] | None = None) -> bool:
    if names is None:
        names = {id(t): n for n, t in named_logical_parameters(model, remove_duplicate=False)}
    return bool(tensors) and all(not t.requires_grad and get_partial(model, names[id(t)]) is None for t in tensors)


def _keep_eval_train(module: nn.Module, mode: bool = True) -> nn.Module:
    # Installed as the instance's ``train``: a parent's ``.train()`` reaches here, and the module stays in eval.
    if not isinstance(mode, bool):
        raise ValueError("training mode is expected to be boolean")
    module.training = False
    for child in module.children():
        child.train(mode)
    return module


def _mark_eval(model: nn.Module, selected: set[str]) -> None:
    names = {id(t): n for n, t in named_logical_parameters(model, remove_duplicate=False)}
    for module_name, tensors in _region(model, every_module=True).items():
        if not _fully_frozen(model, tensors, names) or not any(names[id(t)] in selected for t in tensors):
            continue
        module = model.get_submodule(module_name)
        module.__dict__["train"] = functools.partial(_keep_eval_train, module)
        module.__dict__[_KEEP_EVAL] = True
        module.__dict__.setdefault(_WAS_TRAINING, module.training)
        module.training = False


def _unmark_eval(model: nn.Module) -> None:
    regions = _region(model, every_module=True)
    names = {id(t): n for n, t in named_logical_parameters(model, remove_duplicate=False)}
    for module_name, module in model.named_modules():
        if not module.__dict__.get(_KEEP_EVAL) or _fully_frozen(model, regions.get(module_name, []), names):
            continue
        del module.__dict__["train"], module.__dict__[_KEEP_EVAL]
        # The mode it had when frozen, not its parent's: frameworks (Lightning) unfreeze while the root is in
        # eval and do not call .train() recursively afterwards.
        module.train(module.__dict__.pop(_WAS_TRAINING, True))


def _refresh_lean(model: nn.Module, lean: bool | None) -> None:
    from . import lean as lean_module

    lean_module.refresh(model, lean)
