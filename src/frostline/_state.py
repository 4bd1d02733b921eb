"""The one owner of a model's freeze state: which tensors are frozen, which modules are fully frozen, which are kept
in eval, and the view of a model's *logical* parameters every subsystem reads.

Everything here is derived from the model itself (``requires_grad``, the partial strategies recorded on modules, the
eval marks): nothing is cached across calls, so a ``requires_grad_`` flipped by hand is seen at once.
:class:`FreezeState` computes the module-level answers in one pass over the model (cost linear in modules and
tensors); ``freeze``, ``guard``, ``audit``, checkpoints, the cache, lean and distributed all ask it instead of
deriving their own.

**The rule for "fully frozen" modules** (one rule, used everywhere):

- a module with logical parameters beneath it (its own or its descendants') is fully frozen when every one of them
  is frozen whole (none trains, none is partially frozen);
- a module with no parameters beneath it (ReLU, Dropout, pooling, an affine-free norm) has nothing of its own to
  freeze: it takes the answer of its nearest ancestor that has parameters beneath it (so BERT's attention dropout
  follows its attention block, and an affine-free BatchNorm in a frozen backbone is frozen with it); with no such
  ancestor it is not frozen.

A fully frozen module is guarded with its buffers, its buffers leave trainable checkpoints while it is kept in eval,
``freeze`` keeps it in eval (``eval_frozen``), and it runs lean where :mod:`frostline.lean` covers it. Lean also runs
a parameter-free module whose *next* module with parameters is fully frozen (the ReLU between a trainable first
layer and a frozen network): its lean form is exact whatever the rule says, and that is where it saves memory.

A partially frozen tensor may be stored by its strategy as several tensors (a frozen base buffer plus a small
trainable Parameter, say). Users still name it by its original name (``"conv1.weight"``), so selection,
``is_frozen``, ``summary``, ``guard`` and checkpoints all go through :func:`named_logical_parameters`, which shows
every tensor under the name the user gave it and hides a strategy's internal Parameters.

The bookkeeping lives in plain attributes of the modules (no handles, no closures), so ``copy.deepcopy`` and
pickling carry it along.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

PARTIAL_ATTR = "_frostline_partial"  # module attribute: {local tensor name: PartialTensor}
KEEP_EVAL_ATTR = "_frostline_keep_eval"  # module attribute: True while freeze keeps the module in eval
WAS_TRAINING_ATTR = "_frostline_was_training"  # the mode before freezing, restored when the module is unfrozen


@runtime_checkable
class PartialTensor(Protocol):
    """What a partial-freezing strategy exposes about one partially frozen tensor."""

    strategy: str

    def full(self) -> Tensor:
        """The effective values, original shape, detached (what ``state_dict`` holds)."""

    def frozen_mask(self) -> Tensor:
        """Bool tensor of the original shape, True where the element is frozen."""

    def internal_names(self) -> tuple[str, ...]:
        """Names of the module's own Parameters/buffers that are this strategy's storage (hidden from users)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The Parameters an optimizer must hold for this tensor's trainable elements."""


# -- per-module facts -----------------------------------------------------------------------------------------------
def partial_tensors(module: nn.Module) -> dict[str, PartialTensor]:
    """The partially frozen tensors owned directly by ``module``, by local name."""
    return module.__dict__.get(PARTIAL_ATTR, {})


def hidden_names(module: nn.Module) -> set[str]:
    """The module's Parameters and buffers that are a strategy's internal storage."""
    return {n for p in partial_tensors(module).values() for n in p.internal_names()}


