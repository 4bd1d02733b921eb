"""frostline.integrations (and its framework modules) are reachable as attributes after ``import frostline``,
without ``import frostline`` importing any framework."""

import subprocess
import sys

import pytest

import frostline


def test_first_hour_import_frostline_imports_no_framework():
    code = ("import sys, frostline; before = {'lightning', 'pytorch_lightning', 'transformers'} & set(sys.modules); "
            "frostline.integrations; frostline.schedules; "
            "after = {'lightning', 'pytorch_lightning', 'transformers'} & set(sys.modules); print(before, after)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "set() set()"


@pytest.fixture
def fresh_frostline(monkeypatch):
    """frostline as a new process sees it: frostline.integrations not imported yet (an earlier test in this
    process may have imported it, which binds it as an attribute). monkeypatch restores everything."""
    for name in list(sys.modules):
        if name.startswith("frostline.integrations"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(frostline, "integrations", raising=False)
    return frostline


def test_first_hour_lightning_callback_as_the_readme_writes_it(fresh_frostline):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    callback = fresh_frostline.integrations.lightning.FreezeCallback(fresh_frostline.schedules.GradualUnfreeze())
    assert isinstance(callback, pl.Callback) and callback.schedule.unit == "epoch"


def test_first_hour_transformers_callback_and_helpers_reachable(fresh_frostline):
    pytest.importorskip("transformers")
    from transformers import TrainerCallback

    module = fresh_frostline.integrations.transformers
    assert issubclass(module.FreezeCallback, TrainerCallback) and callable(module.freeze_first_layers)


def test_first_hour_unknown_integration_names_the_known_ones(fresh_frostline):
    with pytest.raises(AttributeError, match="lightning, transformers"):
        _ = fresh_frostline.integrations.keras
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        _ = fresh_frostline.nonsense
