"""The natural block sequence of a model, and freezing by depth (fastai ``freeze_to`` semantics).

>>> import torch.nn as nn, frostline
>>> block = lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
>>> model = nn.Sequential(nn.Linear(2, 4), block(), block(), nn.Linear(4, 1))
>>> [g[0] for g in frostline.layer_groups(model)]
['0.weight', '1.0.weight', '2.0.weight', '3.weight']
>>> _ = frostline.freeze_to(model, -1)
>>> frostline.frozen_names(model)[-1]
'2.1.bias'
"""

from __future__ import annotations

from torch import nn

from ._state import named_logical_parameters
from .freeze import freeze, unfreeze

__all__ = ["layer_groups", "freeze_to"]

_CONTAINERS = (nn.ModuleList, nn.Sequential)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_leaf(module: nn.Module) -> bool:
    return not any(_has_params(child) for child in module.children())


def _expandable(module: nn.Module) -> bool:
    """A container of composite blocks (a ModuleList/Sequential of layers, blocks...), here or below."""
    if isinstance(module, _CONTAINERS):
        children = [c for c in module.children() if _has_params(c)]
        if len(children) >= 2 and any(not _is_leaf(c) for c in children):
            return True
    return any(_expandable(child) for child in module.children())


def _walk(module: nn.Module, prefix: str, groups: list[list[tuple[str, bool]]]) -> None:
    """Append groups, each a list of ``(module prefix, recurse)`` owners, in forward order."""
    pending: list[tuple[str, bool]] = [(prefix, False)]  # the module's own direct parameters
    container = isinstance(module, _CONTAINERS)

    def flush() -> None:
        if pending:
            groups.append(list(pending))
            pending.clear()

    for child_name, child in module.named_children():
        if not _has_params(child):
            continue
        child_prefix = f"{prefix}{child_name}."
        if _expandable(child):
            flush()
            _walk(child, child_prefix, groups)
        elif container or not _is_leaf(child):
            flush()
            groups.append([(child_prefix, True)])
        else:  # consecutive leaf layers of a non-container (a stem's conv + norm, a head's norm + linear) group up
            pending.append((child_prefix, True))
    flush()


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Split a model's parameters into its natural block sequence, bottom to top.

    The stem/embeddings, each repeated block of a ModuleList/Sequential (a BERT layer, a ResNet block, a CNN
    stage) and the head each form one group. Works on any ``nn.Module``: containers of composite blocks are
    expanded, everything else stays whole, and consecutive single layers outside a container form one group.

    Returns:
        list[list[str]]: parameter names per group (partially frozen tensors under their own name); every
        parameter appears exactly once.

    Example:
        >>> import torch.nn as nn, frostline
        >>> len(frostline.layer_groups(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))))
        2
    """
    owners: list[list[tuple[str, bool]]] = []
    parts = sum(1 for child in model.children() if _has_params(child))
    if _expandable(model) or isinstance(model, _CONTAINERS) or parts >= 2:  # e.g. a body and a head
        _walk(model, "", owners)
    else:
        owners.append([("", True)])
    groups: list[list[str]] = [[] for _ in owners]
    for name, _ in named_logical_parameters(model):
        module_prefix = name.rpartition(".")[0]
        module_prefix = f"{module_prefix}." if module_prefix else ""
        for i, group in enumerate(owners):
            if any(name.startswith(p) if recurse else module_prefix == p for p, recurse in group):
                groups[i].append(name)
                break
    return [g for g in groups if g]


def freeze_to(model: nn.Module, n: int, **freeze_kwargs) -> nn.Module:
    """Freeze the layer groups before ``n`` and unfreeze the rest (negative ``n`` counts from the end).

    ``freeze_to(model, -1)`` trains only the head; ``freeze_to(model, 0)`` trains everything.

    Example:
        >>> import frostline
        >>> from frostline.models import small_cnn
        >>> model = frostline.freeze_to(small_cnn(), -1)        # groups: features, head
        >>> sorted({name.split(".")[0] for name in frostline.frozen_names(model)})
        ['features']
    """
    groups = layer_groups(model)
    cut = n if n >= 0 else max(len(groups) + n, 0)
    cut = min(cut, len(groups))
    frozen = [name for group in groups[:cut] for name in group]
    trained = [name for group in groups[cut:] for name in group]
    if trained:
        unfreeze(model, trained)
    if frozen:
        freeze(model, frozen, **freeze_kwargs)
    return model
