import subprocess
import sys

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
