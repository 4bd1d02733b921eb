"""A frozen prefix of all-MiniLM-L6-v2, with and without frostline's feature cache (``shared/anchors/
prefix_cache.py``): a linear probe (whole encoder frozen) and the top 2 of 6 layers trained.

Without a cache, ``requires_grad`` freezing still runs the frozen prefix forward at every step. The hand-written
"precomputed" methods compute the prefix's output once for the batch and train on it: the limit a cache can reach.
The cached rows time steady-state steps (every sample seen before); the note gives the cost of filling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from .._table import human_bytes
from ..demo import pool
from ..freeze import freeze
from ..optim import optimizer as frostline_optimizer
from ._harness import Method, Trial, train_step
from ._text import classifier, text_batch

TITLE = "frozen prefix: all-MiniLM-L6-v2, linear probe and top-2 layers, with and without the feature cache"
SETTINGS = {"rounds": 3, "steps": 5, "warmup": 1}  # a MiniLM step is ~10x a CNN step: fewer, same design
TOP2_FROZEN = ["backbone.embeddings", "backbone.encoder.layer.[0-3]"]
TOP2_PREFIXES = ("backbone.embeddings.", *(f"backbone.encoder.layer.{i}." for i in range(4)))


def _adamw(params: ParamsT) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def _frozen(model: nn.Module, prefixes: tuple[str, ...]) -> list[Tensor]:
    return [v for k, v in model.state_dict().items() if k.startswith(prefixes)]


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's layers of the classifier around a transformers BERT-style backbone."""
    return cast(nn.ModuleList, model.get_submodule("backbone.encoder.layer"))


def _layers_from(model: nn.Module, hidden: Tensor, start: int) -> Tensor:
    for layer in _encoder_layers(model)[start:]:
        out = layer(hidden, attention_mask=None)  # an all-ones mask: no masking needed
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def methods(quick: bool, model_path: Path | None = None) -> tuple[str, list[Method]]:
    """The setup line and the methods of the frozen-prefix case."""
    from ..cache import FeatureCache

    ids, mask, y, setup = text_batch(quick)
    sample_ids = torch.arange(len(ids))  # the same sentences every step: after the first, all are cached
    probe_prefixes = ("backbone.",)

    def trial(m: nn.Module, forward: Callable[[], Tensor], opt: torch.optim.Optimizer,
              prefixes: tuple[str, ...] | None = None, **extra: Any) -> Trial:
        frozen = (lambda: _frozen(m, prefixes)) if prefixes else None
        return Trial(m, train_step(lambda: F.cross_entropy(forward(), y), opt), opt, frozen, **extra)

    def unfrozen() -> Trial:
        m = classifier(model_path)
        return trial(m, lambda: m(ids, mask), _adamw(m.parameters()))

    def requires_grad(prefixes: tuple[str, ...]) -> Callable[[], Trial]:
        def setup() -> Trial:
            m = classifier(model_path)
            for name, p in m.named_parameters():
                p.requires_grad_(not name.startswith(prefixes))
            return trial(m, lambda: m(ids, mask), _adamw([p for p in m.parameters() if p.requires_grad]), prefixes)

        return setup

    def probe_precomputed() -> Trial:
        m = classifier(model_path)
        m.backbone.requires_grad_(False)
        with torch.no_grad():
            m.backbone.eval()
            pooled = pool(m.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        return trial(m, lambda: m.head(pooled), _adamw(m.head.parameters()), probe_prefixes, held=lambda: [pooled])

    def top2_precomputed() -> Trial:
        m = classifier(model_path)
        m.backbone.embeddings.requires_grad_(False)
        _encoder_layers(m)[:4].requires_grad_(False)
        with torch.no_grad():
            m.eval()
            hidden = _layers_from_prefix(m, ids)
            m.train()
        forward = lambda: m.head(pool(_layers_from(m, hidden, 4), mask))  # noqa: E731
        return trial(m, forward, _adamw([p for p in m.parameters() if p.requires_grad]), TOP2_PREFIXES,
                     held=lambda: [hidden])

    def cached(spec: str | list[str], upto: str, prefixes: tuple[str, ...]) -> Callable[[], Trial]:
        def setup() -> Trial:
            m = freeze(classifier(model_path), spec)
            for name, module in m.named_modules():  # attention dropout follows each attention module's own
                if f"{name}.".startswith(prefixes):  # training flag, not a Dropout module freeze() keeps in eval
                    module.eval()
            cache = FeatureCache(m, upto=upto)
            opt = frostline_optimizer(m, torch.optim.AdamW, lr=1e-4, weight_decay=0.01, no_decay=())
            filled: list[float] = []

            def forward() -> Tensor:
                start = time.perf_counter()
                out = cache(sample_ids, ids, mask)
                if not filled:
                    filled.append(time.perf_counter() - start)
                return out

            note = lambda: (f"filling forward {1e3 * filled[0]:.0f} ms; cache "  # noqa: E731
                            f"{human_bytes(cache.bytes_per_sample)}/sample")
            return trial(m, forward, opt, prefixes, held_bytes=lambda: cache.nbytes, note=note)

        return setup

    return setup, [
        Method("unfrozen", "baseline", unfrozen),
        Method("probe: requires_grad", "hand", requires_grad(probe_prefixes)),
        Method("probe: precomputed features", "hand", probe_precomputed),
        Method("probe: freeze + FeatureCache", "frostline", cached("backbone", "pool", probe_prefixes)),
        Method("top-2: requires_grad", "hand", requires_grad(TOP2_PREFIXES)),
        Method("top-2: precomputed layer-3 output", "hand", top2_precomputed),
        Method("top-2: freeze + FeatureCache", "frostline",
               cached(TOP2_FROZEN, "backbone.encoder.layer.3", TOP2_PREFIXES)),
    ]


def _layers_from_prefix(model: nn.Module, ids: Tensor) -> Tensor:
    hidden = model.get_submodule("backbone.embeddings")(input_ids=ids)
    for layer in _encoder_layers(model)[:4]:
        out = layer(hidden, attention_mask=None)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden
