"""Modules whose PyTorch forward already keeps the least for backward: recorded (for ``keeps``), not replaced."""

from __future__ import annotations

from torch import nn

from ._registry import register

register(nn.Linear, None, "the weight only (PyTorch drops a frozen Linear's input)")
register(nn.Embedding, None, "nothing")
for _dropout in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
    register(_dropout, None, "nothing in eval (a byte mask in training, as PyTorch)")
for _shape_only in (nn.Identity, nn.Flatten, nn.Unflatten):
    register(_shape_only, None, "nothing")
