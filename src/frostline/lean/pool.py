"""Pooling: max pooling keeps its argmax indices (int32), average pooling keeps nothing.

PyTorch's pooling nodes keep the whole input (max pooling: plus int64 indices), though backward reads it only
for its shape. The lean form keeps the indices max pooling needs, narrowed to int32, and hands PyTorch's own
backward kernel an uninitialised stand-in of the input's shape, so gradients are bit-identical. An adaptive
average pool to size 1 is a mean, for which PyTorch keeps nothing already.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _ntuple

from .._ops import cast
from ._common import is_channels_last, plain, shape_only, wants_lean
from ._registry import register

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AMAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_AAVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_aten = torch.ops.aten


def _lift(params: tuple, kind: str) -> tuple:
    """1-d pooling is 2-d pooling over a height-1 plane in PyTorch; its backward is the 2-d one."""
    if kind == "max":
        k, s, p, d, ceil = params
        return (1, k[0]), (1, s[0]), (0, p[0]), (1, d[0]), ceil
    if kind == "avg":
        k, s, p, ceil, count_pad = params
        return (1, k[0]), (1, s[0]), (0, p[0]), ceil, count_pad, None
    return params


def _backward(kind: str, nd: int, params: tuple, grad: Tensor, stand_in: Tensor, idx: Tensor | None) -> Tensor:
    if nd == 1:
        grad, stand_in = grad.unsqueeze(-2), stand_in.unsqueeze(-2)
        idx = None if idx is None else idx.unsqueeze(-2)
        return _backward(kind, 2, _lift(params, kind), grad, stand_in, idx).squeeze(-2)
    if kind == "max":
        fn = _aten.max_pool2d_with_indices_backward if nd == 2 else _aten.max_pool3d_with_indices_backward
        return fn(grad, stand_in, *params, idx)
    if kind == "adaptive_max":
        fn = _aten.adaptive_max_pool2d_backward if nd == 2 else _aten.adaptive_max_pool3d_backward
        return fn(grad, stand_in, idx)
    if kind == "avg":
        fn = _aten.avg_pool2d_backward if nd == 2 else _aten.avg_pool3d_backward
        return fn(grad, stand_in, *params)
    fn = _aten._adaptive_avg_pool2d_backward if nd == 2 else _aten._adaptive_avg_pool3d_backward
    return fn(grad, stand_in)


class _Pool(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, kind: str, nd: int, params: tuple) -> Tensor:
        idx = None
        if kind == "max":
            y, idx = _MAX[nd](x, *params, return_indices=True)
        elif kind == "adaptive_max":
            y, idx = _AMAX[nd](x, params[0], return_indices=True)
        elif kind == "avg":
            y = _AVG[nd](x, *params)
        else:
            y = _AAVG[nd](x, params[0])
        if idx is not None:
            plane = x.shape[-nd:].numel()
            ctx.save_for_backward(idx.int() if plane < 2**31 else idx)
        ctx.spec = (kind, nd, params, x.shape, x.dtype, is_channels_last(x))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        kind, nd, params, shape, dtype, channels_last = ctx.spec
        idx = ctx.saved_tensors[0].long() if kind in ("max", "adaptive_max") else None
        gx = _backward(kind, nd, params, grad, shape_only(shape, grad, channels_last), idx)
        return cast(gx, dtype), None, None, None


def _params(module: nn.Module, kind: str, nd: int) -> tuple:
    t = _ntuple(nd)
    if kind == "max":
        return t(module.kernel_size), t(module.stride), t(module.padding), t(module.dilation), module.ceil_mode
    if kind == "avg":
        base = (t(module.kernel_size), t(module.stride), t(module.padding), module.ceil_mode,
                module.count_include_pad)
        return base if nd == 1 else (*base, module.divisor_override)
    return (module.output_size,)


def pool_forward(kind: str, nd: int, module: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a pooling module (installed as ``partial(pool_forward, kind, nd, module)``)."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor) or not wants_lean(module, x) or getattr(module, "return_indices", False):
        return plain(module, *args, **kwargs)
    if kind == "adaptive_avg" and all(s == 1 for s in _ntuple(nd)(module.output_size)):
        return plain(module, *args, **kwargs)  # a mean: PyTorch keeps nothing for it
    return _Pool.apply(x, kind, nd, _params(module, kind, nd))


INDICES = "int32 argmax indices (1 per output element); not the input"
NOTHING = "nothing but shapes; not the input"
_KINDS = {"max": (INDICES, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
          "adaptive_max": (INDICES, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
          "avg": (NOTHING, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
          "adaptive_avg": (NOTHING, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)}
for _kind, (_keeps, *_classes) in _KINDS.items():
    for _nd, _cls in enumerate(_classes, 1):
        register(_cls, functools.partial(pool_forward, _kind, _nd), _keeps)
