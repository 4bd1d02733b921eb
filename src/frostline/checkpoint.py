"""Small checkpoints that hold only what trains, and loading them back into a model frozen the same way.

:func:`trainable_state_dict` returns a flat ``{key: tensor}`` dict (``safetensors.torch.save_file`` writes it as
is):

- a whole trainable parameter: ``"<name>"``, as in ``state_dict``;
- a partially frozen parameter: ``"<name>@values"`` with its trainable values, plus either
  ``"<name>@rows<d>"`` (int64 indices of the trainable slices along dim ``d``; the values have the parameter's
  shape with that many slices along ``d``) or ``"<name>@elements"`` (int64 flat row-major indices of the
  trainable elements; the values are 1-D);
- with ``buffers=True``, the persistent buffers of modules that train (BatchNorm running statistics), by name.

Frozen values are not stored: load into a model that holds them already (the pretrained model, frozen the same
way). For a full checkpoint use ``model.state_dict()``, which keeps the original keys and shapes.

>>> import torch, torch.nn as nn, frostline
>>> def make():
...     torch.manual_seed(0)
...     return frostline.freeze(nn.Sequential(nn.Embedding(100, 4), nn.Linear(4, 2)), "0", rows=range(90))
>>> model = make()
>>> sd = frostline.trainable_state_dict(model)   # rows 90..99 of the embedding, and the head
>>> sorted(sd), tuple(sd["0.weight@values"].shape)
(['0.weight@rows0', '0.weight@values', '1.bias', '1.weight'], (10, 4))
>>> fresh = make()
>>> frostline.load_trainable_state_dict(fresh, sd)
IncompatibleKeys(missing=[], unexpected=[])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
from torch import Tensor, nn

from ._state import FreezeState, PartialTensor, get_partial, kept_in_eval, named_logical_parameters
from ._tensor import take
from .errors import FrostlineError

if TYPE_CHECKING:  # frostline's partial tensors are Strategies
    from .partial import Strategy

__all__ = ["trainable_state_dict", "load_trainable_state_dict", "IncompatibleKeys"]

VALUES, ROWS, ELEMENTS = "@values", "@rows", "@elements"


class IncompatibleKeys(NamedTuple):
    missing: list[str]
    unexpected: list[str]


def trainable_state_dict(model: nn.Module, *, buffers: bool = True) -> dict[str, Tensor]:
    """Only the trainable values of ``model`` (see the module docstring for the key format).

    Args:
        model (nn.Module): the model.
        buffers (bool): also the persistent buffers of modules that train (BatchNorm running statistics).

    Returns:
        dict[str, Tensor]: detached tensors; partial tensors' entries are fresh copies.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Linear(4, 3), "weight", rows=[0, 2])
        >>> {k: tuple(v.shape) for k, v in frostline.trainable_state_dict(model).items()}
        {'weight@rows0': (1,), 'weight@values': (1, 4), 'bias': (3,)}
    """
    out: dict[str, Tensor] = {}
    for name, tensor in named_logical_parameters(model):
        part = get_partial(model, name)
        if part is None:
            if tensor.requires_grad:
                out[name] = tensor.detach()
            continue
        layout = cast("Strategy", part).layout()
        index = layout.trainable_index()
        out[_index_key(name, layout.dim)] = index
        out[name + VALUES] = take(part.full(), layout.dim, index)
    if buffers:
        out.update(_training_buffers(model))
    return out


def load_trainable_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *,
                              strict: bool = True) -> IncompatibleKeys:
    """Copy the values of a :func:`trainable_state_dict` into ``model``, in place.

    ``model`` must be frozen the way the saved model was: the same parameters trainable, and the same trainable
    rows or elements of each partially frozen one. Buffers are loaded when present and never reported missing.

    Args:
        model (nn.Module): the model, frozen as the saved one was.
        state_dict (Mapping[str, Tensor]): what :func:`trainable_state_dict` returned (or safetensors loaded).
        strict (bool): raise when the model trains something the checkpoint lacks, or the checkpoint holds
            keys the model does not know.

    Returns:
        IncompatibleKeys: ``missing`` and ``unexpected`` keys (both empty when ``strict`` passed).

    Raises:
        FrostlineError: the model's freeze state differs from the checkpoint's (what differs, and how to fix it),
            a tensor's shape differs from the model's (a size mismatch, never broadcast), or ``strict`` found
            missing/unexpected keys. Every key is checked before anything is copied, so a refused checkpoint
            leaves the model as it was.

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> saved = frostline.freeze(nn.Linear(4, 3), "weight", rows=[0, 2])
        >>> model = frostline.freeze(nn.Linear(4, 3), "weight", rows=[0, 2])
        >>> frostline.load_trainable_state_dict(model, frostline.trainable_state_dict(saved))
        IncompatibleKeys(missing=[], unexpected=[])
        >>> torch.equal(model.weight[1], saved.weight[1]), torch.equal(model.weight[0], saved.weight[0])
        (True, False)
    """
    params = dict(named_logical_parameters(model, remove_duplicate=False))
    model_buffers = dict(model.named_buffers())
    expected = set(trainable_state_dict_keys(model))
    unexpected: list[str] = []
    whole: list[tuple[Tensor, Tensor]] = []
    partial: list[tuple[PartialTensor, Tensor, Tensor]] = []
    # every key is checked before anything is copied: a refused checkpoint leaves the model as it was
    for key, value in state_dict.items():
        name, at, kind = key.partition("@")
        if at and "@" + kind != VALUES:
            partial.append(_check_partial(model, name, key, state_dict))
        elif at:
            if _index_key_of(state_dict, name) is None:
                raise FrostlineError(f"{key!r} has no index entry beside it ({name}@rows<d> or {name}@elements); "
                                     "was the checkpoint written by frostline.trainable_state_dict?")
        elif key in params and key in expected:
            whole.append((params[key], _same_shape(key, value, params[key], "parameter")))
        elif key in params:
            raise FrostlineError(_mismatch(model, key, f"trains {key} whole"))
        elif key in model_buffers:
            whole.append((model_buffers[key], _same_shape(key, value, model_buffers[key], "buffer")))
        else:
            unexpected.append(key)
    missing = sorted(expected - set(state_dict))
    if strict and (missing or unexpected):
        raise FrostlineError(f"load_trainable_state_dict(strict=True): missing keys {missing}, unexpected keys "
                             f"{unexpected}; freeze the model as the saved one was, or pass strict=False")
    with torch.no_grad():
        for target, value in whole:
            target.copy_(value)
        for part, values, index in partial:
            cast("Strategy", part).load_trainable(values, index)
    return IncompatibleKeys(missing, unexpected)


def trainable_state_dict_keys(model: nn.Module) -> list[str]:
    """The parameter keys :func:`trainable_state_dict` writes for ``model`` (buffers left out)."""
    keys = []
    for name, tensor in named_logical_parameters(model):
        part = get_partial(model, name)
        if part is not None:
            keys += [_index_key(name, cast("Strategy", part).layout().dim), name + VALUES]
        elif tensor.requires_grad:
            keys.append(name)
    return keys


# ---------------------------------------------------------------------------------------------------------------
def _index_key(name: str, dim: int | None) -> str:
    return f"{name}{ROWS}{dim}" if dim is not None else name + ELEMENTS


def _index_key_of(state_dict: Mapping[str, Tensor], name: str) -> str | None:
    return next((k for k in state_dict if k.startswith(name + "@") and k != name + VALUES), None)


def _check_partial(model: nn.Module, name: str, key: str,
                   state_dict: Mapping[str, Tensor]) -> tuple[PartialTensor, Tensor, Tensor]:
    """The partial tensor ``name``, its checkpointed trainable values and their index, once they fit the model."""
    part = get_partial(model, name)
    if part is None:
        raise FrostlineError(_mismatch(model, name, f"trains part of {name} ({key})"))
    if name + VALUES not in state_dict:
        raise FrostlineError(f"the checkpoint has {key!r} but no {name + VALUES!r}")
    layout = cast("Strategy", part).layout()
    mine = layout.trainable_index()
    if key != _index_key(name, layout.dim) or not torch.equal(state_dict[key].to(mine.device), mine):
        raise FrostlineError(
            f"the checkpoint trains other elements of {name} ({key}, {state_dict[key].numel()} entries) than the "
            f"model ({_index_key(name, layout.dim)}, {mine.numel()} entries); freeze the model as the saved one was")
    shape = list(layout.shape) if layout.dim is not None else [0]  # slices along dim, or flat elements
    shape[layout.dim or 0] = mine.numel()
    values = state_dict[name + VALUES]
    if tuple(values.shape) != tuple(shape):
        raise FrostlineError(
            f"size mismatch for {name + VALUES!r}: the checkpoint holds shape {tuple(values.shape)}, the model's "
            f"trainable part of {name} ({key}) has shape {tuple(shape)}; load the checkpoint written by "
            "frostline.trainable_state_dict of a model frozen as this one is")
    return part, values, mine


def _same_shape(key: str, value: Tensor, target: Tensor, kind: str) -> Tensor:
    """``value`` when it has ``target``'s exact shape (``copy_`` would broadcast a (1, 4) into a (2, 4))."""
    if value.shape != target.shape:
        raise FrostlineError(
            f"size mismatch for {key!r}: the checkpoint holds shape {tuple(value.shape)}, the model's {kind} has "
            f"shape {tuple(target.shape)}; load a checkpoint written for this model's architecture")
    return value


def _mismatch(model: nn.Module, name: str, saved: str) -> str:
    params = dict(named_logical_parameters(model, remove_duplicate=False))
    if name not in params:
        return f"the checkpoint {saved}, but the model has no parameter {name!r}"
    now = ("freezes part of it" if get_partial(model, name) is not None
           else "trains it whole" if params[name].requires_grad else "freezes it whole")
    return f"the checkpoint {saved} but the model {now}; freeze the model as the saved one was before loading"


def _training_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Persistent buffers that training may change: those of every module except the fully frozen ones kept in
    eval (a frozen BatchNorm left in train mode still updates its statistics, so they are kept)."""
    out = {}
    state = FreezeState(model)
    for module_name, module in state.modules.items():
        if state.frozen[module_name] and kept_in_eval(module):
            continue
        for local, buffer in module._buffers.items():
            if buffer is not None and local not in module._non_persistent_buffers_set:
                out[f"{module_name}.{local}" if module_name else local] = buffer.detach()
    return out
