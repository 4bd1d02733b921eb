"""``frostline demo``: fine-tune the pretrained all-MiniLM-L6-v2 three ways and show what freezing saves.

The task is frostline's own sentence dataset (``frostline/data/sentences.tsv``: 320 sentences in five topics,
a fixed 20% held out). A linear head on the mean-pooled encoder output is trained:

1. full fine-tuning (the reference);
2. embeddings and the first 4 of 6 layers frozen with :func:`frostline.freeze`;
3. the whole encoder frozen, its pooled output computed once per sentence by :class:`frostline.FeatureCache`.

The three runs train epoch by epoch in turn, so a busy machine slows them alike and the step-time ratios are
fair. Every frozen run trains inside :func:`frostline.guard`, which proves the frozen values bit-identical.

>>> from frostline.demo import load_sentences
>>> data = load_sentences()
>>> len(data.train), len(data.test), data.classes
(255, 65, ['weather', 'sports', 'cooking', 'technology', 'finance'])
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._table import human_bytes, human_count, render
from .errors import FrozenParameterChanged
from .freeze import freeze
from .guard import guard
from .optim import optimizer as build_optimizer
from .summary import optimizer_state_bytes, summary

if TYPE_CHECKING:
    from .cache import FeatureCache

__all__ = ["run", "DemoReport", "DemoRow", "Sentences", "load_sentences", "load_encoder", "TextClassifier", "pool"]

VARIANTS = ("full fine-tuning", "embeddings + layers 0-3 frozen", "encoder frozen + feature cache")
FROZEN_PREFIX = ["backbone.embeddings", "backbone.encoder.layer.[0-3]"]


@dataclass
class Sentences:
    """The demo dataset: ``(text, label index)`` pairs per split and the class names."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]


