"""The transformer the text cases share: all-MiniLM-L6-v2 (or ``--model``) with the demo's linear head."""

from __future__ import annotations

from pathlib import Path

import torch

from ..demo import TextClassifier, load_encoder

CLASSES = 4


def classifier(model_path: Path | None) -> TextClassifier:
    """A fresh classifier (same head initialisation every time) around a copy of the pretrained encoder (loaded
    once per process)."""
    encoder = load_encoder(model_path)[0]
    torch.manual_seed(0)
    return TextClassifier(encoder, CLASSES).train()


def text_batch(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Random token ids (the anchors' batch: 32 sentences of 64 tokens), attention mask, labels, setup line."""
    torch.manual_seed(0)
    batch, tokens = (4, 16) if quick else (32, 64)
    ids = torch.randint(1000, 30000, (batch, tokens))
    return ids, torch.ones_like(ids), torch.randint(0, CLASSES, (batch,)), f"batch {batch}x{tokens} tokens"
