"""Recompute fully frozen blocks in backward: keep only a frozen block's inputs, not its interior.

A frozen transformer block downstream of something trainable still has to pass the gradient back, and for that
autograd keeps its attention and MLP activations (lean forwards trim them, but a block keeps a few MiB per 512
tokens). Under activation checkpointing (``torch.utils.checkpoint``, non-reentrant) it keeps its inputs only and
runs its forward again in backward: the same ops on the same inputs, so the gradients are the same (bit-identical
on CPU; checkpointing restores the RNG state, and frozen blocks are in eval anyway). The cost is one more forward
of each frozen block per step, paid only by the blocks that are frozen; a block that trains needs its activations
for its weight gradients, so recomputing it would cost a forward and save nothing: it is never recomputed.

The forward is an instance attribute (``functools.partial``, like the lean forwards), so ``deepcopy`` and pickling
carry it and ``state_dict`` keys stay the same. It checks on every call that the block is still fully frozen and
that autograd records the call, and that every argument is a tensor, a plain value (None, a number, a string)
or a tuple/list of them; otherwise it runs the plain forward (exact, keeping what PyTorch keeps). A KV cache
object, say, is state the block appends to: a replay in backward would see it changed, so a call that passes one
(``use_cache=True`` in a transformers model, the default of most configs) is not recomputed, with a warning:
train with ``model.config.use_cache = False``. ``freeze``/``unfreeze`` remove it from a
block that trains again (``frostline.lean.refresh``); ``recompute(block, False)`` removes it by hand.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import _patch
from .._state import FreezeState, subtree_frozen
from ..errors import FreezeError
from ._common import plain

KEEPS = "its inputs only: fully frozen, it recomputes its forward in backward (activation checkpointing)"


def _records(args: tuple, kwargs: dict) -> bool:
    """Whether autograd records this call: some floating input needs a gradient."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                           for t in (*args, *kwargs.values()))


def _replayable(value: Any) -> bool:
    """Tensors, plain values and tuples/lists of them: what a second forward sees unchanged. Any other object
    may be state the block mutates (a KV cache appends to itself), and a replay would see it changed."""
    if isinstance(value, (tuple, list)):
        return all(_replayable(v) for v in value)
    return value is None or isinstance(value, (Tensor, bool, int, float, str, torch.dtype, torch.device))


def _forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    if _records(args, kwargs) and subtree_frozen(module):
        state = [f"{k}={type(v).__name__}" for k, v in kwargs.items() if not _replayable(v)] + [
            f"argument {i}: {type(v).__name__}" for i, v in enumerate(args) if not _replayable(v)]
        if not state:
            return checkpoint(functools.partial(plain, module), *args, use_reentrant=False, **kwargs)
        warnings.warn(f"frostline.lean.recompute: a frozen {type(module).__name__} was given {', '.join(state)}, "
                      "an object it may change (a KV cache appends to itself), so a replay in backward would not "
                      "see what the forward saw; it runs plain and keeps its activations. For training, pass no "
                      "cache (transformers: use_cache=False, or model.config.use_cache = False)", stacklevel=2)
    return plain(module, *args, **kwargs)


def recomputes(module: nn.Module) -> bool:
    """Whether ``module`` carries the recomputing forward (it recomputes while fully frozen)."""
    return _patch.holds(module, "forward", "recompute")


def recompute(modules: nn.Module | Iterable[nn.Module], enabled: bool = True) -> None:
    """Run each module (a block: a transformer layer, say) under activation checkpointing while it is fully
    frozen, so it keeps only its inputs for backward; ``enabled=False`` restores the plain forward.

    Gradients are exact (the same ops run again in backward); the cost is one more forward per frozen block and
    step. ``frostline.schedules.LayerwiseSampling(..., recompute_frozen=True)`` calls this on the blocks it
    freezes at each draw. ``freeze``/``unfreeze`` drop it from a module that trains again.

    Args:
        modules (nn.Module | Iterable[nn.Module]): the blocks.
        enabled (bool): install (True) or remove (False) the recomputing forward.

    Raises:
        FreezeError: a module already has an instance ``forward`` of its own (a lean forward or someone
            else's), which this would replace.

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> block = lambda: nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
        >>> model = nn.Sequential(nn.Linear(4, 8), block(), block())
        >>> _ = frostline.freeze(model, ["1", "2"])
        >>> x = torch.randn(16, 4)
        >>> frostline.lean.saved_bytes(model, x)["1.1"]      # GELU keeps its input: 16 * 32 * 4 bytes
        2048
        >>> frostline.lean.recompute([model[1], model[2]])
        >>> frostline.lean.saved_bytes(model, x)              # the first Linear's input, each block's input
        {'0': 256, '1': 512, '2': 512}
        >>> frostline.lean.keeps(model[1])
        'its inputs only: fully frozen, it recomputes its forward in backward (activation checkpointing)'
        >>> _ = frostline.unfreeze(model, ["2"]); frostline.lean.keeps(model[2]) is None   # trains: plain again
        True
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, not {enabled!r}")
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"recompute takes modules (blocks), not {type(module).__name__}")
        if enabled and _patch.owner(module, "forward") not in (None, "recompute"):
            raise FreezeError(f"{type(module).__name__} already has an instance forward of its own "
                              f"({module.__dict__['forward']!r}); recompute would replace it. Remove it first, "
                              "or recompute the module's parent instead")
    for module in modules:
        if enabled:
            _patch.install(module, "forward", "recompute", _forward)
        else:
            _patch.remove(module, "forward", "recompute")


def release(state: FreezeState) -> None:
    """Drop the recomputing forward from the modules that train again (``refresh`` calls this)."""
    for module in state.modules.values():
        if recomputes(module) and not subtree_frozen(module):
            _patch.remove(module, "forward", "recompute")
