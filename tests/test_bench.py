"""``frostline bench --quick``: every case runs, writes its JSON and PNG, and frostline's rows are exact."""

from __future__ import annotations

import json

import pytest

from frostline.bench import CASES
from frostline.cli import main


@pytest.mark.parametrize("case", list(CASES))
def test_quick_case_writes_json_and_png(case, tmp_path, capsys):
    assert main(["bench", "--quick", "--quiet", "--case", case, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    json_path, png_path = tmp_path / f"bench-{case}-quick.json", tmp_path / f"bench-{case}-quick.png"
    assert str(json_path) in out and png_path.stat().st_size > 0
    result = json.loads(json_path.read_text())
    assert result["quick"] is True and list(result["cases"]) == [case]
    rows = result["cases"][case]["rows"]
    assert rows[0]["by"] == "baseline" and rows[0]["ratio"] == 1.0
    for row in rows:
        assert not row["note"].startswith("n/a"), row
        assert row["ratio"] > 0 and row["memory_bytes"] > 0 and row["optimizer_state_bytes"] >= 0
        if row["by"] == "frostline":
            assert row["exact"] is True, row  # frostline's promise: frozen values bit-identical
    assert {"by", "exact", "memory", "step_ms"} <= set(rows[0])


def test_unknown_case_and_bad_model_exit_2(tmp_path, capsys):
    assert main(["bench", "--quick", "--case", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown case 'nope'; the cases are: filters, rows, prefix, layers" in capsys.readouterr().err
    assert main(["bench", "--quick", "--case", "layers", "--model", str(tmp_path / "none")]) == 2
    assert "not a transformers model directory" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing ran, nothing was written
