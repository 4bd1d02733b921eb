"""Fused MoE experts (issue 15 item 4): transformers 5 stores a layer's experts as 3-D Parameters
(``mlp.experts.gate_up_proj`` [experts, 2 x moe_intermediate, hidden], ``down_proj`` [experts, hidden,
moe_intermediate]), so "train experts 6-7 only" is partial freezing along dim 0. Built small from Qwen3-MoE and
Mixtral configs."""

from __future__ import annotations

import pytest
import torch

import frostline
from frostline import FreezeError
from frostline._state import named_logical_parameters
from frostline.lean import saved_bytes
from frostline.partial import get_partial

pytestmark = pytest.mark.usefixtures("one_thread")

EXPERTS, TRAINED, FROZEN = 8, [6, 7], range(6)
SPEC = "model.layers.*.mlp.experts.*"


def _qwen3_moe(implementation: str = "grouped_mm"):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=EXPERTS, num_experts_per_tok=2)
    config._experts_implementation = implementation
    return Qwen3MoeForCausalLM(config)


def _mixtral(implementation: str = "grouped_mm"):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=EXPERTS,
                           num_experts_per_tok=2)
    config._experts_implementation = implementation
    return MixtralForCausalLM(config)


BUILDERS = {"qwen3_moe": _qwen3_moe, "mixtral": _mixtral}
IDS = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(3))


def _experts_only(model, strategy: str | None):
    """Everything frozen but the fused expert tensors; of those, experts 0-5 frozen with ``strategy``."""
    names = frostline.select(model, SPEC)
    frostline.freeze(model, ["*", *[f"!{n}" for n in names]])
    if strategy is not None:
        frostline.freeze(model, names, rows=FROZEN, strategy=strategy)
    return names


def _values(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in named_logical_parameters(model)}


def _train(model, steps: int = 3) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
    return opt


def test_fused_expert_tensors_are_3d_parameters_indexed_by_expert():
    for build in BUILDERS.values():
        model = build()
        shapes = {n.rpartition(".")[2]: tuple(p.shape) for n, p in model.named_parameters() if ".experts." in n}
        assert shapes == {"gate_up_proj": (EXPERTS, 32, 32), "down_proj": (EXPERTS, 32, 16)}


@pytest.mark.parametrize("arch, implementation, strategy", [
    ("qwen3_moe", "grouped_mm", "delta"), ("qwen3_moe", "grouped_mm", "mask"), ("qwen3_moe", "eager", "delta"),
    ("qwen3_moe", "eager", "mask"), ("mixtral", "grouped_mm", "delta"), ("mixtral", "grouped_mm", "mask"),
])
def test_experts_0_to_5_stay_exact_while_6_and_7_train(arch, implementation, strategy):
    model = BUILDERS[arch](implementation)
    names = _experts_only(model, strategy)
    assert len(names) == 4 and {get_partial(model, n).strategy for n in names} == {strategy}
    before = _values(model)
    opt = _train(model)
    after = _values(model)
    for name in names:
        assert torch.equal(after[name][FROZEN], before[name][FROZEN]), name  # every frozen expert, bit-exact
        assert not torch.equal(after[name][TRAINED], before[name][TRAINED]), name
    assert all(torch.equal(after[n], before[n]) for n in after if n not in names)  # the rest frozen whole
    expert_state = [s for state in opt.state.values() for s in state.values() if s.dim() == 3]
    rows = {s.shape[0] for s in expert_state}
    # delta: optimizer state for the two trainable experts only; mask: dense state (the price of one Parameter)
    assert len(expert_state) == 2 * len(names) and rows == ({len(TRAINED)} if strategy == "delta" else {EXPERTS})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items() if ".experts." in k} == {
        n: tuple(before[n].shape) for n in names}  # checkpoint keys and shapes unchanged


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_trainable_experts_get_the_gradient_unfrozen_training_computes(arch):
    plain, partial = BUILDERS[arch](), BUILDERS[arch]()
    names = _experts_only(plain, None)
    _experts_only(partial, "delta")
    for model in (plain, partial):
        model(input_ids=IDS, labels=IDS).loss.backward()
    params = dict(plain.named_parameters())
    for name in names:
        (trainable,) = get_partial(partial, name).trainable_parameters()
        assert trainable.shape[0] == len(TRAINED) and trainable.grad.abs().sum() > 0
        torch.testing.assert_close(trainable.grad, params[name].grad[TRAINED], rtol=0, atol=0)


def test_auto_picks_delta_and_split_refuses_what_it_cannot_serve():
    model = _qwen3_moe()
    names = _experts_only(model, "auto")
    assert {get_partial(model, n).strategy for n in names} == {"delta"}  # 2 of 8 train: delta's state is 1/4
    fresh = _qwen3_moe()
    with pytest.raises(FreezeError, match=r"strategy='split' cannot serve .*gate_up_proj.*Qwen3MoeExperts"):
        frostline.freeze(fresh, SPEC, rows=FROZEN, strategy="split")


def test_delta_keeps_no_copy_of_the_expert_tensors_for_backward():
    plain, partial = _qwen3_moe(), _qwen3_moe()
    _experts_only(plain, None)
    _experts_only(partial, "delta")
    kept = [sum(saved_bytes(m, input_ids=IDS, labels=IDS).values()) for m in (plain, partial)]
    assert kept[0] > 0 and kept[1] == kept[0]  # the forward uses the Parameter itself (a view), not a merge
