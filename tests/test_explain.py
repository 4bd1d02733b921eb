"""explain(): FLOPs split into forward / dgrad / wgrad per module, kept activations, optimizer state."""

import copy

import pytest
import torch
from torch import nn

import frostline
from frostline.cli import main
from frostline.models import seed_cnn, small_cnn
from frostline.summary import optimizer_state_bytes

B, C, H = 2, 8, 12


def conv_flops(cin: int, cout: int, k: int = 3) -> int:
    return 2 * B * cout * H * H * cin * k * k  # stride 1, "same" padding


def three_convs() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.ReLU(), nn.Conv2d(C, C, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(C, 4, 3, padding=1))


def image() -> torch.Tensor:
    return torch.randn(B, 3, H, H)


def test_frozen_middle_conv_loses_exactly_its_wgrad_and_keeps_its_dgrad():
    model = frostline.freeze(three_convs(), "2")
    e = frostline.explain(model, image())
    middle, full = e.row("2"), e.unfrozen_row("2")
    assert middle.forward_flops == full.forward_flops == conv_flops(C, C)
    assert middle.dgrad_flops == full.dgrad_flops == conv_flops(C, C)  # the gradient still reaches conv 0
    assert middle.wgrad_flops == 0 and full.wgrad_flops == conv_flops(C, C)
    assert middle.optimizer_state_bytes == 0 and full.optimizer_state_bytes == 2 * 4 * (C * C * 9 + C)
    for name in ("0", "4"):  # the trainable convs are unchanged
        assert e.row(name) == e.unfrozen_row(name)
    assert e.row("0").dgrad_flops == 0 and e.row("0").wgrad_flops == conv_flops(3, C)  # no grad wrt the image
    assert e.unfrozen_total.step_flops - e.total.step_flops == conv_flops(C, C)


