"""Frozen normalisation layers.

BatchNorm in frozen eval form (running statistics, affine frozen) is a per-channel affine map, so its input
gradient is the output gradient times the scale ``weight / sqrt(running_var + eps)``. It keeps what that scale is
made of, the running variance and the weight, which are resident anyway, so nothing new (PyTorch keeps the whole
input); backward folds them into the C-element scale.

LayerNorm and GroupNorm normalise with statistics of the sample itself, so the exact input gradient needs the
normalised input of every element; the least that gives it is the input as it arrived plus the per-row mean and
rstd (a few bytes per row). Keeping ``xhat`` instead costs the same bytes plus a pass, and rebuilding it from the
output divides by the weight (inexact, impossible where a weight is 0); recomputing is checkpointing. PyTorch's
own node keeps exactly the input and the statistics, so the lean form runs PyTorch's op, except where autocast
runs the norm in float32 on a half-precision input (CUDA): PyTorch then keeps the float32 copy, twice the bytes;
the lean form keeps the original and upcasts it in backward (exact), and calls PyTorch's backward kernel with
``output_mask=[True, False, False]``, so the input gradient is bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function

from .._ops import cast, no_autocast
from ._common import memory_format, opmath, plain, wants_lean
from ._registry import register


class _BatchNormEval(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
                eps: float) -> Tensor:
        ctx.save_for_backward(var, weight)  # a buffer and a parameter: resident anyway, nothing new is kept
        ctx.eps, ctx.dims = eps, x.dim()
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        var, weight = ctx.saved_tensors
        # 1/sqrt(var + eps) rounded as PyTorch's eval-mode kernel rounds it (in double, stored in float32 or wider);
        # that kernel multiplies by it and by the weight in two passes, one fold here may differ in the last bit
        acc = opmath(var.dtype)
        scale = cast(torch.rsqrt(var.double() + ctx.eps), acc)
        if weight is not None:
            scale = cast(weight, acc) * scale
        return cast(grad * scale.view([1, -1] + [1] * (ctx.dims - 2)), grad.dtype), None, None, None, None, None


def batchnorm_forward(module: nn.modules.batchnorm._BatchNorm, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a BatchNorm in eval form; in training form (batch statistics) it is PyTorch's."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor) or not wants_lean(module, x) or module.training or module.running_var is None:
        return plain(module, *args, **kwargs)
    module._check_input_dim(x)
    return _BatchNormEval.apply(x, module.running_mean, module.running_var, module.weight, module.bias, module.eps)


def _compute_dtype(x: Tensor, probe: Callable[[], Tensor]) -> torch.dtype:
    """The dtype the plain op would compute in: autocast may run a norm in float32 on a half-precision input."""
    kind = x.device.type
    if kind in ("cpu", "cuda", "xpu", "mps", "hpu") and torch.is_autocast_enabled(kind):
        return probe().dtype
    return x.dtype


class _LayerNorm(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, shape: tuple[int, ...], eps: float,
                dtype: torch.dtype) -> Tensor:
        with no_autocast(x):
            y, mean, rstd = torch.native_layer_norm(cast(x, dtype), shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.shape, ctx.dtype = shape, dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        gx = torch.ops.aten.native_layer_norm_backward(grad, cast(x, ctx.dtype), ctx.shape, mean, rstd, weight, bias,
                                                       [True, False, False])[0]
        return cast(gx, x.dtype), None, None, None, None, None


def layernorm_forward(module: nn.LayerNorm, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a frozen LayerNorm."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor) or not wants_lean(module, x):
        return plain(module, *args, **kwargs)
    shape, eps = tuple(module.normalized_shape), module.eps
    dtype = _compute_dtype(x, lambda: F.layer_norm(x.new_empty((1, *shape)), shape, module.weight, module.bias, eps))
    if dtype == x.dtype:  # PyTorch's own node keeps exactly this already
        return plain(module, *args, **kwargs)
    return _LayerNorm.apply(x, module.weight, module.bias, shape, eps, dtype)


class _GroupNorm(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float,
                dtype: torch.dtype) -> Tensor:
        n, c, hw = x.shape[0], x.shape[1], math.prod(x.shape[2:])
        # PyTorch's group_norm hands its kernel a tensor dense in the input's own layout; so do we
        kept = x.contiguous(memory_format=memory_format(x)) if x.device.type == "cpu" else x.contiguous()
        with no_autocast(x):
            y, mean, rstd = torch.native_group_norm(cast(kept, dtype), weight, bias, n, c, hw, groups, eps)
        ctx.save_for_backward(kept, weight, mean, rstd)
        ctx.sizes, ctx.dtype = (n, c, hw, groups), dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, hw, groups = ctx.sizes
        xc = cast(x, ctx.dtype)
        gx = torch.ops.aten.native_group_norm_backward(grad.contiguous(memory_format=memory_format(xc)), xc,
                                                       mean, rstd, weight, n, c, hw, groups, [True, False, False])[0]
        return cast(gx, x.dtype), None, None, None, None, None


def groupnorm_forward(module: nn.GroupNorm, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a frozen GroupNorm."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor) or not wants_lean(module, x) or x.dim() < 2:
        return plain(module, *args, **kwargs)
    groups, eps = module.num_groups, module.eps
    dtype = _compute_dtype(x, lambda: F.group_norm(x.new_empty((1, x.shape[1])), groups, module.weight,
                                                   module.bias, eps))
    if dtype == x.dtype:  # PyTorch's own node keeps exactly this already
        return plain(module, *args, **kwargs)
    return _GroupNorm.apply(x, module.weight, module.bias, groups, eps, dtype)


_BN_KEEPS = "nothing new: its per-channel scale, from the resident running variance and weight; not the input"
register(nn.modules.batchnorm._BatchNorm, batchnorm_forward, _BN_KEEPS)
register(nn.SyncBatchNorm, batchnorm_forward, _BN_KEEPS)  # a forward of its own: not covered by _BatchNorm's entry
register(nn.LayerNorm, layernorm_forward, "the input as it arrived (never an autocast copy) and per-row mean/rstd")
register(nn.GroupNorm, groupnorm_forward, "the input as it arrived (never an autocast copy) and per-group mean/rstd")
