"""One bit per element: pack a bool tensor into bytes, and expand the bytes back into per-element gate values.

The gradient of ReLU-like activations is a gate (pass / zero, or 1 / slope), so one bit per element is all that
backward needs. Packing works in the tensor's *memory* order (contiguous or channels-last alike) so it never
copies the mask; unpacking is one table lookup (``index_select`` of a 256 x 8 table, one row per byte), which
writes the gate in the dtype the backward kernel wants. Profiling showed why: ``masked_fill``/``torch.where`` with
a bool mask, or multiplying by a uint8 mask, run several times slower on CPU than PyTorch's own
``threshold_backward``, while the table lookup plus one vectorised bitwise AND or multiply matches it.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import Tensor

# Multiplying an int64 whose eight bytes are each 0 or 1 by this constant gathers those bits, in order, into its
# top byte: byte i lands on bit 56 + i, and no two partial products overlap, so nothing carries.
_GATHER = 0x0102040810204080
_LITTLE_ENDIAN = sys.byteorder == "little"


def _memory_order(t: Tensor) -> tuple[int, ...] | None:
    """A permutation under which ``t`` is contiguous (None when it already is, or when no permutation works)."""
    if t.is_contiguous():
        return None
    strides = t.stride()
    order = tuple(sorted(range(t.dim()), key=lambda d: -strides[d]))
    return order if t.permute(order).is_contiguous() else None


def pack(mask: Tensor) -> tuple[Tensor, tuple[int, ...] | None]:
    """Pack a bool tensor into ``uint8`` (bit ``i`` of byte ``j`` is element ``8 j + i`` in memory order).

    Returns the packed bytes and the permutation that :func:`gate` needs to restore the layout. ``mask`` is a
    temporary and is overwritten (packing in place saves a mask-sized allocation).
    """
    order = _memory_order(mask)
    flat = (mask.contiguous() if order is None else mask.permute(order)).reshape(-1)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    if _LITTLE_ENDIAN:
        words = flat.view(torch.int64).mul_(_GATHER)
        return words.view(torch.uint8)[7::8].clone(), order
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8), order


@functools.lru_cache(maxsize=64)
def _table(on_set: float, on_clear: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    bits = (torch.arange(256, device=device).unsqueeze(1) >> torch.arange(8, device=device)) & 1
    return torch.where(bits.bool(), torch.tensor(on_set, dtype=dtype, device=device),
                       torch.tensor(on_clear, dtype=dtype, device=device)).contiguous()


def gate(packed: Tensor, order: tuple[int, ...] | None, shape: torch.Size, on_set: float, on_clear: float,
         dtype: torch.dtype) -> Tensor:
    """Expand packed bits into a tensor of ``shape``: ``on_set`` where the bit is set, ``on_clear`` elsewhere."""
    # under torch.compile the table is traced as constants; the cache is for eager calls
    build = _table.__wrapped__ if torch.compiler.is_compiling() else _table
    table = build(on_set, on_clear, dtype, packed.device)
    flat = torch.index_select(table, 0, packed.int()).view(-1)
    numel = shape.numel()
    if flat.numel() != numel:  # the padding bits of the last byte
        flat = flat[:numel]
    if order is None:
        return flat.view(shape)
    permuted = flat.view([shape[d] for d in order])
    return permuted.permute([order.index(d) for d in range(len(order))])


INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integer view of a float dtype
