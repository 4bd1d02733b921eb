"""Every Python block and shell command in README.md runs, as written.

A block is run as it stands. Blocks that use names a reader supplies (``model``, ``train``, a loader) carry an
HTML comment on the line before them, ``<!-- test: NAME -->``, and run after the prelude ``PRELUDES[NAME]`` below;
``<!-- test: skip: why -->`` skips one (only what cannot run on one machine, e.g. two nodes). Shell blocks run
line by line in a scratch directory with the venv's ``frostline`` on PATH; a line's expected exit status is 0
unless its comment says ``findings`` (``frostline audit`` exits 1 on an error-severity finding).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)

_TINY_LLAMA = """
import torch, frostline
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                     num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
batches = [{"input_ids": torch.randint(0, 40, (2, 8))} for _ in range(6)]
"""

PRELUDES = {
    # a model with the tensor names the partial-freezing block uses
    "partial": """
import torch, torch.nn as nn, frostline
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.embed, self.fc = nn.Conv2d(3, 8, 3), nn.Embedding(100, 8), nn.Linear(16, 4)
model = Net()
old_token_ids = [1, 2, 3]
frozen = torch.rand(4, 16) > 0.5
""",
    # a backbone with stages layer1..layer4 and a head; train() runs two steps
    "train": """
import torch, torch.nn as nn, torch.nn.functional as F
def stage(c): return nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c))
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential()
        for i in range(1, 5):
            self.backbone.add_module(f"layer{i}", stage(8))
        self.head = nn.Linear(8, 3)
    def forward(self, x): return self.head(self.backbone(x))
model = Net()
def train(model, opt):
    for _ in range(2):
        loss = F.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad(); loss.backward(); opt.step()
""",
    # the pretrained all-MiniLM-L6-v2 as `encoder` under a linear head, and a small token dataset
    "cache": """
import torch, torch.nn as nn, torch.nn.functional as F, frostline
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModel
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(frostline.models.minilm_path())
        self.head = nn.Linear(384, 2)
    def forward(self, x, mask):
        hidden = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state
        return self.head((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True))
torch.manual_seed(0)
model = Model()
dataset = TensorDataset(torch.randint(1000, 2000, (12, 10)), torch.ones(12, 10, dtype=torch.long),
                        torch.randint(0, 2, (12,)))
optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
""",
    "schedule": """
import torch, torch.nn as nn, torch.nn.functional as F
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
epochs = 3
def train_one_epoch(model, optimizer):
    loss = F.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 0, 1]))
    optimizer.zero_grad(); loss.backward(); optimizer.step()
""",
    "lisa": _TINY_LLAMA + """
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loader = batches
def train_step(model, optimizer, batch):
    loss = model(**batch, labels=batch["input_ids"]).loss
    optimizer.zero_grad(); loss.backward(); optimizer.step()
""",
    # the DDP re-wrap block: a one-process gloo group, a sampler built at the step before a draw
    "lisa-ddp": _TINY_LLAMA + """
