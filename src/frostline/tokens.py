"""Vocabulary rows: train only the embedding (and LM-head) rows of the tokens your data uses.

A fine-tuning set touches a few thousand of a vocabulary's tens of thousands of tokens. :func:`token_rows` collects
the ids it uses; :func:`train_token_rows` freezes every other row of the input embedding and of an untied output
head (or of the tensors you name), so gradients and optimizer state exist for the used rows alone.

>>> import torch, frostline
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
...                                      num_attention_heads=2, num_key_value_heads=2))
>>> batches = [{"input_ids": torch.tensor([[5, 7, 7, 9]])}, {"input_ids": torch.tensor([[9, 11, 0, 0]]),
...                                                            "attention_mask": torch.tensor([[1, 1, 0, 0]])}]
>>> rows = frostline.token_rows(batches)       # padding (attention_mask 0) is not a used token
>>> rows.tolist()
[5, 7, 9, 11]
>>> _ = frostline.freeze(model)                # everything frozen, then the used vocabulary rows train
>>> _ = frostline.train_token_rows(model, rows)
>>> frostline.is_frozen(model, "model.embed_tokens.weight"), frostline.is_frozen(model, "lm_head.weight")
('partial', 'partial')
>>> frostline.summary(model).trainable          # 4 rows x 16, twice
128
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._state import get_partial, named_logical_parameters
from .errors import FreezeError, SelectionError
from .freeze import Strategy, freeze, unfreeze
from .selection import Spec, select

__all__ = ["token_rows", "train_token_rows"]

_COMPACT_EVERY = 64  # merge the per-batch unique ids this often, so a long dataloader keeps little in memory


def token_rows(data: Any, *, keys: Sequence[str] = ("input_ids", "labels"), vocab_size: int | None = None) -> Tensor:
    """The sorted unique token ids that ``data`` uses, as a 1-D int64 tensor (a ``rows=`` for embeddings).

    Args:
        data: token ids in any of these forms, or an iterable of them (a DataLoader, a list of batches, a
            dataset of examples): an integer tensor of any shape; a sequence of ints; a mapping (a batch dict, a
            ``BatchEncoding``) whose ``keys`` entries hold ids. Tuples and lists are read element by element, so
            give ``(ids, class_label)`` examples as their ids only.
        keys: the entries of a mapping that hold token ids (those present are read). Where the mapping has an
            ``attention_mask`` of the same shape, ``input_ids`` at masked positions (padding) are not counted.
        vocab_size: when given, ids must lie below it.

    Negative ids (the ``-100`` of ignored label positions) are skipped. The result lives on the device of the
    first tensor seen (CPU for Python ints); nothing is moved to the host.

    Returns:
        Tensor: the used ids, sorted ascending, int64.

    Raises:
        TypeError: ids that are not integers (float or bool tensors, strings).
        ValueError: no ids found (a mapping without any of ``keys``), or an id not below ``vocab_size``.

    Example:
        >>> import torch, frostline
        >>> frostline.token_rows([torch.tensor([[3, 1, 3]]), [4, 1]]).tolist()
        [1, 3, 4]
        >>> frostline.token_rows({"input_ids": [[2, 8]], "labels": [[8, -100]]}).tolist()
        [2, 8]
    """
    state: dict[str, Any] = {"parts": [], "device": None, "found": False}
    _collect(data, tuple(keys), state)
    if not state["found"]:
        raise ValueError(f"found no token ids in data: expected integer tensors, sequences of ints, or mappings with "
                         f"one of the keys {list(keys)} (or an iterable of them); got a {type(data).__name__}")
    rows = _merge(state["parts"], state["device"])
    if vocab_size is not None and rows.numel() and bool(rows[-1] >= vocab_size):  # once, not per step
        raise ValueError(f"token id {int(rows[-1])} is out of range for vocab_size={vocab_size} (ids must lie in "
                         f"0..{vocab_size - 1}); is the tokenizer the model's?")
    return rows


def train_token_rows(model: nn.Module, rows: Sequence[int] | Tensor, spec: Spec | None = None, *,
                     strategy: Strategy = "auto") -> nn.Module:
    """Train only ``rows`` (token ids) of the vocabulary tensors; freeze their other rows. In place; returns ``model``.

    The tensors are ``spec``'s parameters, by default the input embedding and the output embedding (LM head) of a
    transformers model (``get_input_embeddings()``/``get_output_embeddings()``). Rows outside ``rows`` become
    frozen (bit-identical from now on); rows that were frozen already stay frozen, and a tensor frozen whole gets
    exactly ``rows`` trainable. ``frostline.unfreeze(model, name)`` makes a tensor whole and trainable again.

    Tied input embedding and LM head are one tensor: it is frozen once, with one strategy for both uses. With
    ``strategy="auto"`` an untied embedding gets ``delta`` (gradient and optimizer state for the trainable rows
    only) and an untied LM head ``split`` (the frozen rows' weight gradient is never computed); a tied one gets
    ``delta`` when at most half its rows train (both uses feed the trainable rows; the head never computes the
    frozen rows' weight gradient), else ``mask`` (dense gradient and optimizer state).

    Args:
        model (nn.Module): the model.
        rows: token ids to train (a list, or the tensor :func:`token_rows` returns).
        spec: the vocabulary tensors (see :func:`frostline.select`); every one must have a row per token id.
        strategy (str): how the partial freeze is stored (see :mod:`frostline.partial`).

    Raises:
        SelectionError: no ``spec`` given and the model has no ``get_input_embeddings``.
        FreezeError: ``rows`` not integers, an id outside a tensor's rows, or a strategy that cannot serve a
            tensor.

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
        >>> _ = frostline.train_token_rows(model, [2, 3], ["0.weight", "1.weight"])
        >>> frostline.summary(model).trainable       # 2 rows of each, and the head's bias
        26
    """
    from .partial import row_index

    names = select(model, spec) if spec is not None else _vocabulary_names(model)
    tensors = dict(named_logical_parameters(model))
    for name in names:
        param = tensors[name]
        if param.dim() == 0:
            raise FreezeError(f"{name} is a 0-d parameter and has no token rows; leave it out of spec")
        keep = torch.zeros(param.shape[0], dtype=torch.bool, device=param.device)
        keep[row_index(name, rows, param.shape[0], 0).to(param.device)] = True  # freeze(rows=)'s own checks
        others = torch.nonzero(~keep).flatten()
        if not param.requires_grad and get_partial(model, name) is None:
            unfreeze(model, name)  # frozen whole: exactly ``rows`` train
        if others.numel():
            freeze(model, name, rows=others, strategy=strategy)
    return model


# ---------------------------------------------------------------------------------------------------------------
def _collect(data: Any, keys: tuple[str, ...], state: dict[str, Any]) -> None:
    if isinstance(data, Tensor):
        return _add(data, state)
    if isinstance(data, Mapping):
        present = [k for k in keys if k in data]
        mask = data.get("attention_mask")
        for key in present:
            _collect(_unmasked(data[key], mask) if key == "input_ids" and mask is not None else data[key],
                     keys, state)
        return
    if isinstance(data, (str, bytes)):
        raise TypeError(f"token ids must be integers, got the text {data[:40]!r}; tokenize it first")
    if isinstance(data, Iterable):
        items = data if isinstance(data, Sequence) else iter(data)
        if isinstance(items, Sequence) and items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            return _add(torch.tensor(list(items), dtype=torch.int64, device=state["device"]), state)
        for item in items:
            _collect(item, keys, state)
            if len(state["parts"]) >= _COMPACT_EVERY:
                state["parts"] = [_merge(state["parts"], state["device"])]
        return
    if isinstance(data, bool) or not isinstance(data, int):
        raise TypeError(f"token ids must be integers, got a {type(data).__name__}: {data!r:.60}; pass tensors, "
                        "sequences of ints, mappings of them, or an iterable of these (a DataLoader)")
    _add(torch.tensor([data], dtype=torch.int64, device=state["device"]), state)


def _unmasked(ids: Any, mask: Any) -> Any:
    """The ids where ``mask`` is nonzero, where both have one shape (ragged lists pair up row by row); else all."""
    if isinstance(ids, Tensor) and isinstance(mask, Tensor):
        return ids[mask.to(ids.device) != 0] if ids.shape == mask.shape else ids
    if isinstance(ids, (list, tuple)) and isinstance(mask, (list, tuple)) and len(ids) == len(mask):
        if all(isinstance(i, int) for i in ids):
            return [i for i, m in zip(ids, mask, strict=False) if m]
        return [_unmasked(i, m) for i, m in zip(ids, mask, strict=False)]
    return ids


def _add(ids: Tensor, state: dict[str, Any]) -> None:
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"token ids must be an integer tensor, got {ids.dtype} (shape {tuple(ids.shape)})")
    if state["device"] is None:
        state["device"] = ids.device
    ids = ids.reshape(-1).to(state["device"], torch.int64)
    state["parts"].append(torch.unique(ids[ids >= 0]))
    state["found"] = True


def _merge(parts: list[Tensor], device: torch.device | None) -> Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.unique(torch.cat(parts))  # sorted


def _vocabulary_names(model: nn.Module) -> list[str]:
    get_in = getattr(model, "get_input_embeddings", None)
    if not callable(get_in):
        raise SelectionError(f"{type(model).__name__} has no get_input_embeddings(); name the vocabulary tensors, "
                             "e.g. train_token_rows(model, rows, ['embed.weight', 'head.weight'])")
    modules = [get_in()]
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        modules.append(get_out())
    weights = [m.weight for m in modules if isinstance(m, nn.Module) and isinstance(getattr(m, "weight", None),
                                                                                     Tensor)]
    if not weights:
        raise SelectionError(f"{type(model).__name__}.get_input_embeddings() returned no module with a weight; name "
                             "the vocabulary tensors with spec=")
    return select(model, weights)
