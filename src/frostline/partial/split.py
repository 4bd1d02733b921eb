"""split: output rows of a Linear or Conv, where the frozen rows' weight gradient is never computed.

Storage is delta's (the trainable rows are ``_frostline_trainable_weight``, the original Parameter holds the
effective weight). The forward is the module's own single op on the effective weight, inside an autograd function
whose backward computes the input (and bias) gradient with the whole weight, and the weight gradient from the
trainable output channels of the output gradient only: ``grad_out[:, rows].T @ x`` for a Linear,
``convolution_backward`` on those channels for a Conv. With half the filters frozen that removes half of the
weight-gradient FLOPs (a third of a layer's training FLOPs is its weight gradient, so the floor is ~0.83x), and the
optimizer steps the trainable rows only. Serves ``weight`` of Linear and Conv1d/2d/3d (groups=1) along dim 0.
Under FSDP2 it runs as delta does there (the merged weight through the module's own op).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._ops import autocast_dtype, conv_padding, no_autocast
from . import _forward
from ._layout import Layout
from ._registry import register
from .delta import Delta

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@register
class Split(Delta):
    strategy = "split"
    owns_forward = True

    @classmethod
    def why_not(cls, module: nn.Module, local: str, layout: Layout,
                tied: Sequence[tuple[str, nn.Module, str]] | bool) -> str | None:
        kind = next((c for c in (nn.Linear, *_CONVS) if isinstance(module, c)), None)
        if kind is None or type(module).forward is not kind.forward or local != "weight":
            return ("it serves the weight of nn.Linear and nn.Conv1d/2d/3d (with their own forward); "
                    f"this is {local!r} of {type(module).__name__}")
        if layout.dim != 0:
            return "it serves whole output rows (rows= along dim 0); use 'delta' or 'mask' for other layouts"
        if isinstance(module, _CONVS) and module.groups != 1:
            return f"the Conv has groups={module.groups}; it serves groups=1"
        return super().why_not(module, local, layout, tied)

    def _setup(self, layout: Layout) -> None:
        super()._setup(layout)
        self.owns_forward = True

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        if self.follows_module():  # FSDP2's gathered copies: delta's merged tensors, through the module's own op
            return _forward.swapped(module, x)
        if isinstance(module, nn.Linear):
            return linear_rows(self, module, x)
        conv = cast("nn.Conv1d | nn.Conv2d | nn.Conv3d", module)  # split serves Linear and these (why_not)
        bias = _forward.tensor(conv, "bias")
        if not _grads(self, x, bias):
            return conv._conv_forward(x, self.param, bias)
        x, padding = conv_padding(conv, x)
        return _SplitConv.apply(x, self.param, self.trainable, bias, self._get("index"), conv.stride, padding,
                                conv.dilation)


def linear_rows(part: Delta, module: nn.Linear, x: Tensor) -> Tensor:
    """``module(x)`` on ``part``'s weight (delta storage of output rows; also a tied use of it), computing the weight
    gradient of the trainable rows only."""
    bias = _forward.tensor(module, "bias")
    if not _grads(part, x, bias):
        return F.linear(x, part.param, bias)
    return _SplitLinear.apply(x, part.param, part.trainable, bias, part._get("index"))


def _grads(part: Delta, x: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or part.trainable.requires_grad
                                        or (bias is not None and bias.requires_grad))


def _cast(dtype: torch.dtype | None, x: Tensor, weight: Tensor, bias: Tensor | None
          ) -> tuple[Tensor, Tensor, Tensor | None]:
    if dtype is None:
        return x, weight, bias
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, trainable: Tensor, bias: Tensor | None, index: Tensor) -> Tensor:
        dtype = autocast_dtype(x)  # cast as autocast would, then run the kernel with autocast off
        with no_autocast(x):
            x, weight, bias = _cast(dtype, x, weight, bias)
            out = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight, index)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, index = ctx.saved_tensors
        need_x, _, need_rows, need_bias, _ = ctx.needs_input_grad
        grad_x = grad.matmul(weight) if need_x else None
        flat = grad.reshape(-1, grad.shape[-1])
        grad_rows = flat.index_select(1, index).t().matmul(x.reshape(-1, x.shape[-1])) if need_rows else None
        grad_bias = flat.sum(0) if need_bias else None
        return grad_x, None, grad_rows, grad_bias, None


class _SplitConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, trainable: Tensor, bias: Tensor | None, index: Tensor,
                stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...]) -> Tensor:
        dtype = autocast_dtype(x)  # cast as autocast would, then run the kernel with autocast off
        with no_autocast(x):
            x, weight, bias = _cast(dtype, x, weight, bias)
            out = torch.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), 1)
        ctx.save_for_backward(x, weight, index)
        ctx.conv = (stride, padding, dilation, False, [0] * len(stride), 1)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, index = ctx.saved_tensors
        need_x, _, need_rows, need_bias = ctx.needs_input_grad[:4]
        grad_x = grad_bias = grad_rows = None
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        if need_x or need_bias:
            grad_x, _, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, *ctx.conv, [need_x, False, need_bias])
        if need_rows:
            _, grad_rows, _ = torch.ops.aten.convolution_backward(
                grad.index_select(1, index), x, weight.index_select(0, index), None, *ctx.conv, [False, True, False])
        return grad_x, None, grad_rows, grad_bias, None, None, None, None