def own_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(local name, tensor)`` for each logical parameter ``module`` owns directly (not its children's)."""
    partial = partial_tensors(module)
    hidden = hidden_names(module) if partial else ()
    for local, tensor in module._parameters.items():
        if tensor is not None and local not in hidden:
            yield local, tensor
    for local in partial:
        if local not in module._parameters:
            buffer = module._buffers.get(local)
            if buffer is not None:
                yield local, buffer


def trains_own(module: nn.Module) -> bool:
    """Whether a tensor ``module`` owns directly trains, whole or in part (checked live: flags may flip by hand)."""
    return bool(partial_tensors(module)) or any(p is not None and p.requires_grad for p in module._parameters.values())


def subtree_frozen(module: nn.Module) -> bool:
    """The rule for one module judged on its own subtree: it has parameters beneath it and all are frozen whole.

    (:class:`FreezeState` adds the ancestor part of the rule for modules without parameters.)
    """
    has = False
    for m in module.modules():
        if trains_own(m):
            return False
        has = has or any(p is not None for p in m._parameters.values())
    return has


def kept_in_eval(module: nn.Module) -> bool:
    """Whether ``freeze`` keeps ``module`` in inference behaviour (``eval_frozen``) until it is unfrozen."""
    return bool(module.__dict__.get(KEEP_EVAL_ATTR))


# -- logical parameters -----------------------------------------------------------------------------------------
def get_partial(model: nn.Module, name: str) -> PartialTensor | None:
    """The :class:`PartialTensor` behind logical parameter ``name``, or None when it is not partially frozen."""
    module_name, _, local = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return None
    return partial_tensors(module).get(local)


def partials_by_name(model: nn.Module) -> dict[str, PartialTensor]:
    """Every partially frozen tensor of ``model`` under each of its logical names, from one walk of the model: for
    callers asking about many names (``get_partial`` looks each one's module up from the root)."""
    return {f"{module_name}.{local}" if module_name else local: partial
            for module_name, module in model.named_modules(remove_duplicate=False)
            for local, partial in partial_tensors(module).items()}


def named_logical_parameters(model: nn.Module, *, remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for every parameter as the user knows it.

    Ordinary Parameters are yielded as ``named_parameters`` yields them. A partially frozen tensor is yielded once,
    under its original name, as the tensor its strategy keeps under that name; the strategy's internal Parameters
    are not yielded. With ``remove_duplicate=False`` a tied parameter is yielded under each of its names.
    """
    seen: set[int] = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, tensor in own_tensors(module):
            if remove_duplicate:
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
            yield (f"{module_name}.{local}" if module_name else local), tensor


def trainable_count(tensor: Tensor, partial: PartialTensor | None) -> int:
    """How many elements of a logical parameter train: all, none, or its partial tensor's share (``partial``:
    what ``get_partial``/``partials_by_name`` gave for it)."""
    if partial is not None:
        return int((~partial.frozen_mask()).sum())
    return tensor.numel() if tensor.requires_grad else 0


# -- the model-level view ---------------------------------------------------------------------------------------
class FreezeState:
    """A model's freeze state as it is now, derived in one pass (linear in modules and tensors).

    Attributes:
        modules (dict[str, nn.Module]): every module by name, in ``named_modules`` order.
        frozen (dict[str, bool]): per module name, fully frozen by the rule above.
        has_parameters (dict[str, bool]): per module name, whether logical parameters lie beneath it.

    Example:
        >>> import torch.nn as nn, frostline
        >>> from frostline._state import FreezeState
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), nn.Dropout())
        >>> _ = frostline.freeze(model, "1")
        >>> state = FreezeState(model)
        >>> [name for name, frozen in state.frozen.items() if frozen]   # "1.0" (ReLU) follows its block "1"
        ['1', '1.0', '1.1']
        >>> state.frozen["2"]                                            # the root decides the Dropout: it trains
        False
    """

    def __init__(self, model: nn.Module):
        self.modules: dict[str, nn.Module] = dict(model.named_modules())
        below: dict[int, tuple[bool, bool]] = {}  # id(module) -> (parameters beneath, all of them frozen whole)

        def walk(module: nn.Module) -> tuple[bool, bool]:
            known = below.get(id(module))
            if known is None:  # a module registered under two parents is walked once
                has_below = any(p is not None for p in module._parameters.values())
                frozen_below = not trains_own(module)
                for child in module.children():
                    child_has, child_frozen = walk(child)
                    has_below, frozen_below = has_below or child_has, frozen_below and child_frozen
                known = below[id(module)] = (has_below, frozen_below)
            return known

        walk(model)
        has = {name: below[id(m)][0] for name, m in self.modules.items()}
        all_frozen = {name: below[id(m)][1] for name, m in self.modules.items()}
        self.has_parameters = has
        self.frozen: dict[str, bool] = {}
        for name in self.modules:  # parents first: a parameter-free module takes its nearest deciding ancestor's
            if has[name]:
                self.frozen[name] = all_frozen[name]
            else:
                parent = name.rpartition(".")[0] if name else None
                self.frozen[name] = self.frozen.get(parent, False) if parent is not None else False

    def frozen_modules(self) -> list[str]:
        """Names of the fully frozen modules, in model order."""
        return [n for n, f in self.frozen.items() if f]

    def beneath(self, names: set[str] | list[str]) -> set[str]:
        """Module names whose deciding region (their own subtree, or their deciding ancestor's) holds one of the
        parameter ``names``."""
        prefixes = set()
        for name in names:
            parts = name.split(".")[:-1]
            for i in range(len(parts) + 1):
                prefixes.add(".".join(parts[:i]))
        out = set()
        for module_name in self.modules:
            decider = module_name
            while not self.has_parameters[decider] and decider:
                decider = decider.rpartition(".")[0]
            if decider in prefixes:
                out.add(module_name)
        return out
