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

from collections import Counter
from typing import Any

from torch import nn

from ._state import named_logical_parameters
from .freeze import freeze, unfreeze

__all__ = ["layer_groups", "freeze_to"]

CONTAINERS = (nn.ModuleList, nn.Sequential)  # the classes whose children are a model's blocks


def has_params(module: nn.Module) -> bool:
    """Whether any parameter lies beneath ``module``."""
    return any(True for _ in module.parameters())


def is_leaf(module: nn.Module) -> bool:
    """Whether no child of ``module`` holds parameters (a layer, not a block of layers)."""
    return not any(has_params(child) for child in module.children())


def _expandable(module: nn.Module) -> bool:
    """A container of composite blocks (a ModuleList/Sequential of layers, blocks...), here or below."""
    if isinstance(module, CONTAINERS):
        children = [c for c in module.children() if has_params(c)]
        if len(children) >= 2 and any(not is_leaf(c) for c in children):
            return True
    return any(_expandable(child) for child in module.children())


def _inner(module: nn.Module) -> nn.Module:
    """The module a wrapper holds (a LightningModule's network): descend while there is one child with
    parameters and no parameter of one's own."""
    while not any(True for _ in module.parameters(recurse=False)):
        children = [c for c in module.children() if has_params(c)]
        if len(children) != 1:
            break
        module = children[0]
    return module


def _staged(module: nn.Module) -> bool:
    """A plain module made of stages, like a hand-written ResNet's body (stem, layer1..layer4): two or more
    composite children. Its stages are groups, as a Sequential's blocks are."""
    module = _inner(module)
    if isinstance(module, CONTAINERS):
        return False
    return sum(1 for c in module.children() if has_params(c) and not is_leaf(c)) >= 2


def _walk(module: nn.Module, prefix: str, groups: list[list[tuple[str, bool]]]) -> None:
    """Append groups, each a list of ``(module prefix, recurse)`` owners, in forward order."""
    pending: list[tuple[str, bool]] = [(prefix, False)]  # the module's own direct parameters
    container = isinstance(module, CONTAINERS)

    def flush() -> None:
        if pending:
            groups.append(list(pending))
            pending.clear()

    kinds = Counter(type(c) for c in module.children() if has_params(c))
    for child_name, child in module.named_children():
        if not has_params(child):
            continue
        child_prefix = f"{prefix}{child_name}."
        # A repeated block stays whole even when made of parts (two BERT-style layers written as attributes).
        if _expandable(child) or (not container and kinds[type(child)] == 1 and _staged(child)):
            flush()
            _walk(child, child_prefix, groups)
        elif container or not is_leaf(child):
            flush()
            groups.append([(child_prefix, True)])
        else:  # consecutive leaf layers of a non-container (a stem's conv + norm, a head's norm + linear) group up
            pending.append((child_prefix, True))
    flush()


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Split a model's parameters into its natural block sequence, bottom to top.

    The stem/embeddings, each repeated block of a ModuleList/Sequential (a BERT layer, a ResNet block, a CNN
    stage) and the head each form one group. Works on any ``nn.Module``: containers of composite blocks are
    expanded, and so are plain modules made of stages (a hand-written ResNet's body with its stem and
    ``layer1..layer4``, also inside a wrapper); everything else stays whole, and consecutive single layers outside
    a container form one group.

    Returns:
        list[list[str]]: parameter names per group (partially frozen tensors under their own name); every
        parameter appears exactly once.

    Example:
        >>> import torch.nn as nn, frostline
        >>> len(frostline.layer_groups(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))))
        2
    """
    owners: list[list[tuple[str, bool]]] = []
    parts = sum(1 for child in model.children() if has_params(child))
    if _expandable(model) or isinstance(model, CONTAINERS) or parts >= 2 or _staged(model):  # e.g. body, head
        _walk(model, "", owners)
    else:
        owners.append([("", True)])
    # (module prefix, recurse) -> the first group it owns: a name's group is then found by looking up its own
    # module prefixes, not by testing every group (which costs groups x names on a model of many blocks)
    first: dict[tuple[str, bool], int] = {}
    for i, group in enumerate(owners):
        for owner in group:
            first.setdefault(owner, i)
    groups: list[list[str]] = [[] for _ in owners]
    for name, _ in named_logical_parameters(model):
        prefixes = [""] + [name[:i + 1] for i, c in enumerate(name) if c == "."]  # "", "a.", "a.b." for "a.b.w"
        found = [first[(p, True)] for p in prefixes if (p, True) in first]
        if (prefixes[-1], False) in first:
            found.append(first[(prefixes[-1], False)])
        if found:
            groups[min(found)].append(name)
    return [g for g in groups if g]


def freeze_to(model: nn.Module, n: int, **freeze_kwargs: Any) -> nn.Module:
    """Freeze the layer groups before ``n`` and unfreeze the rest (negative ``n`` counts from the end).

    ``freeze_to(model, -1)`` trains only the head; ``freeze_to(model, 0)`` trains everything.

    Raises:
        ValueError: ``n`` lies past the last group (outside ``-len(groups)..len(groups)``).
        TypeError: ``n`` is not an int.

    Example:
        >>> import frostline
        >>> from frostline.models import small_cnn
        >>> model = frostline.freeze_to(small_cnn(), -1)        # groups: features, head
        >>> sorted({name.split(".")[0] for name in frostline.frozen_names(model)})
        ['features']
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"freeze_to(model, n) takes an int n (the number of layer groups to freeze), got {n!r}")
    groups = layer_groups(model)
    if not -len(groups) <= n <= len(groups):
        raise ValueError(f"freeze_to(model, {n}): the model has {len(groups)} layer groups; n must be in "
                         f"-{len(groups)}..{len(groups)} ({len(groups)} freezes every group, -1 trains only the "
                         "last); see frostline.layer_groups(model)")
    cut = n if n >= 0 else len(groups) + n
    frozen = [name for group in groups[:cut] for name in group]
    trained = [name for group in groups[cut:] for name in group]
    if trained:
        unfreeze(model, trained)
    if frozen:
        freeze(model, frozen, **freeze_kwargs)
    return model