def test_frozen_prefix_loses_dgrad_wgrad_and_kept_activations():
    model = frostline.freeze(three_convs(), ["0", "2"])
    e = frostline.explain(model, image())
    for name in ("0", "1", "2", "3"):
        row, full = e.row(name), e.unfrozen_row(name)
        assert (row.dgrad_flops, row.wgrad_flops, row.activation_bytes) == (0, 0, 0)
        assert row.forward_flops == full.forward_flops
    assert e.unfrozen_row("2").wgrad_flops == conv_flops(C, C) and e.unfrozen_row("3").activation_bytes > 0
    assert e.row("4").wgrad_flops == conv_flops(C, 4) and e.row("4").dgrad_flops == 0
    assert e.row("4").activation_bytes == B * C * H * H * 4  # conv 4 keeps its float32 input for its wgrad
    assert e.flop_ratio == pytest.approx(e.total.step_flops / e.unfrozen_total.step_flops)
    assert e.flop_ratio < 0.5


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_dgrad_and_wgrad_by_operand_also_under_autocast(autocast):
    torch.manual_seed(0)
    model = frostline.freeze(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 24), nn.Tanh(),
                                           nn.Linear(24, 3)), "2")
    x = torch.randn(5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # weights become bf16 copies
        e = frostline.explain(model, x)
    mm = 2 * 5 * 16 * 24
    assert (e.row("2").forward_flops, e.row("2").dgrad_flops, e.row("2").wgrad_flops) == (mm, mm, 0)
    assert (e.unfrozen_row("2").dgrad_flops, e.unfrozen_row("2").wgrad_flops) == (mm, mm)
    assert (e.row("0").dgrad_flops, e.row("0").wgrad_flops) == (0, 2 * 5 * 6 * 16)


def test_attention_flops_are_counted_in_the_module_that_runs_them():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    model = frostline.freeze(BertModel(config).eval(), ["embeddings", "encoder.layer.0"])
    ids = torch.randint(0, 50, (2, 8))
    e = frostline.explain(model, input_ids=ids, attention_mask=torch.ones_like(ids))
    qk_and_v = 2 * 2 * (2 * 2) * 8 * 8 * 8  # 2 matmuls x 2 FLOPs per MAC x (batch x heads) x (8x8) @ (8x8)
    for layer in ("0", "1"):
        assert e.row(f"encoder.layer.{layer}.attention.self").forward_flops == qk_and_v
    frozen, trained = e.row("encoder.layer.0.attention.self.query"), e.row("encoder.layer.1.attention.self.query")
    assert (frozen.dgrad_flops, frozen.wgrad_flops, frozen.activation_bytes) == (0, 0, 0)
    assert trained.wgrad_flops == 2 * 2 * 8 * 16 * 16
    assert trained.dgrad_flops == 0  # layer 1's input comes from the frozen prefix: no gradient wanted there
    assert e.row("encoder.layer.1.attention.output.dense").dgrad_flops == 2 * 2 * 8 * 16 * 16


def test_activation_bytes_match_lean_measurement():
    model = frostline.freeze(three_convs(), "2")
    x = image()
    e = frostline.explain(model, x)
    measured = frostline.lean.saved_bytes(copy.deepcopy(model), x)
    assert {r.name: r.activation_bytes for r in e.rows if r.activation_bytes} == measured


def test_optimizer_state_measured_per_module():
    model = frostline.freeze(small_cnn(), "features")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    e = frostline.explain(model, torch.randn(2, 3, 8, 8), optimizer=opt)
    head = e.row("head.1")
    assert head.optimizer_state_bytes == optimizer_state_bytes(opt, model.head.parameters())
    assert e.row("features.0").optimizer_state_bytes == 0
    conv = model.features[0]
    expected = 2 * 4 * conv.weight.numel() + 4 + 2 * 4 * conv.bias.numel() + 4  # moments + step, per parameter
    assert e.unfrozen_row("features.0").optimizer_state_bytes == expected
    assert "measured in the AdamW" in str(e)


def test_model_is_not_touched_and_table_renders():
    model = frostline.freeze(small_cnn(), "features.0").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e = frostline.explain(model, torch.randn(4, 3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats, weights
    assert all(p.grad is None for p in model.parameters())
    text = str(e)
    assert "removed by freezing" in text and "unfrozen" in text and "wgrad" in text
    assert e.total.forward_flops == sum(r.forward_flops for r in e.rows)


def test_loss_fn_and_errors():
    model = three_convs()
    e = frostline.explain(model, image(), loss_fn=lambda out: out[:, 0].mean())
    assert e.row("4").wgrad_flops == conv_flops(C, 4)
    with pytest.raises(TypeError, match="scalar"):
        frostline.explain(model, image(), loss_fn=lambda out: out)
    with pytest.raises(KeyError, match="no row"):
        e.row("nope")


def test_cli_explain(capsys, tmp_path):
    assert main(["explain", "small_cnn", "--freeze", "features", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "best" in out
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=32)).save_pretrained(tmp_path)
    assert main(["explain", str(tmp_path), "--freeze", "embeddings", "--batch", "2", "--seq-len", "8"]) == 0
    assert "encoder.layer.0.attention.self" in capsys.readouterr().out
    assert main(["explain", "small_cnn", "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err


def test_explain_says_what_lean_layers_keep() -> None:
    """Lean frozen modules: the table says what each keeps for backward, and their input is not among it."""
    model = frostline.freeze(seed_cnn(), ["*", "!0"], lean=True)
    e = frostline.explain(model, torch.randn(4, 3, 32, 32))
    assert "1-bit mask" in e.kept["2.2"] and "weight" in e.kept["2.0"]
    assert "0" not in e.kept  # the trainable conv runs as PyTorch's
    assert e.row("2.0").activation_bytes == 0
    assert e.row("2.2").activation_bytes * 30 < e.unfrozen_row("2.2").activation_bytes  # 1 bit instead of 32
    assert "lean: kept for backward" in str(e)
    plain = frostline.explain(frostline.freeze(seed_cnn(), ["*", "!0"], lean=False), torch.randn(4, 3, 32, 32))
    assert plain.kept == {} and "lean:" not in str(plain)
    assert plain.total.activation_bytes > 10 * e.total.activation_bytes


def long_named_cnn() -> nn.Module:
    """Module names as long as a transformer's (``backbone_stage_one.block_zero.projection_convolution``)."""
    from collections import OrderedDict

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(OrderedDict(projection_convolution=nn.Conv2d(cin, cout, 3, padding=1),
                                         normalisation=nn.BatchNorm2d(cout), activation_function=nn.ReLU()))

    def stage(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(OrderedDict(block_zero=block(cin, cout), block_one=block(cout, cout)))

    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(backbone_stage_one=stage(3, 8), backbone_stage_two=stage(8, 8),
                                     pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     classification_head=nn.Linear(8, 4)))


def test_table_fits_120_columns_and_wide_keeps_the_detail():
    model = frostline.freeze(long_named_cnn(), "backbone_stage_one")
    e = frostline.explain(model, torch.randn(2, 3, 8, 8))
    assert e.kept  # lean frozen modules: what they keep goes to a legend under the table
    text = str(e)
    assert max(len(line) for line in text.splitlines()) <= 120
    words = " ".join(text.split())
    assert all(what in words for what in e.kept.values()) and "lean: kept for backward" in text
    assert all(r.name.rpartition(".")[2] in text for r in e.rows)  # long names wrap at their dots
    wide = e.table(width=None)
    assert max(len(line) for line in wide.splitlines()) > 120
    row = e.row("backbone_stage_one.block_zero.projection_convolution")
    line = next(ln for ln in wide.splitlines() if ln.startswith(row.name + " "))
    assert _removed_text(e, row.name) in line and e.kept[row.name] in line  # one line per module, all of it


def _removed_text(e, name):
    from frostline.explain import _removed

    return _removed(e.row(name), e.unfrozen_row(name))


def test_plot_draws_flops_and_kept_memory_per_module_frozen_beside_unfrozen(tmp_path):
    model = frostline.freeze(small_cnn(), "features")
    e = frostline.explain(model, torch.randn(2, 3, 8, 8))
    fig = e.plot(tmp_path / "explain.png")
    assert (tmp_path / "explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flops_ax, memory_ax = fig.axes[:2]
    names = [r.name for r in e.rows]
    assert [t.get_text() for t in flops_ax.get_yticklabels()] == names
    bars = {c.get_label(): [p.get_width() for p in c] for c in flops_ax.containers}
    for kind in ("forward", "dgrad", "wgrad"):
        assert bars[f"{kind}, as frozen"] == [getattr(r, f"{kind}_flops") for r in e.rows]
        assert bars[f"{kind}, nothing frozen"] == [getattr(r, f"{kind}_flops") for r in e.unfrozen]
    assert len(bars) == 6
    memory = {c.get_label(): [p.get_width() for p in c] for c in memory_ax.containers}
    assert memory["kept for backward, as frozen"] == [r.activation_bytes for r in e.rows]
    assert memory["kept for backward, nothing frozen"] == [r.activation_bytes for r in e.unfrozen]
    assert memory["optimizer state, as frozen"] == [r.optimizer_state_bytes for r in e.rows]
    assert len(memory) == 4
    assert e.status["features.0"] == "frozen" and e.status["features.2"] == "frozen"  # a ReLU: its block's
    assert e.status["head.1"] == e.status["head.0"] == "trainable"
    colour = {t.get_text(): t.get_color() for t in flops_ax.get_yticklabels()}
    assert colour["features.0"] != colour["head.1"]  # frozen modules look different, and the legend says how
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert "frozen module" in legend and "trainable module" in legend


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    e = frostline.explain(three_convs(), image())
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] or ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # "import matplotlib..." now fails, as when not installed
    with pytest.raises(ImportError, match="pip install matplotlib"):
        e.plot()


def test_cli_explain_plot(capsys, tmp_path):
    assert main(["explain", "small_cnn", "--freeze", "features", "--batch", "2", "--plot",
                 str(tmp_path / "p.png")]) == 0
    assert f"wrote {tmp_path / 'p.png'}" in capsys.readouterr().out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
