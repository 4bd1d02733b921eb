"""frostline.audit: each finding planted once and reported with its names; a clean set-up reports nothing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline import audit, freeze, sync
from frostline._table import human_bytes
from frostline.cli import main
from frostline.models import small_cnn, tiny_resnet
from frostline.summary import optimizer_state_bytes


def loss_of(model):
    torch.manual_seed(0)
    return F.cross_entropy(model(torch.randn(4, 3, 12, 12)), torch.randint(0, 10, (4,)))


def codes(findings):
    return [(f.code, f.severity) for f in findings]


def plain_freeze(model, prefix):
    """What users write without frostline: requires_grad off, nothing else."""
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            p.requires_grad = False


@pytest.mark.parametrize("optimizer_cls", [torch.optim.AdamW, torch.optim.SGD])
@pytest.mark.parametrize("make", [small_cnn, tiny_resnet])
def test_clean_setup_has_no_findings(make, optimizer_cls):
    model = freeze(make(), ["features"] if make is small_cnn else ["conv1", "bn1", "layer1"]).train()
    opt = frostline.optimizer(model, optimizer_cls, lr=0.1, weight_decay=0.01)
    loss = loss_of(model)
    assert audit(model, opt, loss) == []
    loss.backward()
    opt.step()
    assert audit(model, opt, loss) == []  # after backward the graph can still be walked
    assert str(audit(model, opt)) == "frostline audit: no findings"


def test_clean_bert_has_no_findings(minilm):
    freeze(minilm, ["embeddings", "encoder.layer.[0-2]"]).train()
    opt = frostline.optimizer(minilm, torch.optim.AdamW, lr=1e-4, weight_decay=0.01)
    out = minilm(input_ids=torch.randint(0, 1000, (2, 6)))
    assert audit(minilm, opt, out.last_hidden_state.mean() + out.pooler_output.mean()) == []
    found = audit(minilm, opt, out.last_hidden_state.mean())  # the pooler is not used by this loss
    assert codes(found) == [("no-gradient", "warning")]
    assert found[0].names == ["pooler.dense.weight", "pooler.dense.bias"]


@pytest.mark.parametrize("make, step_first, severity, reason", [
    (lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01), False, "error", "weight decay 0.01"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), True, "error", "momentum state (momentum_buffer)"),
    (lambda ps: torch.optim.Adam(ps, lr=0.1), True, "error", "momentum state (exp_avg)"),
    (lambda ps: torch.optim.ASGD(ps, lr=0.1), False, "error", "lambd 0.0001"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), False, "info", ""),  # no buffer: zero grads build none
    (lambda ps: torch.optim.Adagrad(ps, lr=0.1), True, "info", ""),  # sum of squares: a zero grad moves nothing
], ids=["sgd-decay", "sgd-momentum-state", "adam-state", "asgd", "sgd-momentum-no-state", "adagrad-state"])
def test_frozen_in_optimizer(make, step_first, severity, reason):
    model = small_cnn()
    opt = make(model.parameters())
    if step_first:
        loss_of(model).backward()
        opt.step()
        opt.zero_grad()
    plain_freeze(model, "features")
    model.features.eval()
    found = [f for f in audit(model, opt) if f.code == "frozen-in-optimizer"]
    assert [f.severity for f in found] == [severity] and reason in found[0].message
    assert found[0].names == [n for n, _ in model.features.named_parameters(prefix="features")]
    sync(opt, model)
    assert not [f for f in audit(model, opt) if f.code == "frozen-in-optimizer"]


def test_not_in_optimizer():
    model = small_cnn()
    opt = torch.optim.AdamW(model.head.parameters(), lr=0.1)  # optimizer filtering alone (seed 002, mode 2)
    found = audit(model, opt)
    assert codes(found) == [("not-in-optimizer", "error")]
    assert found[0].names == [n for n, _ in model.features.named_parameters(prefix="features")]
    second = torch.optim.SGD(model.features.parameters(), lr=0.1)
    assert audit(model, [opt, second]) == []  # two optimizers together cover the model


def test_duplicate_in_optimizer():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups.append({**opt.defaults, "params": [model.head[1].weight]})  # bypasses add_param_group's check
    found = audit(model, opt)
    assert codes(found) == [("duplicate-in-optimizer", "error")] and found[0].names == ["head.1.weight"]
    assert "group 0, group 1" in found[0].message


def test_lr_zero():
    model = small_cnn()
    opt = torch.optim.SGD([{"params": model.features.parameters(), "lr": 0.0},
                           {"params": model.head.parameters(), "name": "head"}], lr=0.1)
    found = audit(model, opt)
    assert codes(found) == [("lr-zero", "warning")] and len(found[0].names) == len(list(model.features.parameters()))
    assert "group 0 has lr 0" in found[0].message and "frostline.freeze" in found[0].fix


def test_frozen_norm_and_dropout_in_train_mode():
    model = small_cnn()
    plain_freeze(model, "features")
    model.train()
    found = audit(model)
    assert codes(found) == [("frozen-norm-in-train-mode", "error"), ("frozen-dropout-in-train-mode", "warning")]
    assert found[0].names == ["features.1", "features.5"] and found[1].names == ["features.3", "features.7"]
    freeze(model, "features")  # frostline keeps the frozen region in eval across model.train()
    assert audit(model.train()) == []


def test_stale_grad():
    model = small_cnn()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    loss_of(model).backward()
    plain_freeze(model, "features")
    model.features.eval()
    found = audit(model, opt)
    assert codes(found) == [("stale-grad", "warning")]
    assert found[0].names == [n for n, _ in model.features.named_parameters(prefix="features")]
    everything = torch.optim.SGD(model.parameters(), lr=0.1)  # ...and an optimizer that will apply the stale grad
    assert next(f for f in audit(model, everything) if f.code == "stale-grad").severity == "error"


def test_no_gradient_from_the_loss():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    unused = nn.Linear(4, 4)
    model.add_module("side", unused)  # registered, never called in forward
    opt = frostline.optimizer(model, torch.optim.SGD, lr=0.1)
    loss = model[1](model[0](torch.randn(3, 4))).sum()
    found = audit(model, opt, loss)
    assert codes(found) == [("no-gradient", "warning")] and found[0].names == ["side.weight", "side.bias"]
    with torch.no_grad():
        detached = model[1](model[0](torch.randn(3, 4))).sum()
    [finding] = audit(model, opt, detached)
    assert len(finding.names) == 6 and "the loss does not require grad" in finding.message
    with pytest.raises(TypeError, match="loss must be"):
        audit(model, opt, 1.0)


def test_stale_optimizer_state():
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    loss_of(model).backward()
    opt.step()
    # Composer-style removal: out of the group, state left behind
    frozen = list(model.features.parameters())
    freeze(model, "features")
    opt.param_groups[0]["params"] = [p for p in opt.param_groups[0]["params"] if p.requires_grad]
    found = audit(model, opt)
    assert codes(found) == [("stale-optimizer-state", "warning")] and len(found[0].names) == len(frozen)
    size = optimizer_state_bytes(opt, frozen)
    assert f"keeps {human_bytes(size)} of state for {len(frozen)} parameters" in found[0].message
    sync(opt, model)
    assert audit(model, opt) == []


def test_findings_print_as_a_table():
    model = small_cnn()
    plain_freeze(model, "features")
    text = str(audit(model.train(), torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)))
    assert text.startswith("frostline audit: 3 findings (2 errors, 1 warning)")
    assert "severity  code" in text and "fix: frostline.sync(optimizer, model)" in text
    assert "features.0.weight, features.0.bias, features.1.weight, ... (+5)" in text


def test_cli_audit(capsys):
    assert main(["audit", "small_cnn", "--freeze", "features"]) == 1  # an error-severity finding: exit 1, for CI
    out = capsys.readouterr().out
    assert "frozen-in-optimizer" in out and "weight decay 0.01" in out
    assert main(["audit", "small_cnn", "--freeze", "features", "--optimizer", "trainable", "--forward"]) == 0
    assert capsys.readouterr().out.strip() == "frostline audit: no findings"
    assert main(["audit", "small_cnn", "--freeze", "*", "--optimizer", "trainable"]) == 2
    assert "nothing to optimize" in capsys.readouterr().err


def test_findings_fit_120_columns_and_table_keeps_the_detail(minilm):
    """Long names and messages wrap at 120 columns by default; ``table(width=None)`` is one line per finding."""
    plain_freeze(minilm, "embeddings")
    plain_freeze(minilm, "encoder.layer.0.")
    found = audit(minilm.train(), torch.optim.AdamW(minilm.parameters(), lr=0.1, weight_decay=0.1))
    assert [f.code for f in found] == ["frozen-in-optimizer", "frozen-dropout-in-train-mode"]
    text = str(found)
    assert max(len(line) for line in text.splitlines()) <= 120
    words = " ".join(text.split())  # wrapping moved words onto new lines, and lost none
    assert all(f.message in words and f.fix in words for f in found)
    assert "embeddings.word_embeddings.weight, embeddings.position_embeddings.weight," in text
    wide = found.table(width=None)
    assert max(len(line) for line in wide.splitlines()) > 120
    assert f"{found[0].severity} {found[0].code}: {found[0].message}" in wide.splitlines()
