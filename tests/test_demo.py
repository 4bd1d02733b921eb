"""``frostline demo``: the dataset shipped with the package, and the quick run's table end to end."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from frostline.cli import main
from frostline.demo import VARIANTS, load_sentences


def test_dataset_is_shipped_balanced_and_split():
    data = load_sentences()
    texts = [t for t, _ in data.train + data.test]
    assert len(texts) >= 300 and len(set(texts)) == len(texts)  # no duplicates, so nothing leaks into the test split
    assert len(data.classes) >= 4
    assert 0.15 <= len(data.test) / len(texts) <= 0.25
    for split in (data.train, data.test):
        assert {label for _, label in split} == set(range(len(data.classes)))


@pytest.fixture(scope="module")
def quick_table() -> list[list[str]]:
    """Header and rows of ``frostline demo --quick``'s table (run once for the module), cells split on 2+ spaces."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # capsys is per test; this fixture is shared
        assert main(["demo", "--quick", "--quiet"]) == 0
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    table = [line for line in lines[start:start + 2 + len(VARIANTS)] if not line.startswith("---")]
    return [re.split(r"\s{2,}", line.strip()) for line in table]


def test_quick_demo_prints_three_runs(quick_table):
    header, *rows = quick_table
    column = {name: i for i, name in enumerate(header)}
    assert {"trainable params", "step time vs full", "optimizer state", "held-out accuracy",
            "frozen bit-identical"} <= set(column)
    assert [r[0] for r in rows] == list(VARIANTS)
    assert [r[column["frozen bit-identical"]] for r in rows] == ["-", "True", "True"]
    for r in rows:
        assert 0.0 <= float(r[column["held-out accuracy"]].rstrip("%")) <= 100.0
    assert rows[0][column["step time vs full"]] == "1.000"
    assert rows[0][column["trainable params"]].endswith("(100.0%)")


def test_bad_model_path_exits_2(capsys, tmp_path):
    assert main(["demo", "--quick", "--model", str(tmp_path)]) == 2
    assert "not a transformers model directory" in capsys.readouterr().err
