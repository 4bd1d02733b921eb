"""How the work of a call grows with the model, counted, not timed: tests stay deterministic on a busy machine.

``growth(prepare, blocks)`` runs the call ``prepare(model)`` returns on a stack of ``blocks`` and of ``4 * blocks``
identical blocks and returns the ratio of the Python and builtin calls each made (``sys.setprofile`` events). Work linear in the model
gives at most 4 (less with a fixed part); work that grows with the square of it (a scan of every name per name)
gives close to 16.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import nn


def stack(blocks: int) -> nn.Module:
    """A Llama-shaped toy: embeddings, ``blocks`` composite blocks in a ModuleList, a final norm and a head."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.ModuleDict({"q": nn.Linear(4, 4), "k": nn.Linear(4, 4), "o": nn.Linear(4, 4)})
            self.norm = nn.LayerNorm(4)
            self.mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layers = nn.ModuleList(Block() for _ in range(blocks))
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 10)

    return Model()


def operations(call: Callable[[], object]) -> int:
    """The number of Python and builtin function calls ``call()`` makes."""
    count = 0

    def tally(frame, event, arg) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(tally)
    try:
        call()
    finally:
        sys.setprofile(None)
    return count


def growth(prepare: Callable[[nn.Module], Callable[[], object]], blocks: int = 16) -> float:
    """Operations of the call ``prepare(model)`` returns, on a model of ``4 * blocks`` blocks over those on one of
    ``blocks`` blocks (``prepare`` does the setup that is not counted; the call runs once before it is counted)."""
    counts = []
    for n in (blocks, 4 * blocks):
        call = prepare(stack(n))
        call()
        counts.append(operations(call))
    return counts[1] / counts[0]
