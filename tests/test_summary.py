import torch

import frostline
from frostline.models import small_cnn


def peft_counts(model):
    """PEFT's get_nb_trainable_parameters, re-implemented (peft/peft_model.py) for plain tensors."""
    trainable, total = 0, 0
    for _, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def test_counts_match_peft(minilm):
    frostline.freeze(minilm, ["embeddings", "encoder.layer.[0-3]"])
    s = frostline.summary(minilm)
    assert (s.trainable, s.total) == peft_counts(minilm)
    assert s.frozen == s.total - s.trainable
    assert s.trainable > 0 and s.frozen > 0


def test_rows_per_top_level_module_and_table():
    model = frostline.freeze(small_cnn(), "features")
    s = frostline.summary(model)
    assert [r.name for r in s.rows] == ["features", "head"]
    assert s.rows[0].trainable == 0 and s.rows[1].frozen == 0
    text = str(s)
    assert "features" in text and "total" in text and "% trainable" in text


def test_optimizer_state_bytes():
    model = frostline.freeze(small_cnn(), "features")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    s = frostline.summary(model, opt)
    head_params = sum(p.numel() for p in model.head.parameters())
    assert s.rows[1].optimizer_bytes == 2 * head_params * 4 + 2 * 4  # exp_avg + exp_avg_sq + 2 float steps
    assert s.rows[0].optimizer_bytes == 0
    assert "optimizer state" in str(s)


def test_tied_counted_once(tied_lm):
    s = frostline.summary(tied_lm)
    assert s.total == sum(p.numel() for p in tied_lm.parameters())


def test_partial_column_fits_120_columns_and_table_keeps_the_detail():
    from frostline.models import tiny_resnet

    model = frostline.freeze(tiny_resnet(), ["layer1.*.weight", "conv1.weight"], rows=[0, 1])
    s = frostline.summary(model)
    partial = [r for r in s.rows if r.name == "layer1"][0].strategies
    assert len(partial) == 8
    text = str(s)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "0.conv1.weight (split), 0.bn1.weight (mask), 0.conv2.weight (split), ... (+5)" in text
    wide = s.table(width=None)
    assert ", ".join(partial) in wide and max(len(line) for line in wide.splitlines()) > 120


def test_summary_cost_linear_in_the_model_with_an_optimizer():
    """Optimizer state is counted per parameter once, not by a pass over all state per parameter (issue 14)."""
    from cost import growth

    def prepare(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        return lambda: frostline.summary(model, opt)

    assert growth(prepare) < 4.5
    assert growth(lambda m: lambda: frostline.summary(m)) < 4.5
