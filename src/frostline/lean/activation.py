"""ReLU, ReLU6/Hardtanh and LeakyReLU: keep one bit per element (PyTorch keeps a full-width input or output).

Their input gradient is a gate, so a bit-packed mask (1/32 of a float32 activation) gives it exactly:

- ReLU and Hardtanh: backward expands the bits into an integer mask (all ones where the gate is open, 0 where
  it is shut) and ANDs it into the gradient's bits: the same values as PyTorch's ``threshold_backward`` /
  ``hardtanh_backward``, NaN gradients and signed zeros included, at about the same speed.
- LeakyReLU multiplies the gradient by 1 or ``negative_slope``, looked up per element in the precision PyTorch
  computes in (float32 for half types), so ``grad * factor`` rounds exactly as ``leaky_relu_backward`` does.

The bits follow PyTorch's own tests (``result <= 0`` for ReLU, read off the output; ``x > 0`` for LeakyReLU;
``x <= min or x >= max`` for Hardtanh), so a NaN input gates as PyTorch does. GELU, SiLU, Tanh and Sigmoid
need no lean form: PyTorch already keeps only what their exact gradient needs (the input for GELU/SiLU, the
output for Tanh/Sigmoid, which the next layer may hold anyway).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .._ops import cast
from . import _bits
from ._common import opmath, plain, wants_lean
from ._registry import register


def _zero_bits(x: Tensor, low: float, high: float) -> Tensor:
    """Where Hardtanh zeroes the gradient: ``x <= low`` or ``x >= high`` (the comparisons of its backward)."""
    return x.le(low).logical_or_(x.ge(high))


class _Gate(Function):
    """``y = f(x)`` for a gated activation; backward needs only where the gate is open."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kind: str, a: float, b: float, inplace: bool) -> Tensor:
        # a: LeakyReLU's slope or Hardtanh's min; b: Hardtanh's max (the others pass 0.0)
        if kind == "relu":
            y = F.relu(x, inplace)
            # the gate is open where y != 0, as in threshold_backward (NaN passes, -0.0 does not), and
            # float-to-bool is a conversion kernel, several times faster than a comparison
            packed, order = _bits.pack(y.bool())
        else:
            bits = x.gt(0) if kind == "leaky" else _zero_bits(x, a, b)
            packed, order = _bits.pack(bits)
            y = F.leaky_relu(x, a, inplace) if kind == "leaky" else F.hardtanh(x, a, b, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(packed)
        ctx.layout, ctx.shape, ctx.kind, ctx.slope = order, x.shape, kind, a
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (packed,) = ctx.saved_tensors
        if ctx.kind == "leaky":
            factor = _bits.gate(packed, ctx.layout, ctx.shape, 1.0, ctx.slope, opmath(grad.dtype))
            return cast(grad * factor, grad.dtype), None, None, None, None
        as_int = _bits.INT_OF[grad.element_size()]
        open_, shut = (-1, 0) if ctx.kind == "relu" else (0, -1)  # -1: every bit set, so AND keeps the gradient
        mask = _bits.gate(packed, ctx.layout, ctx.shape, open_, shut, as_int)
        return mask.bitwise_and_(grad.view(as_int)).view(grad.dtype), None, None, None, None


def relu_forward(module: nn.ReLU, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a ReLU."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor) or not wants_lean(module, x) or x.element_size() not in _bits.INT_OF:
        return plain(module, *args, **kwargs)
    return _Gate.apply(x, "relu", 0.0, 0.0, module.inplace)


def hardtanh_forward(module: nn.Hardtanh, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a Hardtanh / ReLU6."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor) or not wants_lean(module, x) or x.element_size() not in _bits.INT_OF:
        return plain(module, *args, **kwargs)
    return _Gate.apply(x, "hardtanh", float(module.min_val), float(module.max_val), module.inplace)


def leaky_relu_forward(module: nn.LeakyReLU, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a LeakyReLU."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor) or not wants_lean(module, x):
        return plain(module, *args, **kwargs)
    return _Gate.apply(x, "leaky", float(module.negative_slope), 0.0, module.inplace)


BITS = "a 1-bit mask per element; not the input or output"
register(nn.ReLU, relu_forward, BITS)
register(nn.Hardtanh, hardtanh_forward, BITS)  # ReLU6 is a Hardtanh
register(nn.LeakyReLU, leaky_relu_forward, BITS)
register(nn.GELU, None, "its input (PyTorch's own op keeps only that)")
register(nn.SiLU, None, "its input (PyTorch's own op keeps only that)")
register(nn.Tanh, None, "its output (PyTorch's own op keeps only that; the next layer may hold it too)")
register(nn.Sigmoid, None, "its output (PyTorch's own op keeps only that; the next layer may hold it too)")
