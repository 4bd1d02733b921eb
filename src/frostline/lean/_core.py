"""Which modules run lean, and the switch that installs or removes their lean forward.

A module runs lean when it is *eligible* and its recorded choice (``module.__dict__["_frostline_lean"]``) is
True. The lean forward is installed as an instance attribute, ``functools.partial(family_forward, module)``, like
``freeze``'s eval override: plain attributes, so ``deepcopy`` and pickling carry it, the class never changes and
``state_dict`` keys stay the same. A module whose class overrides ``forward``, or that already has an instance
``forward`` of someone else's, is left alone.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.nn.parameter import is_lazy

from .._state import partial_tensors
from ..errors import FreezeError
from . import _recompute as recompute
from ._registry import COVERS, FORWARDS, Cover, covering

CHOICE = "_frostline_lean"


def _default() -> bool:
    """``frostline.lean.DEFAULT`` now: users set it on the package, so it is read there on every call, never
    copied (a copy taken at import would ignore ``frostline.lean.DEFAULT = False``)."""
    from .. import lean

    if not isinstance(lean.DEFAULT, bool):
        raise FreezeError(f"frostline.lean.DEFAULT must be True or False, not {lean.DEFAULT!r}")
    return lean.DEFAULT


_OURS = FORWARDS  # the registry's live set of lean forwards (families register theirs on import)


def cover(module: nn.Module) -> Cover | None:
    """The lean forward (None: PyTorch's own is already lean) and what it keeps, for a covered module."""
    base = covering(type(module))
    return None if base is None else COVERS[base]


def _owns(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values()) or bool(partial_tensors(module))


def _fully_frozen(module: nn.Module) -> bool:
    params = [p for p in module._parameters.values() if p is not None]
    return (bool(params) and not partial_tensors(module) and not any(p.requires_grad for p in params)
            and not any(is_lazy(p) for p in params))


def _ours(module: nn.Module) -> bool:
    fn = module.__dict__.get("forward")
    return isinstance(fn, functools.partial) and fn.func in _OURS


def _eligible(modules: list[nn.Module]) -> list[bool]:
    """Per module: may it run lean?

    A module with parameters: when it is fully frozen (no trainable and no partially frozen tensor).
    A parameter-free module (ReLU, pooling, ...): its lean form is exact anyway; it pays where its output is not
    also held for a weight gradient downstream, i.e. when the next module with parameters (in registration
    order; the previous one at the end of the model) is fully frozen. The parent rule of ``eval_frozen`` would
    miss the ReLU that sits beside a trainable first layer and feeds the frozen network.
    """
    owns = [_owns(m) for m in modules]
    frozen = [o and _fully_frozen(m) for o, m in zip(owns, modules, strict=False)]
    after: list[bool | None] = [None] * len(modules)
    before: list[bool | None] = [None] * len(modules)
    last = None
    for i in reversed(range(len(modules))):
        after[i] = last
        last = frozen[i] if owns[i] else last
    last = None
    for i in range(len(modules)):
        before[i] = last
        last = frozen[i] if owns[i] else last
    return [f if o else a if a is not None else b if b is not None else True
            for o, f, a, b in zip(owns, frozen, after, before, strict=False)]


def refresh(model: nn.Module, lean: bool | None) -> None:
    """Re-decide which modules run lean after the frozen set changed (``freeze``/``unfreeze`` call this).

    Args:
        model (nn.Module): the model.
        lean (bool | None): the choice for modules that became eligible since the last call; None gives them
            ``frostline.lean.DEFAULT`` as it is at this call. Modules already eligible keep their choice; modules
            no longer eligible lose the lean forward and their choice.

    Raises:
        FreezeError: ``lean`` (or ``frostline.lean.DEFAULT``) is not True, False or None.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> _ = model.requires_grad_(False)     # frozen by hand, behind frostline's back
        >>> frostline.lean.refresh(model, True)
        >>> "forward" in model[0].__dict__, "forward" in model[1].__dict__
        (True, True)
    """
    if lean is not None and not isinstance(lean, bool):
        raise FreezeError(f"lean must be True, False or None (frostline's default), not {lean!r}")
    recompute.release(model)  # a recomputed block that trains again runs plain: it needs its activations
    modules = [m for _, m in model.named_modules()]
    for module, eligible in zip(modules, _eligible(modules), strict=False):
        found = cover(module)
        foreign = "forward" in module.__dict__ and not _ours(module)
        if found is None or foreign or not eligible:
            if _ours(module):
                del module.__dict__["forward"]
            module.__dict__.pop(CHOICE, None)
            continue
        choice = module.__dict__.get(CHOICE)
        if choice is None:  # newly eligible: this call's lean, or the default
            choice = module.__dict__[CHOICE] = _default() if lean is None else lean
        forward = found[0]
        if choice and forward is not None and not _ours(module):
            module.__dict__["forward"] = functools.partial(forward, module)
        elif not choice and _ours(module):
            del module.__dict__["forward"]


def keeps(module: nn.Module) -> str | None:
    """What ``module`` keeps for backward in its lean form, or None when it does not run lean.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), lean=True)
        >>> frostline.lean.keeps(model[1])
        'a 1-bit mask per element; not the input or output'
        >>> frostline.lean.keeps(frostline.unfreeze(model)[1]) is None
        True
    """
    if recompute.recomputes(module):
        return recompute.KEEPS if recompute.fully_frozen(module) else None
    found = cover(module)
    if found is None or not module.__dict__.get(CHOICE):
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_var is None):
        return "the input, as PyTorch does (batch statistics: the lean form serves eval-form BatchNorm only)"
    return found[1]
