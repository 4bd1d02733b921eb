"""What frostline's hand-written autograd functions share (the lean forwards and the ``split`` strategy): the
padding a conv module applies before its kernel, and autocast kept out of the kernels they call themselves.

>>> import torch, torch.nn as nn
>>> x, padding = conv_padding(nn.Conv2d(1, 1, 3, padding="same"), torch.zeros(1, 1, 4, 4))
>>> tuple(x.shape), padding
((1, 1, 4, 4), (1, 1))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")  # device types torch.is_autocast_enabled accepts


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without a dispatcher trip when it is one already (backward is full of such no-op casts)."""
    return t if t.dtype == dtype else t.to(dtype)


def autocast_dtype(t: Tensor) -> torch.dtype | None:
    """The dtype autocast would run an op on ``t`` in, or None when autocast is off (or ``t`` is not floating)."""
    kind = t.device.type
    if t.is_floating_point() and kind in _AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def no_autocast(t: Tensor) -> contextlib.AbstractContextManager:
    """A context with autocast off on ``t``'s device (a no-op when it is off already).

    An autograd function calls its kernels itself: forward casts as autocast would and then runs them with
    autocast off; backward calls forward-style kernels (conv for a transposed conv's input gradient, and back),
    which autocast must not recast when ``backward()`` is called inside an autocast region, as PyTorch's own
    backward kernels are never autocast.
    """
    kind = t.device.type
    if kind in _AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def _pad(x: Tensor, pads: Sequence[int], mode: str) -> Tensor:
    return F.pad(x, pads, mode=mode)


def conv_padding(module: nn.modules.conv._ConvNd, x: Tensor,
                 pad: Callable[[Tensor, Sequence[int], str], Tensor] = _pad) -> tuple[Tensor, tuple[int, ...]]:
    """The input padded as the module's ``_conv_forward`` pads it, and the symmetric zero padding left for the
    kernel (``torch.convolution``'s ``padding``).

    ``pad(x, pads, mode)`` pads where the kernel cannot (a non-zero padding mode, or ``'same'`` with an even
    kernel, which pads one side more); the lean conv passes one whose backward keeps only the input's shape.
    """
    nd = len(module.kernel_size)
    pads = module._reversed_padding_repeated_twice  # (left, right) per dim, last dim first
    if module.padding_mode != "zeros":
        return pad(x, pads, module.padding_mode), (0,) * nd
    if not isinstance(module.padding, str):
        return x, tuple(module.padding)
    if all(pads[2 * i] == pads[2 * i + 1] for i in range(nd)):
        return x, tuple(reversed(pads[0::2]))
    return pad(x, pads, "constant"), (0,) * nd
