"""Which modules run lean, and the switch that installs or removes their lean forward.

A module runs lean when it is *eligible* (fully frozen by frostline's one rule, :mod:`frostline._state`; or a
parameter-free module whose next module with parameters is) and its recorded choice
(``module.__dict__["_frostline_lean"]``) is True. The lean forward is an instance attribute put there by
:mod:`frostline._patch` (owner ``lean``, the weakest): a module whose class overrides ``forward``, or whose
``forward`` someone else holds, is left alone.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parameter import is_lazy

from .. import _patch
from .._state import FreezeState, subtree_frozen
from ..errors import FreezeError
from . import _recompute as recompute
from ._registry import COVERS, Cover, covering

CHOICE = "_frostline_lean"


def _default() -> bool:
    """``frostline.lean.DEFAULT`` now: users set it on the package, so it is read there on every call, never
    copied (a copy taken at import would ignore ``frostline.lean.DEFAULT = False``)."""
    from .. import lean

    if not isinstance(lean.DEFAULT, bool):
        raise FreezeError(f"frostline.lean.DEFAULT must be True or False, not {lean.DEFAULT!r}")
    return lean.DEFAULT


def cover(module: nn.Module) -> Cover | None:
    """The lean forward (None: PyTorch's own is already lean) and what it keeps, for a covered module."""
    base = covering(type(module))
    return None if base is None else COVERS[base]


def _eligible(state: FreezeState) -> dict[str, bool]:
    """Per module name: may it run lean?

    A module with parameters beneath it: when it is fully frozen (the one rule of :mod:`frostline._state`), and
    none of its own parameters is still lazy. A parameter-free module (ReLU, pooling, ...): its lean form is exact
    anyway; it pays where its output is not also held for a weight gradient downstream, so it is eligible when it
    is fully frozen by the rule or the next module with parameters (in registration order; the previous one at the
    end of the model) is.
    """
    names = list(state.modules)
    owns = [any(p is not None for p in state.modules[n]._parameters.values()) for n in names]
    frozen = [state.frozen[n] and not any(p is not None and is_lazy(p) for p in state.modules[n]._parameters.values())
              for n in names]
    after: list[bool | None] = [None] * len(names)
    before: list[bool | None] = [None] * len(names)
    last = None
    for i in reversed(range(len(names))):
        after[i] = last
        last = frozen[i] if owns[i] else last
    last = None
    for i in range(len(names)):
        before[i] = last
        last = frozen[i] if owns[i] else last
    return {n: (f if state.has_parameters[n] else f or (a if a is not None else b if b is not None else True))
            for n, f, a, b in zip(names, frozen, after, before, strict=True)}


def refresh(model: nn.Module, lean: bool | None, state: FreezeState | None = None) -> None:
    """Re-decide which modules run lean after the frozen set changed (``freeze``/``unfreeze`` call this).

    Args:
        model (nn.Module): the model.
        lean (bool | None): the choice for modules that became eligible since the last call; None gives them
            ``frostline.lean.DEFAULT`` as it is at this call. Modules already eligible keep their choice; modules
            no longer eligible lose the lean forward and their choice.
        state (FreezeState | None): the model's freeze state, when the caller has derived it already.

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
    state = state or FreezeState(model)
    recompute.release(state)  # a recomputed block that trains again runs plain: it needs its activations
    for name, eligible in _eligible(state).items():
        module = state.modules[name]
        found = cover(module)
        if found is None or not eligible:
            _patch.remove(module, "forward", "lean")
            module.__dict__.pop(CHOICE, None)
            continue
        choice = module.__dict__.get(CHOICE)
        if choice is None:  # newly eligible: this call's lean, or the default
            choice = module.__dict__[CHOICE] = _default() if lean is None else lean
        forward = found[0]
        if choice and forward is not None:
            _patch.install(module, "forward", "lean", forward)
        else:
            _patch.remove(module, "forward", "lean")


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
        return recompute.KEEPS if subtree_frozen(module) else None
    found = cover(module)
    if found is None or not module.__dict__.get(CHOICE):
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_var is None):
        return "the input, as PyTorch does (batch statistics: the lean form serves eval-form BatchNorm only)"
    return found[1]
