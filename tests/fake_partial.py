"""A minimal PartialTensor in the "delta" layout, for testing code written against the protocol in _state.py.

The frozen base becomes a buffer under the original name and the trainable rows a new Parameter
``<name>_trainable``. It only stores; it does not change the module's forward.
"""

import torch
from torch import nn

from frostline._state import PARTIAL_ATTR


class DeltaRows:
    strategy = "delta"

    def __init__(self, model: nn.Module, name: str, trainable_rows: list[int]):
        module_name, _, self.local = name.rpartition(".")
        self.module = model.get_submodule(module_name)
        base = self.module._parameters.pop(self.local).detach().clone()
        self.module.register_buffer(self.local, base)
        self.rows = torch.tensor(trainable_rows)
        self.trainable = nn.Parameter(base[self.rows].clone())
        self.module.register_parameter(f"{self.local}_trainable", self.trainable)
        self.module.__dict__.setdefault(PARTIAL_ATTR, {})[self.local] = self

    def full(self) -> torch.Tensor:
        return self.module._buffers[self.local].index_copy(0, self.rows, self.trainable.detach())

    def frozen_mask(self) -> torch.Tensor:
        mask = torch.ones_like(self.module._buffers[self.local], dtype=torch.bool)
        mask[self.rows] = False
        return mask

    def internal_names(self) -> tuple[str, ...]:
        return (f"{self.local}_trainable",)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.trainable]
