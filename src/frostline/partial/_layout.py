"""Which elements of one tensor are frozen, and the checks that turn ``rows=``/``dim=``/``mask=`` into that.

A :class:`Layout` is either *slices* (whole rows along one ``dim``: a bool per slice) or *elements* (a bool per
element). Strategies can serve slices more cheaply (a conv's output filters, an embedding's token rows), so a mask
that happens to freeze whole slices is stored as slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import FreezeError

Rows = Sequence[int] | range | Tensor


class Layout:
    """The frozen elements of a tensor of ``shape``.

    ``dim`` is the sliced dimension and ``frozen`` holds one bool per slice, or ``dim`` is None and ``frozen`` has
    the tensor's shape. ``frozen`` lives on the tensor's device.
    """

    def __init__(self, shape: torch.Size, frozen: Tensor, dim: int | None):
        self.shape, self.frozen, self.dim = torch.Size(shape), frozen, dim

    # -- views -----------------------------------------------------------------------------------------------
    def broadcastable(self) -> Tensor:
        """``frozen`` shaped to broadcast against the tensor (size 1 on every dimension but ``dim``)."""
        if self.dim is None:
            return self.frozen
        view = [1] * len(self.shape)
        view[self.dim] = self.shape[self.dim]
        return self.frozen.view(view)

    def full(self) -> Tensor:
        """One bool per element, True where frozen (an expanded view for slices)."""
        return self.broadcastable().expand(self.shape)

    def trainable_index(self) -> Tensor:
        """Trainable slices along ``dim``, or trainable elements as flat row-major indices (sorted, int64)."""
        return torch.nonzero(~self.frozen.reshape(-1)).flatten()

    def frozen_index(self) -> Tensor:
        return torch.nonzero(self.frozen.reshape(-1)).flatten()

    def trainable_fraction(self) -> float:
        return float((~self.frozen).float().mean()) if self.frozen.numel() else 0.0

    def all_frozen(self) -> bool:
        return bool(self.frozen.all())

    def none_frozen(self) -> bool:
        return not bool(self.frozen.any())

    def is_rows(self, dim: int = 0) -> bool:
        return self.dim == dim

    # -- combining -------------------------------------------------------------------------------------------
    def union(self, other: Layout) -> Layout:
        if self.dim == other.dim:
            return Layout(self.shape, self.frozen | other.frozen, self.dim).normalized()
        return Layout(self.shape, self.full() | other.full(), None).normalized()

    def minus(self, other: Layout) -> Layout:
        if self.dim == other.dim:
            return Layout(self.shape, self.frozen & ~other.frozen, self.dim).normalized()
        return Layout(self.shape, self.full() & ~other.full(), None).normalized()

    def normalized(self) -> Layout:
        """Elements that freeze whole slices along some dimension become slices (the lowest such dimension)."""
        if self.dim is not None or not len(self.shape):
            return self
        for dim in range(len(self.shape)):
            others = tuple(d for d in range(len(self.shape)) if d != dim)
            if not others:
                return Layout(self.shape, self.frozen.clone(), dim)
            some = self.frozen.any(dim=others)
            if torch.equal(self.frozen.all(dim=others), some):
                return Layout(self.shape, some, dim)
        return self

    @classmethod
    def whole(cls, shape: torch.Size, frozen: bool, device: torch.device) -> Layout:
        rows = shape[0] if len(shape) else 1
        dim = 0 if len(shape) else None
        return cls(shape, torch.full((rows,) if dim is not None else (), frozen, dtype=torch.bool, device=device), dim)


def request(name: str, param: Tensor, rows: Rows | None, dim: int, mask: Tensor | None) -> Layout:
    """Check ``rows``/``dim``/``mask`` against ``param`` (named ``name`` in messages) and return the layout they
    describe. Raises :class:`FreezeError` saying what was expected."""
    shape = param.shape
    if rows is not None and mask is not None:
        raise FreezeError(f"{name}: pass rows= (whole slices along dim) or mask= (single elements), not both")
    if mask is not None:
        if dim != 0:
            raise FreezeError(f"{name}: dim= applies to rows=; a mask= already names single elements")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != shape:
            got = (f"{mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, Tensor)
                   else type(mask).__name__)
            raise FreezeError(f"{name}: mask must be a bool tensor of shape {tuple(shape)} (the parameter's shape, "
                              f"True = frozen), got a {got}")
        return Layout(shape, mask.to(param.device), None).normalized()
    if not len(shape):
        raise FreezeError(f"{name} is a 0-d parameter and has no rows; freeze it whole (no rows=)")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -len(shape) <= dim < len(shape):
        raise FreezeError(f"{name}: dim must be an int in [{-len(shape)}, {len(shape) - 1}] (the parameter has shape "
                          f"{tuple(shape)}), got {dim!r}")
    dim %= len(shape)
    index = row_index(name, rows, shape[dim], dim)
    frozen = torch.zeros(shape[dim], dtype=torch.bool, device=param.device)
    frozen[index.to(param.device)] = True
    return Layout(shape, frozen, dim)


def row_index(name: str, rows: Rows | None, size: int, dim: int) -> Tensor:
    if isinstance(rows, Tensor):
        if rows.dtype == torch.bool or rows.is_floating_point() or rows.is_complex() or rows.dim() > 1:
            raise FreezeError(f"{name}: rows must be a 1-D integer tensor, a list or a range of indices along dim "
                              f"{dim}, got a {rows.dtype} tensor of shape {tuple(rows.shape)}; for a bool selector "
                              "pass rows=selector.nonzero().flatten()")
        index = rows.detach().reshape(-1).to("cpu", torch.int64)
    else:
        if isinstance(rows, (str, bytes)) or not isinstance(rows, (Sequence, range)) or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in rows):
            raise FreezeError(f"{name}: rows must be a list, tuple or range of ints (or a 1-D integer tensor) "
                              f"indexing dim {dim}, got {rows!r}")
        index = torch.tensor(list(rows), dtype=torch.int64)
    bad = index[(index < -size) | (index >= size)]
    if bad.numel():
        raise FreezeError(f"{name}: rows must lie in 0..{size - 1} (or -{size}..-1): dim {dim} has {size} slices; "
                          f"got {bad[:5].tolist()}")
    return index % size
