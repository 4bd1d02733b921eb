import os
import subprocess
import sys

import pytest

from frostline.cli import main


def test_summary_builtin(capsys):
    assert main(["summary", "tiny_resnet", "--freeze", "layer1", "--freeze", "conv1"]) == 0
    out = capsys.readouterr().out
    assert "layer1" in out and "total" in out


def test_summary_transformers_dir(capsys, minilm_dir):
    assert main(["summary", str(minilm_dir), "--freeze", "embeddings"]) == 0
    assert "embeddings" in capsys.readouterr().out


def test_bad_path_and_bad_spec_exit_2(capsys, tmp_path):
    assert main(["summary", str(tmp_path / "nope")]) == 2
    assert "neither a built-in" in capsys.readouterr().err
    assert main(["summary", "tiny_resnet", "--freeze", "layr1"]) == 2
    assert "closest" in capsys.readouterr().err


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "frostline", "summary", "seed_cnn", "--freeze", "*", "--freeze", "!7.*"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout


# ---------------------------------------------------------------------------------------------------------------
# issue 17: exit codes, the user's own model, impossible options, 120-column tables

USER_MODELS = '''
from types import SimpleNamespace

import torch
from torch import nn


def build(width=4, act="relu"):
    """A user's CNN: its width and activation come from --kwargs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GELU() if act == "gelu" else nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def mnist_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


class TinyLM(nn.Module):
    """Looks like a transformers model to the CLI: a config with vocab_size and max_position_embeddings."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=11, max_position_embeddings=16)
        self.embed = nn.Embedding(11, 4)

    def forward(self, input_ids, attention_mask=None):
        return (self.embed(input_ids),)


def not_a_module():
    return [nn.Linear(2, 2)]
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A module ``usermodels`` in tmp_path, importable in this process and in subprocesses run from tmp_path."""
    (tmp_path / "usermodels.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("usermodels", None)


def cli(*args, cwd=None):
    """``python -m frostline ARGS`` in a fresh interpreter: (exit status, stdout, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, "-m", "frostline", *args], capture_output=True, text=True, timeout=180,
                          cwd=cwd, env=env)
    return done.returncode, done.stdout, done.stderr


def width(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_audit_exit_status_gates_ci():
    status, out, err = cli("audit", "small_cnn", "--freeze", "features")  # AdamW over every parameter: an error
    assert status == 1, err
    assert "error" in out and "frozen-in-optimizer" in out and width(out) <= 120
    status, out, err = cli("audit", "small_cnn", "--freeze", "features", "--optimizer", "trainable", "--forward")
    assert (status, out.strip()) == (0, "frostline audit: no findings"), err


def test_user_model_from_an_import_path(user_models, capsys):
    status, out, err = cli("summary", "usermodels:build", "--kwargs", "width=8", "--kwargs", "act='gelu'",
                           "--freeze", "0", cwd=user_models)
    assert status == 0, err
    conv, linear = 3 * 8 * 9 + 8, 8 * 2 + 2  # width=8 reached the callable
    assert out.splitlines()[-1].split() == ["total", str(linear), str(conv), f"{100 * linear / (conv + linear):.1f}%",
                                            "-"]
    assert main(["audit", "usermodels:build", "--freeze", "0", "--optimizer", "trainable", "--forward"]) == 0
    assert "no findings" in capsys.readouterr().out
    assert main(["explain", "usermodels:build", "--kwargs", "width=6", "--freeze", "0", "--batch", "2",
                 "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "0" in out.split() and "best" in out
    assert main(["explain", "usermodels:TinyLM", "--batch", "2", "--seq-len", "16"]) == 0  # a class is a callable
    assert "embed" in capsys.readouterr().out


@pytest.mark.parametrize("model, extra, says", [
    ("nosuchpkg_xyz.models:build", [], "no module named 'nosuchpkg_xyz'"),
    ("usermodels:buld", [], "usermodels has no attribute 'buld'"),
    ("usermodels:not_a_module", [], "returned a list, not a torch.nn.Module"),
    ("usermodels:build", ["--kwargs", "width"], "--kwargs expects key=value, got 'width'"),
    ("usermodels:build", ["--kwargs", "depth=3"], "unexpected keyword argument 'depth'"),
    ("small_cnn", ["--kwargs", "width=0x"], None),  # a string where an int belongs: the callable's own error
], ids=["module", "attribute", "return", "kwargs-form", "kwargs-name", "kwargs-value"])
def test_bad_import_path_is_one_line_exit_2(user_models, capsys, request, model, extra, says):
    if says is None:  # not a user-input error frostline can tell: it must stay a visible exception, not exit 2
        with pytest.raises(TypeError):
            main(["summary", model, *extra])
        return
    assert main(["summary", model, *extra]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert says in line and line.startswith("frostline summary: error:")
    if request.node.callspec.id in ("module", "attribute", "return"):
        assert "package.module:callable" in line


def test_impossible_options_are_one_line_exit_2(user_models, capsys, minilm_dir):
    status, out, err = cli("explain", "usermodels:TinyLM", "--seq-len", "1000", cwd=user_models)
    assert status == 2 and out == ""
    assert "--seq-len 1000 is beyond the model's 16 positions" in one_line_error(err)
    assert main(["explain", "minilm", "--seq-len", "1000"]) == 2
    assert "beyond the model's 512 positions" in one_line_error(capsys.readouterr().err)
    for flag, value in (("--batch", "-1"), ("--seq-len", "0"), ("--image-size", "0")):
        assert main(["explain", "small_cnn", flag, value]) == 2
        assert f"{flag} must be at least 1, got {value}" in one_line_error(capsys.readouterr().err)
    assert main(["explain", "tiny_resnet", "--batch", "1", "--image-size", "1"]) == 2  # BatchNorm: 1 value
    assert "Expected more than 1 value per channel when training" in one_line_error(capsys.readouterr().err)
    assert main(["explain", "usermodels:mnist_mlp"]) == 2  # 32x32 RGB images do not fit a 784-input MLP
    assert "mat1 and mat2 shapes cannot be multiplied" in one_line_error(capsys.readouterr().err)
    assert main(["audit", "usermodels:mnist_mlp", "--forward"]) == 2
    assert "--forward" in one_line_error(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "small_cnn", "--batch", "many"])
    assert exit_.value.code == 2
    assert "invalid int value: 'many'" in one_line_error(capsys.readouterr().err)


def test_tables_fit_120_columns_and_wide_keeps_the_detail(capsys, minilm_dir):
    minilm_freeze = ["--freeze", "embeddings", "--freeze", "encoder.layer.[0-2]"]
    for model, freeze in (("small_cnn", ["--freeze", "features"]), ("minilm", minilm_freeze)):
        for command in ("summary", "audit", "explain"):
            extra = ["--batch", "1", "--seq-len", "8"] if command == "explain" else []
            assert main([command, model, *freeze, *extra]) == (1 if command == "audit" else 0)
            out = capsys.readouterr().out
            assert width(out) <= 120, (command, model, width(out))
    # explain minilm (the last output): a legend says what its lean modules keep
    assert "lean: kept for backward" in out and "[1] " in out
    assert main(["explain", "small_cnn", "--freeze", "features", "--batch", "2", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert width(wide) > 120 and "removed by freezing" in wide and "lean: kept for backward" in wide
    lean = "the weight (a parameter, already resident); not the input"  # what a lean frozen conv keeps: inline
    assert any(line.startswith("features.0 ") and line.endswith(lean) for line in wide.splitlines())
    assert main(["audit", "small_cnn", "--freeze", "features", "--wide"]) == 1
    wide = capsys.readouterr().out
    assert width(wide) > 120 and any(line.startswith("error frozen-in-optimizer: 8 frozen parameters")
                                     and line.endswith("move them") for line in wide.splitlines())
