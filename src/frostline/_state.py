"""Where frostline keeps its per-module bookkeeping, and the view of a model's *logical* parameters.

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


def partial_tensors(module: nn.Module) -> dict[str, PartialTensor]:
    """The partially frozen tensors owned directly by ``module``, by local name."""
    return module.__dict__.get(PARTIAL_ATTR, {})


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


def _local_tensor(module: nn.Module, local: str) -> Tensor:
    if local in module._parameters:
        return module._parameters[local]
    return module._buffers[local]


def named_logical_parameters(model: nn.Module, *, remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for every parameter as the user knows it.

    Ordinary Parameters are yielded as ``named_parameters`` yields them. A partially frozen tensor is yielded once,
    under its original name, as the tensor its strategy keeps under that name; the strategy's internal Parameters
    are not yielded. With ``remove_duplicate=False`` a tied parameter is yielded under each of its names.
    """
    seen: set[int] = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        partial = partial_tensors(module)
        hidden = {n for p in partial.values() for n in p.internal_names()}
        names = list(module._parameters) + [n for n in partial if n not in module._parameters]
        for local in names:
            if local in hidden:
                continue
            tensor = _local_tensor(module, local)
            if tensor is None:
                continue
            if remove_duplicate:
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
            yield (f"{module_name}.{local}" if module_name else local), tensor


def trainable_count(model: nn.Module, name: str, tensor: Tensor) -> int:
    """How many elements of logical parameter ``name`` train (all, none, or a partial tensor's share)."""
    partial = get_partial(model, name)
    if partial is not None:
        return int((~partial.frozen_mask()).sum())
    return tensor.numel() if tensor.requires_grad else 0
