"""Frozen Conv1d/2d/3d and ConvTranspose1d/2d/3d: keep the weight (a parameter, resident anyway), not the input.

PyTorch's convolution node saves its input even when only the input gradient is wanted. The input gradient of a
convolution is the transposed convolution of the output gradient with the same weight (and the other way round
for a transposed convolution), so backward needs the weight and the input's *shape* only. It runs as the
forward kernel of the adjoint operation: profiled on CPU this is as fast as, or faster than, PyTorch's own
``convolution_backward``, and bit-identical in float32; feeding ``convolution_backward`` a zero-stride dummy input
instead is slower. Under autocast the weight is recast in backward (PyTorch would keep the cast copy). A
reflect/replicate-padded conv pads through a function that keeps only the input's shape, too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .._ops import cast, conv_padding, no_autocast
from ._common import is_channels_last, plain, shape_only, wants_lean
from ._registry import register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _Conv(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, geometry: tuple) -> Tensor:
        nd, transposed, stride, padding, dilation, groups, output_padding = geometry
        if transposed:
            y = _TRANSPOSED[nd](x, weight, bias, stride, padding, output_padding, groups, dilation)
        else:
            y = _CONV[nd](x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(weight)
        ctx.geometry, ctx.in_shape, ctx.in_dtype = geometry, x.shape, x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        nd, transposed, stride, padding, dilation, groups, _ = ctx.geometry
        w = cast(weight, grad.dtype)
        with no_autocast(grad):
            if transposed:
                gx = _CONV[nd](grad, w, None, stride, padding, dilation, groups)
            else:
                size_in, size_out, kernel = ctx.in_shape[-nd:], grad.shape[-nd:], weight.shape[-nd:]
                # the rows a strided forward skipped at the far edge come back as output padding
                extra = [n + 2 * p - ((m - 1) * s + d * (k - 1) + 1)
                         for n, m, k, s, p, d in zip(size_in, size_out, kernel, stride, padding, dilation, strict=False)]
                gx = _TRANSPOSED[nd](grad, w, None, stride, padding, extra, groups, dilation)
        return cast(gx, ctx.in_dtype), None, None, None


class _Pad(Function):
    """Reflect/replicate padding: backward needs the input's shape only, but PyTorch's node keeps the input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pads: tuple[int, ...], mode: str) -> Tensor:
        ctx.spec = (x.shape, x.dtype, is_channels_last(x), pads, mode)
        return F.pad(x, pads, mode=mode)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        shape, dtype, channels_last, pads, mode = ctx.spec
        kind = "reflection" if mode == "reflect" else "replication"
        fn = getattr(torch.ops.aten, f"{kind}_pad{len(pads) // 2}d_backward")
        return cast(fn(grad, shape_only(shape, grad, channels_last), pads), dtype), None, None


def _lean_pad(x: Tensor, pads: Sequence[int], mode: str) -> Tensor:
    """Reflect/replicate padding through :class:`_Pad`; circular (slices and a cat) and constant padding keep
    nothing for backward anyway."""
    if mode in ("reflect", "replicate"):
        return _Pad.apply(x, tuple(pads), mode)
    return F.pad(x, pads, mode=mode)


def conv_forward(module: nn.modules.conv._ConvNd, *args: Any, **kwargs: Any) -> Tensor:
    """Lean forward of a frozen Conv/ConvTranspose (installed as the instance's ``forward``)."""
    x = args[0] if args else kwargs.get("input")
    if (not isinstance(x, Tensor) or not wants_lean(module, x)
            or (module.transposed and module.padding_mode != "zeros")):
        return plain(module, *args, **kwargs)
    nd = len(module.kernel_size)
    output_padding: Sequence[int]
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # module.transposed
        output_size = args[1] if len(args) > 1 else kwargs.get("output_size")
        # torch annotates the geometry list[int], and its own ConvTranspose forwards pass these tuples too
        output_padding = module._output_padding(
            x, output_size, module.stride, module.padding, module.kernel_size,  # type: ignore[arg-type]
            nd, module.dilation)  # type: ignore[arg-type]
        padding = tuple(module.padding)
    else:
        x, padding = conv_padding(module, x, _lean_pad)
        output_padding = (0,) * nd
    geometry = (nd, module.transposed, tuple(module.stride), padding, tuple(module.dilation), module.groups,
                tuple(output_padding))
    return _Conv.apply(x, module.weight, module.bias, geometry)


KEEPS = "the weight (a parameter, already resident); not the input"
for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register(_cls, conv_forward, KEEPS)