def load_sentences() -> Sentences:
    """Read the dataset shipped in ``frostline/data/sentences.tsv`` (columns: split, label, text)."""
    text = resources.files("frostline").joinpath("data/sentences.tsv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    classes = list(dict.fromkeys(r["label"] for r in rows))
    pick = lambda split: [(r["text"], classes.index(r["label"])) for r in rows if r["split"] == split]  # noqa
    return Sentences(pick("train"), pick("test"), classes)


def load_encoder(path: str | Path | None = None) -> tuple[nn.Module, object]:
    """A transformers encoder and its tokenizer, offline (default: the pretrained all-MiniLM-L6-v2).

    The pooler is dropped: the demo pools the token states itself, and an unused pooler would count as
    trainable parameters that never train. Each call returns a fresh copy of the encoder.

    Raises:
        FileNotFoundError: ``path`` is not a transformers model directory with a ``config.json``.
    """
    encoder, tokenizer = _pretrained(None if path is None else str(path))
    return copy.deepcopy(encoder), tokenizer


@functools.lru_cache(maxsize=1)
def _pretrained(path: str | None) -> tuple[nn.Module, object]:
    """Load once per process (the demo and the benchmark cases all start from it); callers must not modify it."""
    from .models import minilm_path

    where = Path(path) if path is not None else minilm_path()
    if not (where / "config.json").is_file():
        raise FileNotFoundError(f"{str(where)!r} is not a transformers model directory (it has no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the demo draws its own bars; keep the weight-loading one quiet
    try:
        encoder, tokenizer = AutoModel.from_pretrained(str(where)), AutoTokenizer.from_pretrained(str(where))
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    if isinstance(getattr(encoder, "pooler", None), nn.Module):
        encoder.pooler = None
    return encoder, tokenizer


class TextClassifier(nn.Module):
    """A transformers encoder (``backbone``), mean pooling (``pool``) and a linear ``head``.

    Pooling is a module so that a feature cache can stop after it: a linear probe then stores one vector per
    sentence instead of one per token.
    """

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.pool = MeanPool()
        self.head = nn.Linear(backbone.config.hidden_size, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.pool(hidden, attention_mask))


class MeanPool(nn.Module):
    """:func:`pool` as a module."""

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return pool(hidden, attention_mask)


def pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over the real (unpadded) tokens: the pooling all-MiniLM-L6-v2 was trained with."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@dataclass
class DemoRow:
    """One fine-tuning run: what it trained, what it cost and how well it did."""

    variant: str
    trainable: int
    total: int
    step_seconds: float  # median training step (see DemoReport.step_rule)
    train_seconds: float  # all training steps, the cache's first filling included
    optimizer_state_bytes: int
    accuracy: float
    frozen_identical: bool | None  # None: nothing frozen

    def step_ratio(self, reference: "DemoRow") -> float:
        return self.step_seconds / reference.step_seconds


def _ratio(ratio: float) -> str:
    return f"{ratio:.3f}" if ratio >= 0.01 else f"{ratio:.2g}"  # a cached step is thousands of times faster


def _share(part: int, total: int) -> str:
    pct = 100 * part / total
    return f"{human_count(part)} ({pct:.1f}%)" if pct >= 0.1 else f"{human_count(part)} ({pct:.3f}%)"


@dataclass
class DemoReport:
    """The three runs; ``str()`` is the demo's table."""

    rows: list[DemoRow]
    setting: str
    step_rule: str = "median step after the first epoch"
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        full = self.rows[0]
        headers = ["run", "trainable params", "step time vs full", "train time", "optimizer state",
                   "held-out accuracy", "frozen bit-identical"]
        body = [[r.variant, _share(r.trainable, r.total), _ratio(r.step_ratio(full)),
                 f"{r.train_seconds:.1f}s", human_bytes(r.optimizer_state_bytes), f"{100 * r.accuracy:.1f}%",
                 "-" if r.frozen_identical is None else str(r.frozen_identical)] for r in self.rows]
        lines = [render(headers, body, title=self.setting), f"step time: {self.step_rule}, measured in this run; "
                 "frozen bit-identical: checked by frostline.guard after every epoch", *self.notes]
        return "\n".join(lines)


@dataclass
class _Run:
    """One way of fine-tuning, in progress."""

    name: str
    model: TextClassifier
    optimizer: torch.optim.Optimizer
    forward: Callable[[Tensor, Tensor, Tensor], Tensor]  # (sample ids, input ids, attention mask) -> logits
    frozen: bool
    cache: FeatureCache | None = None
    epochs: list[list[float]] = field(default_factory=list)  # step times, per epoch
    identical: bool | None = None


def _runs(pristine: nn.Module, num_classes: int, lr: float, seed: int) -> list[_Run]:
    """The three runs, each on its own copy of the pretrained encoder with the same head initialisation."""
    from .cache import FeatureCache

    def classifier() -> TextClassifier:
        torch.manual_seed(seed)
        return TextClassifier(copy.deepcopy(pristine), num_classes).train()

    def opt(model: nn.Module) -> torch.optim.Optimizer:
        # the head starts from scratch and needs a larger rate than the pretrained encoder
        return build_optimizer(model, torch.optim.AdamW, lr=lr, weight_decay=0.01, lr_mult={"head": 20.0})

    full, partial, probe = classifier(), freeze(classifier(), FROZEN_PREFIX), freeze(classifier(), "backbone")
    # BertSelfAttention applies attention dropout whenever the attention module itself is in training mode (no
    # Dropout module that freeze() could keep in eval), so the cached prefix is put in eval explicitly
    probe.backbone.eval()
    cache = FeatureCache(probe, upto="pool")
    plain = lambda model: lambda ids, x, mask: model(x, mask)  # noqa: E731
    return [_Run(VARIANTS[0], full, opt(full), plain(full), frozen=False),
            _Run(VARIANTS[1], partial, opt(partial), plain(partial), frozen=True),
            _Run(VARIANTS[2], probe, opt(probe), lambda ids, x, mask: cache(ids, x, mask), frozen=True, cache=cache)]


def _train_epoch(run: _Run, batches: list[Tensor], ids: Tensor, mask: Tensor, labels: Tensor,
                 tick: Callable[[], object]) -> None:
    times = []
    try:
        with guard(run.model) if run.frozen else contextlib.nullcontext():
            for batch in batches:
                x, m, y = ids[batch], mask[batch], labels[batch]
                start = time.perf_counter()
                loss = F.cross_entropy(run.forward(batch, x, m), y)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                times.append(time.perf_counter() - start)
                tick()
        if run.frozen:
            run.identical = run.identical is not False
    except FrozenParameterChanged:
        run.identical = False
    run.epochs.append(times)


@torch.no_grad()
def _accuracy(model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(ids[i:i + 64], mask[i:i + 64]).argmax(-1) for i in range(0, len(ids), 64)])
    model.train()
    return float((predicted == labels).float().mean())


def run(*, quick: bool = False, epochs: int | None = None, model_path: str | Path | None = None, seed: int = 0,
        progress: bool = True) -> DemoReport:
    """Fine-tune three ways (see the module docstring) and return the report.

    Args:
        quick: a smoke run for CI: an eighth of the training data, one epoch, short sequences (seconds).
        epochs: training epochs (default 4; 1 with ``quick``).
        model_path: a transformers encoder directory (default: the pretrained all-MiniLM-L6-v2).
        seed: fixes the head initialisation, dropout and batch order, so a run is reproducible.
        progress: show a progress bar (only when stderr is a terminal).

    Raises:
        FileNotFoundError: ``model_path`` is not a transformers model directory.
        ValueError: ``epochs`` < 1.
    """
    epochs = epochs if epochs is not None else 1 if quick else 4
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    data = load_sentences()
    train, test = (data.train[::8], data.test[::3]) if quick else (data.train, data.test)
    batch_size, max_length = (8, 12) if quick else (16, 32)
    pristine, tokenizer = _pretrained(None if model_path is None else str(model_path))

    def encode(pairs: list[tuple[str, int]]) -> tuple[Tensor, Tensor, Tensor]:
        # one padded length for the whole set: a sentence's input is the same in every batch it lands in,
        # which the feature cache checks
        enc = tokenizer([t for t, _ in pairs], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], torch.tensor([label for _, label in pairs])

    (ids, mask, labels), (test_ids, test_mask, test_labels) = encode(train), encode(test)
    runs = _runs(pristine, len(data.classes), lr=1e-4, seed=seed)
    steps = -(-len(train) // batch_size)
    from tqdm.auto import tqdm

    with tqdm(total=epochs * len(runs) * steps, desc="fine-tuning", unit="step",
              disable=not progress or not sys.stderr.isatty()) as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
            for r in runs:
                bar.set_postfix_str(f"{r.name}, epoch {epoch + 1}/{epochs}")
                torch.manual_seed(seed * 1000 + epoch)  # the same dropout draws whichever run went before
                _train_epoch(r, list(order.split(batch_size)), ids, mask, labels, bar.update)
    rows = []
    for r in runs:
        timed = [t for times in (r.epochs[1:] or r.epochs) for t in times]  # after the first epoch, if any
        counts = summary(r.model)
        rows.append(DemoRow(r.name, counts.trainable, counts.total, statistics.median(timed),
                            sum(map(sum, r.epochs)), optimizer_state_bytes(r.optimizer),
                            _accuracy(r.model, test_ids, test_mask, test_labels), r.identical))
    name = Path(model_path).name if model_path is not None else "all-MiniLM-L6-v2"
    setting = (f"{name} + linear head on frostline's sentences: {len(train)} train / {len(test)} "
               f"held out, {len(data.classes)} topics, {epochs} epoch{'s' if epochs > 1 else ''}, batch "
               f"{batch_size}, {torch.get_num_threads()} threads, seed {seed}")
    rule = "median step after the first epoch" if epochs > 1 else "median step (one epoch: cache filling included)"
    notes = [f"feature cache: {len(r.cache)} sentences, {human_bytes(r.cache.nbytes)} "
             f"({human_bytes(r.cache.bytes_per_sample)} each), filled by the first epoch's steps"
             for r in runs if r.cache is not None]
    return DemoReport(rows, setting, rule, notes)
