"""Lean backward through frozen layers: keep only what the input gradients need.

When a frozen region sits downstream of something trainable (a new first layer, say), gradients must flow back
through it, and PyTorch keeps, for every frozen layer, activations only a *weight* gradient would need. With
``freeze(model, spec, lean=True)`` the fully frozen modules run through autograd functions that keep
the least their exact input gradient needs:

=============================================  ==============================================================
module (fully frozen)                           keeps for backward
=============================================  ==============================================================
Conv1d/2d/3d, ConvTranspose1d/2d/3d             the weight (a parameter, resident anyway), not the input
BatchNorm in frozen eval form                   nothing new (its scale is running_var and weight)
LayerNorm, GroupNorm                            the input as it arrived (never an autocast copy), mean, rstd
ReLU, ReLU6/Hardtanh, LeakyReLU                 one bit per element
MaxPool / AdaptiveMaxPool                       int32 argmax indices
AvgPool / AdaptiveAvgPool                       nothing
GELU, SiLU, Tanh, Sigmoid, Linear, Dropout      PyTorch's own op (already the least: input, output, weight,
(eval), Identity, Flatten, Embedding            nothing); recorded, not replaced
=============================================  ==============================================================

Gradients are exact: backward calls PyTorch's own kernels (or, for a convolution, the adjoint convolution, which
is bit-identical in float32), in train and eval, under autocast and activation checkpointing, with
``torch.compile``, on any device. A module runs lean only while it is fully frozen (checked again on every call),
and only when autograd records the call: a frozen region with nothing trainable upstream keeps nothing at all.
A parameter-free module (ReLU, pooling) runs lean when the next module with parameters is fully frozen, so the
ReLU beside a trainable first layer drops its output too. Modules not listed keep PyTorch's behaviour. Each
family module (``conv``, ``norm``, ``activation``, ``pool``, ``native``) registers the classes it covers
(``lean/_registry.py``), which the table above summarises.

``lean=None`` keeps each module's current choice, and gives newly frozen modules the default,
``frostline.lean.DEFAULT`` (True: exact, and in ``benchmarks/lean.py`` the seed CNN keeps 1/25 of plain freezing's
memory at 1.02x its step time; MiniLM 1.00x). ``frostline.lean.DEFAULT = False`` makes later ``freeze`` calls
without ``lean=`` keep PyTorch's forward (it is read at each call; modules frozen before keep their choice);
``lean=False`` does so for one call; ``unfreeze`` restores the plain forward.

Whole frozen blocks (transformer layers) can keep even less: ``frostline.lean.recompute(blocks)`` runs each under
activation checkpointing while it is fully frozen, so it keeps only its inputs and recomputes its forward in
backward (exact; one more forward per frozen block). ``LayerwiseSampling(..., recompute_frozen=True)`` does so
for the blocks it freezes; a block that trains again runs plain (see :func:`frostline.lean.recompute`).

>>> import torch, torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
>>> _ = frostline.freeze(model, ["2", "3"], lean=True)
>>> frostline.lean.keeps(model[2])
'the weight (a parameter, already resident); not the input'
>>> x = torch.randn(4, 3, 16, 16)
>>> frostline.lean.saved_bytes(model, x)   # the trainable conv's input, then two ReLUs' bits
{'0': 12288, '1': 784, '4': 576}
"""

from __future__ import annotations

DEFAULT: bool = True  # read by every freeze(..., lean=None) call: set frostline.lean.DEFAULT = False to turn it off

from . import activation, conv, native, norm, pool  # noqa: E402, F401  (the families: each registers what it covers)
from ._core import keeps, refresh  # noqa: E402  (after DEFAULT, which _core reads from this module)
from ._recompute import recompute
from .measure import saved_bytes

__all__ = ["DEFAULT", "keeps", "recompute", "refresh", "saved_bytes"]