import torch.distributed as dist
from frostline.schedules import LayerwiseSampling
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
lisa = LayerwiseSampling(n_active=2, every=20)
lisa.step(model, optimizer, step=0)
ddp_model = frostline.distributed.ddp(model)
step = 20
""",
    "tokens": _TINY_LLAMA + "train_loader = batches\n",
}
# what each prelude's block must have done (beyond running without an error)
CHECKS = {
    "partial": "assert frostline.is_frozen(model, 'conv1.weight') == 'partial'",
    "train": "assert frostline.is_frozen(model, 'backbone.layer4') is False and "
             "frostline.is_frozen(model, 'backbone.layer1') is True",
    "cache": "assert len(cache) == len(dataset)",
    "schedule": "assert all(p.requires_grad for p in model.parameters())",
    "lisa": "assert len(lisa.active) == 2",
    "lisa-ddp": "assert len(lisa.active) == 2; del ddp_model; import gc; gc.collect(); dist.destroy_process_group()",
    "tokens": "assert frostline.is_frozen(model, 'model.embed_tokens.weight') == 'partial'",
}
# blocks run in a process of their own: they set up a process group from the environment, as under torchrun
IN_A_PROCESS = {"distributed"}
PROCESS_PRELUDE = """
import gc, torch, torch.distributed as dist, torch.nn as nn, frostline
def build(): return nn.ModuleDict({"encoder": nn.Linear(4, 4), "head": nn.Linear(4, 2)})
device, local_rank = torch.device("cpu"), None
"""


def _blocks() -> list[tuple[int, str, str | None, str]]:
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 1, m["lang"], m["marker"], m["code"]) for m in BLOCK.finditer(text)]


BLOCKS = _blocks()


def test_every_marker_names_a_prelude() -> None:
    known = set(PRELUDES) | IN_A_PROCESS | {"cli", "make"}
    for line, _, marker, _ in BLOCKS:
        assert marker is None or marker.startswith("skip: ") or marker in known, f"README.md:{line}: {marker!r}"


@pytest.mark.parametrize("line, marker, code", [(n, m, c) for n, lang, m, c in BLOCKS if lang == "python"],
                         ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_block_runs(line: int, marker: str | None, code: str, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    if marker and marker.startswith("skip: "):
        pytest.skip(marker[6:])
    monkeypatch.chdir(tmp_path)
    if marker in IN_A_PROCESS:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
               "LOCAL_RANK": "0", "HF_HUB_OFFLINE": "1"}
        script = tmp_path / "block.py"
        script.write_text(PROCESS_PRELUDE + "\n" + code + "\nprint('README BLOCK DONE', flush=True)\n")
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
        # gloo's known abort at interpreter exit (README: Teardown) comes after the block ran to its end: the
        # marker, printed after the block's last line, is what counts (as in tests/test_distributed.py)
        ended = done.returncode == 0 or "terminate called without an active exception" in done.stderr
        assert ended and "README BLOCK DONE" in done.stdout, f"README.md:{line}\n{done.stderr[-3000:]}"
        return
    namespace: dict = {"__name__": f"readme_line{line}"}
    source = PRELUDES.get(marker, "") + "\n" + code + "\n" + CHECKS.get(marker, "")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, f"README.md:{line}", "exec"), namespace)


def _expected_status(command: str) -> int:
    return 1 if re.search(r"#.*\bfindings\b", command) and "no findings" not in command else 0


def _commands(code: str) -> list[str]:
    return [c for c in code.replace("\\\n", " ").splitlines() if c.strip() and not c.lstrip().startswith("#")]


def _scratch_for_cli(tmp_path: Path) -> None:
    """What the CLI block names: a user's package with a model builder, and a transformers model directory."""
    from frostline.models import minilm_path

    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class Net(nn.Module):
            def __init__(self, num_classes=3):
                super().__init__()
                self.backbone = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
                self.head = nn.Linear(8, num_classes)
            def forward(self, x):
                return self.head(self.backbone(x))
        def build(num_classes=3):
            return Net(num_classes)
        """))
    (tmp_path / "path" / "to" / "transformers").mkdir(parents=True)
    (tmp_path / "path" / "to" / "transformers" / "model").symlink_to(minilm_path())


@pytest.mark.parametrize("line, marker, code", [(n, m, c) for n, lang, m, c in BLOCKS if lang == "bash"],
                         ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_shell_block_runs(line: int, marker: str | None, code: str, tmp_path: Path) -> None:
    if marker and marker.startswith("skip: "):
        pytest.skip(marker[6:])
    assert marker in ("cli", "make"), f"README.md:{line}: a shell block needs <!-- test: cli|make|skip: ... -->"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tmp_path)}
    if marker == "make":  # make demo / make test: the targets resolve (this suite is `make test` itself)
        for command in _commands(code):
            target = command.split("#")[0].split()
            done = subprocess.run(["make", "-n", *target[1:]], cwd=ROOT, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"README.md:{line}: {command}\n{done.stderr}"
        return
    _scratch_for_cli(tmp_path)
    for command in _commands(code):
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == _expected_status(command), \
            f"README.md:{line}: {command}\nexit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


def test_readme_example_prints_what_the_readme_shows() -> None:
    text = README.read_text()
    example = text.index("## Example")
    code, shown = re.search(r"```python\n(.*?)```\s*```\n(.*?)```", text[example:], re.S).groups()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert printed.getvalue().strip() == shown.strip()


def _selecting_table() -> list[str]:
    text = README.read_text()
    table = text[text.index("| form", text.index("## Selecting what to freeze")):]
    table = table[: table.index("\n\n")]
    return [example for row in table.splitlines()[2:] for example in re.findall(r"`([^`]*)`", row.split("|")[2])]


@pytest.mark.parametrize("example", _selecting_table())
def test_every_spec_in_the_selecting_table_selects_something(example: str, minilm) -> None:
    import re as regex

    import torch.nn as nn

    import frostline
    from frostline.models import tiny_resnet

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential()
            self.backbone.add_module("conv", nn.Conv2d(3, 4, 3))
            self.backbone.add_module("norm", nn.BatchNorm2d(4))
            self.fc = nn.Linear(4, 2)

    for model in (minilm, tiny_resnet(), Backbone()):
        try:
            spec = eval(example, {"re": regex, "nn": nn, "model": model}) if not example.startswith('"') \
                else eval(example)
            if frostline.select(model, spec):
                return
        except (AttributeError, frostline.SelectionError):
            continue
    pytest.fail(f"the README's example spec {example} selects nothing on BERT, a ResNet or a backbone model")
