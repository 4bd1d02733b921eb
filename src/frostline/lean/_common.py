"""What every lean forward shares: when to take the lean path, and the layouts and precisions of its kernels
(casts and autocast, shared with the ``split`` strategy, are in :mod:`frostline._ops`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._state import trains_own


def wants_lean(module: nn.Module, x: Tensor) -> bool:
    """Take the lean path only when autograd will record this call and the module trains nothing (checked on
    every call: a user may flip requires_grad). The caller has checked that ``x`` is a tensor.

    When the input needs no gradient the plain forward records no graph and keeps nothing, which is already the
    leanest form (a frozen region with nothing trainable upstream).
    """
    return x.requires_grad and torch.is_grad_enabled() and x.is_floating_point() and not trains_own(module)


def opmath(dtype: torch.dtype) -> torch.dtype:
    """The precision PyTorch's CPU/CUDA kernels compute half types in."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def plain(module: nn.Module, *args, **kwargs):
    """The module's own (class) forward."""
    return type(module).forward(module, *args, **kwargs)


def shape_only(shape: torch.Size, like: Tensor, channels_last: bool) -> Tensor:
    """An uninitialised stand-in for an input that a backward kernel reads only for its shape and layout.

    ``empty`` touches no memory; a zero-stride expanded tensor would look non-contiguous and send kernels down
    slower paths (or make them copy it).
    """
    fmt = torch.contiguous_format
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def is_channels_last(x: Tensor) -> bool:
    if x.dim() not in (4, 5) or x.is_contiguous():
        return False
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.is_contiguous(memory_format=fmt)


def memory_format(x: Tensor) -> torch.memory_format:
    """ATen's ``suggest_memory_format`` (not exposed to Python) for the dense layouts that matter."""
    if not is_channels_last(x):
        return torch.contiguous_format
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
