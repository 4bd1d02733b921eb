"""Lean backward through frozen layers (placeholder until the lean-backward issue lands: keeps PyTorch's behaviour)."""

from __future__ import annotations

from torch import nn


def refresh(model: nn.Module, lean: bool | None) -> None:
    """Re-evaluate which frozen modules run lean; without lean support this keeps PyTorch's behaviour."""
    if lean:
        from .errors import FreezeError

        raise FreezeError("lean=True is not available yet in this version of frostline")
