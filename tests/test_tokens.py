"""Vocabulary rows (issue 15 item 3): token_rows collects the ids data uses; train_token_rows trains only their rows
of the input embedding and LM head, exactly, with gradient and optimizer state for those rows alone (tied or not)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frostline
from frostline import FreezeError, SelectionError
from frostline._state import named_logical_parameters
from frostline.partial import get_partial
from frostline.summary import optimizer_state_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, HIDDEN = 96, 16
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _llama(tied: bool = False) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    used = torch.tensor([3, 5, 8, 13, 21, 34, 55, 89])
    return [{"input_ids": used[torch.randint(0, len(used), (2, 12), generator=g)]} for _ in range(3)]


def _values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in named_logical_parameters(model)}


def _train(model: nn.Module, batches, steps: int = 3) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(steps):
        batch = batches[step % len(batches)]
        opt.zero_grad()
        model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.backward()
        opt.step()
    return opt


def _frozen_rows(rows: torch.Tensor, size: int = VOCAB) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[rows] = False
    return keep


# -- token_rows --------------------------------------------------------------------------------------------------
def test_token_rows_reads_tensors_lists_mappings_and_loaders():
    assert frostline.token_rows(torch.tensor([[9, 2, 2], [4, 9, 0]])).tolist() == [0, 2, 4, 9]
    assert frostline.token_rows([[7, 1], [1, 3]]).tolist() == [1, 3, 7]
    assert frostline.token_rows([5, 5, 2]).dtype == torch.int64
    labelled = {"input_ids": torch.tensor([[4, 6]]), "labels": torch.tensor([[6, -100]]), "other": [99]}
    assert frostline.token_rows(labelled).tolist() == [4, 6]  # -100 skipped; keys other than ids not read
    loader = torch.utils.data.DataLoader([{"input_ids": torch.tensor([i, i + 10])} for i in range(5)], batch_size=2)
    assert frostline.token_rows(loader).tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert frostline.token_rows(torch.tensor([i]) for i in (3, 1)).tolist() == [1, 3]  # a generator
    assert frostline.token_rows(range(3)).tolist() == [0, 1, 2]


def test_token_rows_skips_padding_and_merges_many_batches():
    padded = {"input_ids": torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])}
    assert frostline.token_rows(padded).tolist() == [5, 6, 7]
    ragged = {"input_ids": [[5, 6, 1], [7, 1]], "attention_mask": [[1, 1, 0], [1, 0]]}  # lists, row by row
    assert frostline.token_rows(ragged).tolist() == [5, 6, 7]
    assert frostline.token_rows([{"input_ids": [4, 2], "attention_mask": [1, 0]}]).tolist() == [4]
    many = [torch.tensor([i % 300, 1000]) for i in range(700)]  # more batches than one merge holds
    assert frostline.token_rows(many).tolist() == list(range(300)) + [1000]


@pytest.mark.parametrize("data, error, match", [
    (torch.tensor([1.0, 2.0]), TypeError, "integer tensor, got torch.float32"),
    ("hello", TypeError, "tokenize it first"),
    ([1.5], TypeError, "must be integers, got a float"),
    ({"text": [1, 2]}, ValueError, r"no token ids.*'input_ids', 'labels'"),
    ([], ValueError, "no token ids"),
])
def test_token_rows_says_what_it_expected(data, error, match):
    with pytest.raises(error, match=match):
        frostline.token_rows(data)


def test_token_rows_checks_vocab_size():
    assert frostline.token_rows([3, 9], vocab_size=10).tolist() == [3, 9]
    with pytest.raises(ValueError, match=r"token id 10 is out of range for vocab_size=10 .*0\.\.9"):
        frostline.token_rows([3, 10], vocab_size=10)


# -- train_token_rows: untied -----------------------------------------------------------------------------------
def test_untied_rows_train_exactly_with_state_for_those_rows_only():
    model = frostline.freeze(_llama())
    frostline.unfreeze(model, "model.layers.0")
    rows = frostline.token_rows(_batches(), vocab_size=VOCAB)
    assert frostline.train_token_rows(model, rows) is model
    assert get_partial(model, EMBED).strategy == "delta" and get_partial(model, HEAD).strategy == "split"
    before = _values(model)
    opt = _train(model, _batches())
    after = _values(model)
    frozen = _frozen_rows(rows)
    for name in (EMBED, HEAD):
        assert torch.equal(after[name][frozen], before[name][frozen]), name  # every frozen row, bit-exact
        assert not torch.equal(after[name][rows], before[name][rows]), name  # the used rows trained
    assert torch.equal(after["model.norm.weight"], before["model.norm.weight"])  # frozen whole stays
    assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    for name in (EMBED, HEAD):  # gradient and AdamW state: len(rows) x HIDDEN, not the table
        (trainable,) = get_partial(model, name).trainable_parameters()
        assert trainable.shape == (len(rows), HIDDEN) and trainable.grad.shape == (len(rows), HIDDEN)
        assert optimizer_state_bytes(opt, [trainable]) == 2 * len(rows) * HIDDEN * 4 + 4  # exp_avg(+_sq), step
    assert frostline.summary(model).trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_rows_of_a_trainable_tensor_freeze_the_others_and_unfreeze_restores():
    model = _llama()
    frostline.train_token_rows(model, [3, 5])
    mask = get_partial(model, EMBED).frozen_mask()
    assert (~mask).nonzero()[:, 0].unique().tolist() == [3, 5]
    frostline.train_token_rows(model, [5, 8])  # rows frozen already stay frozen: only 5 is left
    assert (~get_partial(model, EMBED).frozen_mask()).nonzero()[:, 0].unique().tolist() == [5]
    frostline.unfreeze(model, [EMBED, HEAD])
    assert frostline.is_frozen(model, EMBED) is False and frostline.is_frozen(model, HEAD) is False
    assert model.model.embed_tokens.weight.requires_grad


def test_spec_names_the_vocabulary_tensors_of_any_model():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    with pytest.raises(SelectionError, match="no get_input_embeddings.*name the vocabulary tensors"):
        frostline.train_token_rows(model, [1])
    frostline.train_token_rows(model, torch.tensor([1, 2]), ["0.weight", "1.weight"], strategy="mask")
    assert {get_partial(model, n).strategy for n in ("0.weight", "1.weight")} == {"mask"}
    assert frostline.is_frozen(model, "1.bias") is False  # what spec leaves out is untouched


@pytest.mark.parametrize("rows, match", [
    ([3, VOCAB], rf"{EMBED}: rows must lie in 0\.\.{VOCAB - 1} .*got \[{VOCAB}\]"),
    (torch.tensor([0.5]), "1-D integer tensor.*got a torch.float32 tensor"),
    (["a"], r"list, tuple or range of ints .*got \['a'\]"),
])
def test_bad_rows_say_what_was_expected(rows, match):
    model = _llama()
    with pytest.raises(FreezeError, match=match):
        frostline.train_token_rows(model, rows)
    assert frostline.is_frozen(model, EMBED) is False  # nothing changed


# -- tied embeddings ---------------------------------------------------------------------------------------------
def test_tied_embedding_is_one_tensor_with_one_strategy_and_trains_exactly():
    model = frostline.freeze(_llama(tied=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    rows = frostline.token_rows(_batches())
    frostline.train_token_rows(model, rows, strategy="mask")
    part = get_partial(model, EMBED)
    assert part.strategy == "mask" and get_partial(model, HEAD) is part  # both names, one strategy
    before = _values(model)[EMBED]
    opt = _train(model, _batches())
    after = model.model.embed_tokens.weight.detach()
    frozen = _frozen_rows(rows)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert torch.equal(after[frozen], before[frozen])
    assert not torch.equal(after[rows], before[rows])
    # mask keeps the tie exact, with a dense gradient and dense AdamW state (auto picks delta for few rows)
    assert model.model.embed_tokens.weight.grad.shape == (VOCAB, HIDDEN)
    assert optimizer_state_bytes(opt) == 2 * VOCAB * HIDDEN * 4 + 4


# -- with LISA: the benchmark's frostline row, small -------------------------------------------------------------
def test_lisa_with_vocabulary_rows_keeps_frozen_rows_exact_and_state_for_rows_and_active_blocks():
    from transformers import LlamaConfig, LlamaForCausalLM

    from frostline.schedules import LayerwiseSampling

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32,
                                         num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2))
    batches = _batches()
    rows = frostline.token_rows(batches)
    frostline.train_token_rows(model, rows)
    lisa = LayerwiseSampling(1, every=2)
    lisa.step(model, step=0)
    opt = frostline.optimizer(model, torch.optim.AdamW, lr=1e-2)
    before, sampled = _values(model), set()
    for step in range(4):
        lisa.step(model, opt, step=step)
        sampled |= set(lisa.active)
        batch = batches[step % len(batches)]["input_ids"]
        opt.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        held = {id(p) for p in opt.state}
        expected = {id(p) for name in (EMBED, HEAD) for p in get_partial(model, name).trainable_parameters()}
        expected |= {id(p) for p in model.model.layers[lisa.active[0]].parameters()}
        expected |= {id(model.model.norm.weight)}
        assert held == expected  # state for the used rows, the active block and the final norm only
    after, frozen = _values(model), _frozen_rows(rows)
    for name in (EMBED, HEAD):
        assert torch.equal(after[name][frozen], before[name][frozen])
        assert not torch.equal(after[name][rows], before[name][rows])
    for i in range(4):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        assert torch.equal(after[name], before[name]) == (i not in sampled), name


def test_tied_embedding_rows_with_state_for_those_rows_only():
    model = frostline.freeze(_llama(tied=True))
    keys = list(model.state_dict())
    rows = frostline.token_rows(_batches())
    frostline.train_token_rows(model, rows)
    part = get_partial(model, EMBED)
    assert part.strategy == "delta" and get_partial(model, HEAD) is part  # auto: 8 of 96 rows train
    assert model.lm_head.weight is model.model.embed_tokens.weight and list(model.state_dict()) == keys
    before = _values(model)[EMBED]
    opt = _train(model, _batches())
    after, frozen = model.model.embed_tokens.weight.detach(), _frozen_rows(rows)
    assert torch.equal(after[frozen], before[frozen]) and not torch.equal(after[rows], before[rows])
    assert optimizer_state_bytes(opt) == 2 * len(rows) * HIDDEN * 4 + 4  # proportional to the rows that train
    (trainable,) = part.trainable_parameters()
    assert trainable.grad.shape == (len(rows), HIDDEN) and model.model.embed_tokens.weight.grad is None
    assert model.lm_head.weight is model.model.embed_tokens.weight and list(model.state_dict()) == keys


def test_tied_embedding_rows_gradient_equals_the_masked_full_gradient():
    model, reference = _llama(tied=True), _llama(tied=True)
    rows = frostline.token_rows(_batches())
    frostline.train_token_rows(model, rows)
    ids = _batches()[0]["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    reference(input_ids=ids, labels=ids).loss.backward()  # the whole tied weight trains: both uses' gradient
    (trainable,) = get_partial(model, EMBED).trainable_parameters()
    expected = reference.model.embed_tokens.weight.grad[rows]
    assert expected.abs().sum() > 0
    torch.testing.assert_close(trainable.grad, expected, rtol=1e-5, atol=1e-6)  # float32, another summation order
    frostline.unfreeze(model, HEAD)  # the one tied Parameter again, trainable, both names
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.weight.requires_grad
    assert frostline.is_frozen(model, EMBED) is False
