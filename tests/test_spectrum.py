"""Spectrum (issue 15 item 5): rank the weight matrices of each kind by the SNR of their singular values against the
Marchenko-Pastur edge and train the top fraction; the result is a spec freeze/unfreeze accept."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import frostline
from frostline.spectrum import kind, singular_values, snr

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 4
STRUCTURED = {1: "self_attn.q_proj", 3: "mlp.down_proj", 2: "mlp.down_proj"}  # layer -> planted low-rank matrix


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer, path in STRUCTURED.items():
            weight = model.get_parameter(f"model.layers.{layer}.{path}.weight")
            n, m = weight.shape
            low_rank = torch.randn(n, 3, generator=g) @ torch.randn(3, m, generator=g) / math.sqrt(n * m)
            weight.mul_(0.05).add_(low_rank * weight.norm())  # same scale, mostly structure
    return model


def _reference_snr(weight: torch.Tensor) -> float:
    """The authors' formula, written out on torch.linalg.svdvals (cognitivecomputations/spectrum)."""
    s = torch.linalg.svdvals(weight.double())
    q75, q25 = torch.quantile(s, 0.75), torch.quantile(s, 0.25)
    n, m = weight.shape
    beta = n / m if n < m else m / n
    edge = (q75 - q25) / 1.349 * math.sqrt((1 + math.sqrt(beta)) ** 2)
    signal = s[s > edge].sum()
    noise = s[s <= edge].sum() if (s <= edge).any() else torch.tensor(1.0)
    return float(signal / noise / s[0])


def test_kind_strips_layer_indices():
    assert kind("model.layers.12.self_attn.q_proj.weight") == "model.layers.*.self_attn.q_proj.weight"
    assert kind("0.weight") == "*.weight" and kind("h.3.attn.c_attn.weight") == "h.*.attn.c_attn.weight"
    assert kind("lm_head.weight") == "lm_head.weight" and kind("layer10x.w2.weight") == "layer10x.w2.weight"


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (32, 32)])
def test_singular_values_match_svdvals(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(singular_values(w), torch.linalg.svdvals(w.double()), rtol=1e-9, atol=1e-9)


def test_snr_is_the_authors_formula():
    model = _llama()
    for name, weight in model.named_parameters():
        if weight.dim() == 2:
            assert snr(weight) == pytest.approx(_reference_snr(weight.detach()), rel=1e-6), name
    assert snr(torch.zeros(4, 6)) == 0.0
    with pytest.raises(ValueError, match=r"scores a matrix \(2-D tensor\), got shape \(3, 2, 2\)"):
        snr(torch.ones(3, 2, 2))


def test_top_fraction_of_each_kind_by_snr_in_model_order():
    model = _llama()
    chosen = frostline.spectrum(model, 0.5)
    kinds: dict[str, list[str]] = {}
    for name in chosen:
        kinds.setdefault(kind(name), []).append(name)
    assert len(kinds) == 7 and all(len(v) == LAYERS // 2 for v in kinds.values())  # q k v o gate up down
    for layer, path in STRUCTURED.items():
        assert f"model.layers.{layer}.{path}.weight" in chosen  # the planted structure ranks first
    assert "lm_head.weight" not in chosen and "model.embed_tokens.weight" not in chosen  # kinds of one
    order = [n for n, _ in model.named_parameters()]
    assert chosen == sorted(chosen, key=order.index)
    scores = {n: snr(model.get_parameter(n)) for n in frostline.select(model, "*.q_proj.weight")}
    assert [n for n in chosen if n.endswith("q_proj.weight")] == sorted(sorted(scores, key=scores.get)[-2:],
                                                                          key=order.index)
    top = frostline.spectrum(model, 0.25)  # one per kind: the best of each, so within the top two
    assert len(top) == 7 and set(top) < set(chosen)
    assert len(frostline.spectrum(model, 1.0)) == 7 * LAYERS + 2  # everything, kinds of one included


def test_deterministic_and_scored_on_effective_values():
    model = _llama()
    first = frostline.spectrum(model, 0.5)
    assert frostline.spectrum(model, 0.5) == first and frostline.spectrum(copy.deepcopy(model), 0.5) == first
    frostline.freeze(model, "model.layers.1.self_attn.q_proj.weight", rows=range(8), strategy="delta")
    assert frostline.spectrum(model, 0.5) == first  # the Parameter holds the effective values


def test_result_is_a_spec_for_freeze_and_unfreeze():
    model = _llama()
    chosen = frostline.spectrum(model, 0.25, spec="model.layers.*")
    frostline.unfreeze(frostline.freeze(model), chosen)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == chosen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in chosen), name  # chosen trained, every other one exact


def test_spec_limits_what_is_ranked():
    model = _llama()
    assert {kind(n) for n in frostline.spectrum(model, 0.5, spec="*.mlp.*")} == {
        f"model.layers.*.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}


@pytest.mark.parametrize("fraction, match", [
    (0, r"fraction must be a number in \(0, 1\]"), (1.5, "in \\(0, 1\\]"), (True, "got True"), ("0.5", "got '0.5'"),
    (0.2, r"keeps no matrix: the largest kind has 4 matrices, .*at least 1/4 = 0.25"),
])
def test_bad_fractions_say_what_was_expected(fraction, match):
    with pytest.raises(ValueError, match=match):
        frostline.spectrum(_llama(), fraction)


def test_spec_without_matrices_is_refused():
    with pytest.raises(ValueError, match="selects no weight matrix"):
        frostline.spectrum(_llama(), 0.5, spec="*norm*")
