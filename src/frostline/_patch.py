"""Every instance attribute frostline puts on a module (a ``forward``, ``train`` or ``extra_repr`` of its own), put
and removed here, in one fixed order, and recorded so a user can see it: :func:`frostline.patched`.

A patch is ``functools.partial(function, module)`` of a module-level function, stored in the module's ``__dict__``:
the class never changes, ``state_dict`` keys stay the same, and ``deepcopy``, pickling and ``torch.compile`` see
plain attributes. ``module.__dict__["_frostline_patches"]`` records which owner holds which slot.

Owners of ``forward``, strongest first: ``partial`` (a delta or split tensor needs its own forward), ``recompute``
(a fully frozen block replays its forward in backward), ``lean`` (a fully frozen leaf keeps less for backward). A
stronger owner displaces a weaker one; a weaker one waits until the stronger one leaves. An instance attribute
frostline did not put there (the user's own forward) is never replaced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ._state import KEEP_EVAL_ATTR, WAS_TRAINING_ATTR, kept_in_eval, own_tensors, partial_tensors

__all__ = ["patched"]

RECORD = "_frostline_patches"  # module.__dict__: {slot: owner}
_STRENGTH = {"partial": 3, "recompute": 2, "lean": 1, "eval": 1, "repr": 1}


def owner(module: nn.Module, slot: str) -> str | None:
    """Who holds ``module.<slot>``: a frostline owner's name, ``"user"`` for someone else's instance attribute,
    None when the class attribute is in force."""
    if slot not in module.__dict__:
        return None
    return module.__dict__.get(RECORD, {}).get(slot, "user")


def install(module: nn.Module, slot: str, who: str, function: Callable[..., Any]) -> bool:
    """Put ``functools.partial(function, module)`` at ``module.<slot>`` for ``who``; True when it is there now.

    Nothing changes (False) when the user's own attribute or a stronger owner's holds the slot.
    """
    current = owner(module, slot)
    patch = functools.partial(function, module)
    if current == who and _same(module.__dict__[slot], patch):
        return True
    if current == "user" or (current is not None and _STRENGTH[current] > _STRENGTH[who]):
        return False
    module.__dict__[slot] = patch
    module.__dict__.setdefault(RECORD, {})[slot] = who
    return True


def remove(module: nn.Module, slot: str, who: str) -> None:
    """Take ``who``'s attribute off ``module.<slot>`` (nothing happens when another owner holds it)."""
    if owner(module, slot) != who:
        return
    del module.__dict__[slot]
    record = module.__dict__[RECORD]
    del record[slot]
    if not record:
        del module.__dict__[RECORD]


def holds(module: nn.Module, slot: str, who: str, function: Callable[..., Any] | None = None) -> bool:
    """Whether ``who`` holds ``module.<slot>`` (with ``function``, when given)."""
    if owner(module, slot) != who:
        return False
    return function is None or _same(module.__dict__[slot], functools.partial(function, module))


def _same(held: Any, patch: functools.partial) -> bool:
    # partial flattens nested partials, so compare what will be called, not the objects
    return (isinstance(held, functools.partial) and held.func is patch.func and held.args == patch.args
            and held.keywords == patch.keywords)


class Swap:
    """Within a ``with`` block, each module's ``forward`` is the given callable; on exit exactly what was there
    before (a patch or the class's). The feature cache stands in for its prefix this way, for one call. A plain
    class, not a generator: a cached step pays for every object made per call."""

    def __init__(self, pairs: list[tuple[nn.Module, Callable[..., Any]]]):
        self.pairs = pairs
        self.previous: list[tuple[nn.Module, Any]] | None = None  # while entered: the forwards to restore

    def __enter__(self) -> None:
        self.previous = [(m, m.__dict__.get("forward", _MISSING)) for m, _ in self.pairs]
        for module, forward in self.pairs:
            module.__dict__["forward"] = forward

    def __exit__(self, *exc: Any) -> None:
        previous, self.previous = self.previous or [], None
        for module, before in reversed(previous):
            if before is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = before


_MISSING = object()


# -- what a user sees -------------------------------------------------------------------------------------------
def describe(module: nn.Module) -> str:
    """What frostline changed on ``module``, in words ("" when nothing): read live, so it never goes stale."""
    words = []
    own = list(own_tensors(module))
    partial = partial_tensors(module)
    frozen = [local for local, t in own if not t.requires_grad and local not in partial]
    if own and len(frozen) == len(own):
        words.append("frozen")
    elif frozen:
        words.append(f"frozen: {', '.join(frozen)}")
    words += [f"{local} partially frozen ({part.strategy})" for local, part in partial.items()]
    if kept_in_eval(module):
        words.append("kept in eval")
    forward = owner(module, "forward")
    if forward in ("lean", "recompute"):
        words.append("lean forward" if forward == "lean" else "recomputes in backward")
    return "frostline: " + ", ".join(words) if words else ""


def _extra_repr(module: nn.Module) -> str:
    base = type(module).extra_repr(module)
    label = describe(module)
    return f"{base}, {label}" if base and label else base or label


def mark(modules: Iterable[nn.Module]) -> None:
    """Show in ``repr(model)`` what frostline changed (an ``extra_repr`` on each of ``modules`` it touched)."""
    for module in modules:
        if describe(module):
            install(module, "extra_repr", "repr", _extra_repr)
        else:
            remove(module, "extra_repr", "repr")


def patched(model: nn.Module) -> dict[str, dict[str, str]]:
    """Which instance attributes frostline put on ``model``'s modules, by module name: ``{slot: owner}``.

    ``forward`` is held by ``partial`` (a delta or split tensor's forward), ``recompute`` or ``lean``; ``train`` by
    ``eval`` (kept in inference behaviour while fully frozen); ``extra_repr`` by ``repr`` (the marks ``print(model)``
    shows). ``unfreeze`` of everything removes them all.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), "0")
        >>> frostline.patched(model)["0"]
        {'train': 'eval', 'forward': 'lean', 'extra_repr': 'repr'}
        >>> print(model)
        Sequential(
          (0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), frostline: frozen, kept in eval, lean forward)
          (1): ReLU()
          (2): Conv2d(4, 4, kernel_size=(3, 3), stride=(1, 1))
        )
        >>> frostline.patched(frostline.unfreeze(model))
        {}
    """
    out = {}
    for name, module in model.named_modules():
        record = module.__dict__.get(RECORD)
        if record:
            out[name] = dict(record)
    return out


def keep_eval(module: nn.Module, train: Callable[..., nn.Module]) -> None:
    """Hold ``module`` in eval (``train`` is the replacement ``freeze`` uses); remember its mode to restore."""
    if install(module, "train", "eval", train):
        module.__dict__[KEEP_EVAL_ATTR] = True
        module.__dict__.setdefault(WAS_TRAINING_ATTR, module.training)
        module.training = False


def release_eval(module: nn.Module) -> None:
    """Let ``module`` follow ``train()``/``eval()`` again, in the mode it had when frozen."""
    if not kept_in_eval(module):
        return
    remove(module, "train", "eval")
    del module.__dict__[KEEP_EVAL_ATTR]
    # The mode it had when frozen, not its parent's: frameworks (Lightning) unfreeze while the root is in eval and
    # do not call .train() recursively afterwards.
    module.train(module.__dict__.pop(WAS_TRAINING_ATTR, True))

