"""Lean backward (issue 9): exact gradients, less kept, reversible, per layer type and per model."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint

import frostline
from frostline import FreezeError, freeze, unfreeze
from frostline.lean import _bits, keeps, norm, saved_bytes
from frostline.lean._registry import COVERS, covering
from frostline.models import seed_cnn, small_cnn, tiny_resnet


class Probe(nn.Module):
    """A frozen scalar gain: gives parameter-free layers a frozen neighbour (the lean rule for them)."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return x * self.gain


def _bn(cls, c, **kw):
    def make():
        bn = cls(c, **kw)
        with torch.no_grad():  # non-trivial running statistics and affine
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            if bn.affine:
                bn.weight.uniform_(-2, 2)
                bn.bias.uniform_(-1, 1)
        return bn
    return make


# (id, module factory, input shape)
LAYERS = [
    ("conv1d", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (3, 4, 11)),
    ("conv2d-groups", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (3, 4, 9, 8)),
    ("conv2d-same-even", lambda: nn.Conv2d(4, 6, (3, 2), padding="same", dilation=2), (3, 4, 9, 8)),
    ("conv2d-reflect", lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", bias=False), (3, 4, 7, 7)),
    ("conv1d-replicate", lambda: nn.Conv1d(4, 6, 3, padding=2, padding_mode="replicate"), (3, 4, 7)),
    ("conv3d-circular", lambda: nn.Conv3d(4, 6, 3, padding=1, padding_mode="circular"), (2, 4, 4, 5, 4)),
    ("conv2d-unbatched", lambda: nn.Conv2d(4, 6, 3, stride=3), (4, 10, 10)),
    ("conv3d", lambda: nn.Conv3d(4, 6, 3, stride=(1, 2, 2), padding=1), (2, 4, 5, 6, 7)),
    ("convT1d", lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1), (3, 4, 7)),
    ("convT2d", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, dilation=2), (3, 4, 5, 6)),
    ("convT3d", lambda: nn.ConvTranspose3d(4, 6, 2, stride=2), (2, 4, 3, 4, 3)),
    ("bn1d-2d", _bn(nn.BatchNorm1d, 4), (5, 4)),
    ("bn1d-3d", _bn(nn.BatchNorm1d, 4), (5, 4, 6)),
    ("bn2d", _bn(nn.BatchNorm2d, 4), (3, 4, 5, 6)),
    ("bn3d", _bn(nn.BatchNorm3d, 4), (2, 4, 3, 4, 5)),
    ("bn2d-no-affine", _bn(nn.BatchNorm2d, 4, affine=False), (3, 4, 5, 6)),
    ("bn2d-sync", _bn(nn.SyncBatchNorm, 4), (3, 4, 5, 6)),
    ("layernorm", lambda: nn.LayerNorm(6), (3, 5, 6)),
    ("layernorm-2d", lambda: nn.LayerNorm((5, 6)), (3, 5, 6)),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), (3, 4, 5, 6)),
    ("relu", nn.ReLU, (3, 4, 5, 7)),
    ("relu-inplace", lambda: nn.ReLU(inplace=True), (3, 4, 5, 6)),
    ("leaky", lambda: nn.LeakyReLU(0.1), (3, 4, 5, 7)),
    ("relu6", nn.ReLU6, (3, 4, 5, 6)),
    ("hardtanh", lambda: nn.Hardtanh(-0.5, 0.5), (3, 7)),
    ("maxpool1d", lambda: nn.MaxPool1d(3, 2, 1), (3, 4, 11)),
    ("maxpool2d", lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (3, 4, 9, 8)),
    ("maxpool3d", lambda: nn.MaxPool3d(2), (2, 4, 4, 6, 4)),
    ("adaptivemax1d", lambda: nn.AdaptiveMaxPool1d(4), (3, 4, 11)),
    ("adaptivemax2d", lambda: nn.AdaptiveMaxPool2d((3, 2)), (3, 4, 7, 5)),
    ("adaptivemax3d", lambda: nn.AdaptiveMaxPool3d((2, 3, 2)), (2, 4, 5, 6, 4)),
    ("avgpool1d", lambda: nn.AvgPool1d(3, 2, 1), (3, 4, 11)),
    ("avgpool2d", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (3, 4, 9, 8)),
    ("avgpool3d", lambda: nn.AvgPool3d(2, divisor_override=3), (2, 4, 4, 6, 4)),
    ("adaptiveavg1d", lambda: nn.AdaptiveAvgPool1d(3), (3, 4, 11)),
    ("adaptiveavg2d", lambda: nn.AdaptiveAvgPool2d((3, 2)), (3, 4, 7, 5)),
    ("adaptiveavg3d", lambda: nn.AdaptiveAvgPool3d((2, 3, 2)), (2, 4, 5, 6, 4)),
]


def _covered_by(make):
    """The registered class whose lean forward serves the module ``make`` builds (the registry's own lookup)."""
    with torch.random.fork_rng():  # building a module draws random numbers; collection must not move the seed
        return covering(type(make()))


def _from_registry(cases, owner):
    """Per registered class with a lean forward of frostline's own, in the registry's order, the cases it serves
    (``owner``: each case's serving class, by name): a family registered tomorrow is tested here by adding its
    cases, with no edit to the tests below."""
    return [case for base, found in COVERS.items() if found.forward is not None
            for case in cases if owner[case[0]] is base]


OWNER = {name: _covered_by(make) for name, make, _ in LAYERS}  # each case's module built once, at collection
LEAN_CASES = _from_registry(LAYERS, OWNER)


def test_every_registered_lean_forward_has_cases():
    served = set(OWNER.values())
    missing = [base.__name__ for base, found in COVERS.items() if found.forward is not None and base not in served]
    assert not missing, f"no case in LAYERS for the lean forward of {missing}: add one"
    assert len(LEAN_CASES) == len(LAYERS), "a case of LAYERS that no registered lean forward serves"


def _pair(make):
    """The same frozen wrapper twice: plain PyTorch freezing and lean."""
    torch.manual_seed(0)
    wrapper = nn.Sequential(make(), Probe())
    plain = freeze(copy.deepcopy(wrapper), lean=False)
    lean = freeze(wrapper, lean=True)
    return plain, lean


def _run(model, x):
    return model(x * 1.0)  # a fresh non-leaf: in-place layers may modify it


def _grads(model, x, g, ctx=None, ckpt=None):
    x = x.detach().clone().requires_grad_()
    with ctx or torch.autocast("cpu", enabled=False):
        out = _run(model, x) if ckpt is None else checkpoint(_run, model, x, use_reentrant=ckpt)
    (out.float() * g).sum().backward()
    return out.detach().float(), x.grad


@pytest.mark.parametrize("mode", ["train", "eval", "autocast", "checkpoint", "checkpoint-reentrant"])
@pytest.mark.parametrize("name,make,shape", LEAN_CASES, ids=[row[0] for row in LEAN_CASES])
def test_layer_gradients_exact(name, make, shape, mode):
    plain, lean = _pair(make)
    assert "forward" in lean[0].__dict__ or keeps(lean[0]) is not None
    torch.manual_seed(1)
    x = torch.randn(shape)
    for m in (plain, lean):
        m.train(mode != "eval")
    out_shape = plain(x).shape
    g = torch.randn(out_shape)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else None
    ckpt = {"checkpoint": False, "checkpoint-reentrant": True}.get(mode)
    want_out, want = _grads(plain, x, g, ctx, ckpt)
    got_out, got = _grads(lean, x, g, ctx, ckpt)
    # bit-identical but for BatchNorm, whose folded scale may round the last bit differently
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,make,shape", LEAN_CASES, ids=[row[0] for row in LEAN_CASES])
def test_layer_keeps_less_and_is_seen_by_saved_tensor_hooks(name, make, shape):
    plain, lean = _pair(make)
    x = torch.randn(shape, requires_grad=True) * 1.0
    kept_plain = saved_bytes(plain, x).get("0", 0)
    kept_lean = saved_bytes(lean, x).get("0", 0)
    numel = x.numel()
    if name.startswith(("conv", "bn", "avg", "adaptiveavg")):
        assert kept_lean == 0  # weights and statistics are resident; shapes are not tensors
    elif name.startswith(("relu", "leaky", "hardtanh")):
        assert kept_lean == (numel + 7) // 8
    elif name.startswith(("max", "adaptivemax")):
        assert kept_lean == 4 * plain(x).numel()
    else:  # norms: the input (shared with the caller) plus per-row statistics
        assert kept_lean <= kept_plain
    if not name.startswith(("layernorm", "groupnorm")):
        assert kept_lean < kept_plain


def test_channels_last_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 6, 3, padding=1), _bn(nn.BatchNorm2d, 6)(), nn.ReLU(), nn.MaxPool2d(2),
                          nn.GroupNorm(3, 6), nn.LeakyReLU(0.2), nn.AvgPool2d(2), Probe())
    plain = freeze(copy.deepcopy(model), lean=False)
    freeze(model, lean=True)
    x = torch.randn(2, 5, 8, 8).to(memory_format=torch.channels_last)
    g = torch.randn(2, 6, 2, 2)
    torch.testing.assert_close(_grads(model, x, g)[1], _grads(plain, x, g)[1], rtol=1e-5, atol=1e-6)


def test_conv_transpose_output_size_argument():
    plain, lean = _pair(lambda: nn.ConvTranspose2d(4, 3, 3, stride=2))
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    want, got = (m[0](x, output_size=[12, 12]) for m in (plain, lean))
    assert got.shape == want.shape == (2, 3, 12, 12)
    g = torch.randn_like(want)
    assert torch.equal(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])


@pytest.mark.parametrize("make,shape", [(lambda: nn.LayerNorm(6), (3, 5, 6)),
                                        (lambda: nn.GroupNorm(2, 4), (3, 4, 5, 6))], ids=["layernorm", "groupnorm"])
def test_norm_upcast_by_autocast_keeps_the_half_precision_input(monkeypatch, make, shape):
    """CUDA autocast runs these norms in float32 on a half input; PyTorch then keeps the float32 copy."""
    monkeypatch.setattr(norm, "_compute_dtype", lambda x, probe: torch.float32)
    plain, lean = _pair(make)
    x = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) * 1.0
    g = torch.randn(shape)
    want_out = plain[0](x.float())  # what autocast does: cast, then the float32 op
    got_out = lean[0](x)
    assert got_out.dtype == torch.float32
    want, got = (torch.autograd.grad(out, x, g)[0] for out in (want_out, got_out))
    assert torch.equal(got_out, want_out) and torch.equal(got, want) and got.dtype == torch.bfloat16
    upcast = nn.Sequential(plain[0], Probe())
    upcast[0].forward = lambda t: type(plain[0]).forward(plain[0], t.float())
    assert saved_bytes(lean, x)["0"] < saved_bytes(upcast, x)["0"]


def test_bit_packing_without_the_little_endian_shortcut(monkeypatch):
    mask = torch.rand(3, 5, 7) > 0.5
    fast, order = _bits.pack(mask.clone())
    monkeypatch.setattr(_bits, "_LITTLE_ENDIAN", False)
    slow, _ = _bits.pack(mask.clone())
    assert torch.equal(fast, slow)
    assert torch.equal(_bits.gate(fast, order, mask.shape, 1, 0, torch.int32), mask.int())


def test_relu_gate_matches_pytorch_on_nan_and_zero_gradients():
    x = torch.tensor([-1.0, 0.0, -0.0, 2.0, float("nan"), 3.0, -4.0, 5.0, 6.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, float("nan"), 5.0, float("inf"), float("nan"), -0.0, 7.0])
    for layer in (nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.3)):
        plain, lean = _pair(lambda layer=layer: layer)
        want = torch.autograd.grad(plain[0](x * 1.0), x, g)[0]
        got = torch.autograd.grad(lean[0](x * 1.0), x, g)[0]
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num(), want.nan_to_num())


def _first_layer_trainable(model_fn, first: str):
    torch.manual_seed(0)
    model = model_fn()
    spec = ["*", f"!{first}"]
    return freeze(copy.deepcopy(model), spec, lean=False), freeze(model, spec, lean=True)


@pytest.mark.parametrize("model_fn,first", [(seed_cnn, "0"), (tiny_resnet, "conv1"), (small_cnn, "features.0")])
def test_models_first_layer_gradients_exact_and_memory(model_fn, first):
    plain, lean = _first_layer_trainable(model_fn, first)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for m in (plain, lean):
        m.train()
        torch.manual_seed(2)  # the same dropout masks in both
        F.cross_entropy(m(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), lean.parameters(), strict=False):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
    assert sum(saved_bytes(lean, x).values()) * 3 <= sum(saved_bytes(plain, x).values())


@pytest.mark.parametrize("mode", ["autocast", "checkpoint", "checkpoint-reentrant", "eval"])
def test_seed_cnn_exact_under_autocast_checkpoint_and_eval(mode):
    plain, lean = _first_layer_trainable(seed_cnn, "0")
    x = torch.randn(4, 3, 16, 16)
    grads = []
    for m in (plain, lean):
        m.train(mode != "eval")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            h = m[1](m[0](x))
            if mode.startswith("checkpoint"):  # the frozen region recomputed in backward
                out = checkpoint(m[2:], h, use_reentrant=mode.endswith("reentrant"))
            else:
                out = m[2:](h)
        out.float().square().mean().backward()
        grads.append(m[0].weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_compile_matches_eager():
    plain, lean = _first_layer_trainable(seed_cnn, "0")
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    F.cross_entropy(plain(x), y).backward()
    compiled = torch.compile(lean, backend="aot_eager", fullgraph=True)
    F.cross_entropy(compiled(x), y).backward()
    torch.testing.assert_close(lean[0].weight.grad, plain[0].weight.grad, rtol=1e-4, atol=1e-6)


def test_minilm_trainable_embeddings_frozen_layers(minilm):
    frozen = ["encoder", "pooler", "embeddings.word_embeddings"]  # the 30522-row table only slows the test down
    plain = freeze(copy.deepcopy(minilm), frozen, lean=False)
    lean = freeze(minilm, frozen, lean=True)
    assert keeps(lean.encoder.layer[0].output.LayerNorm).startswith("the input")
    ids = torch.randint(1000, 2000, (2, 12))
    for m in (plain, lean):
        m.train()
        torch.manual_seed(2)  # the same dropout masks in both
        m(ids).last_hidden_state.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), lean.parameters(), strict=False):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert sum(saved_bytes(lean, ids).values()) <= sum(saved_bytes(plain, ids).values())


def test_nothing_trainable_upstream_keeps_nothing():
    model = freeze(seed_cnn(), ["*", "!7"], lean=True)  # only the head trains; its input is the frozen output
    assert saved_bytes(model, torch.randn(2, 3, 8, 8)).keys() <= {"7"}


def test_unfreeze_restores_plain_forward_and_state_dict_keys():
    model = seed_cnn()
    keys = list(model.state_dict())
    freeze(model, ["*", "!0"], lean=True)
    lean_modules = [m for m in model.modules() if "forward" in m.__dict__]
    # convs, BNs and ReLUs of the blocks, the ReLU after the first conv, and the pool
    assert len(lean_modules) == 6 + 6 + 6 + 1 + 1
    assert list(model.state_dict()) == keys and type(model[2][0]) is nn.Conv2d
    unfreeze(model)
    assert not any("forward" in m.__dict__ or "_frostline_lean" in m.__dict__ for m in model.modules())
    assert keeps(model[2][0]) is None


def test_deepcopy_and_pickle_keep_lean_working():
    _, lean = _first_layer_trainable(seed_cnn, "0")
    x = torch.randn(2, 3, 8, 8)
    for clone in (copy.deepcopy(lean), pickle.loads(pickle.dumps(lean))):
        assert clone[2][0].forward.args[0] is clone[2][0]  # bound to the copy, not the original
        assert saved_bytes(clone, x) == saved_bytes(lean, x)


def test_lean_choice_per_freeze_call_and_default():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    freeze(model, "1", lean=False)
    freeze(model, "2", lean=True)
    assert keeps(model[1]) is None and keeps(model[2]) is not None
    freeze(model, "0")  # lean=None: the others keep their choice; the newly frozen one gets the default
    assert keeps(model[1]) is None and (keeps(model[0]) is not None) == frostline.lean.DEFAULT
    with pytest.raises(FreezeError, match="lean"):
        freeze(model, "0", lean="yes")


def test_batchnorm_scale_follows_changed_statistics():
    plain, lean = _pair(_bn(nn.BatchNorm2d, 4))
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    for _ in range(2):
        want, got = (torch.autograd.grad(m[0](x), x, g)[0] for m in (plain, lean))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for m in (plain, lean):  # e.g. statistics re-estimated between steps
            m[0].running_var.mul_(3.0)
            m[0].weight.data.mul_(-0.5)


def test_unfrozen_by_hand_falls_back_to_exact_plain_forward():
    torch.manual_seed(0)
    model = freeze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), lean=True)
    model[0].weight.requires_grad_(True)  # behind frostline's back
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    model(x).sum().backward()
    assert model[0].weight.grad is not None


def test_not_covered_modules_are_left_alone():
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    custom = nn.Conv2d(3, 3, 1)
    custom.forward = lambda x: x  # someone else's instance forward
    model = freeze(nn.Sequential(MyConv(3, 3, 1), custom, nn.Conv2d(3, 3, 1)), lean=True)
    assert "forward" not in model[0].__dict__ and model[1].forward(1) == 1 and keeps(model[2]) is not None
    model[2].__dict__["_frostline_partial"] = {"weight": object()}  # a partial freeze takes the module over
    frostline.lean.refresh(model, None)
    assert "forward" not in model[2].__dict__ and keeps(model[2]) is None


def test_meta_device_runs_without_host_syncs():
    _, lean = _first_layer_trainable(seed_cnn, "0")
    lean.to("meta")
    x = torch.randn(4, 3, 16, 16, device="meta")
    lean(x).sum().backward()
    assert lean[0].weight.grad.device.type == "meta"


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(1, 6), out=st.integers(1, 6), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       padding=st.integers(0, 2), dilation=st.integers(1, 2), bias=st.booleans(), grouped=st.booleans(),
       act=st.sampled_from(["relu", "leaky", "relu6"]), pool=st.sampled_from(["max", "avg", None]),
       train=st.booleans())
def test_random_frozen_conv_stacks_give_exact_input_gradients(channels, out, kernel, stride, padding, dilation,
                                                              bias, grouped, act, pool, train):
    """Property: for any frozen conv -> BatchNorm -> activation (-> pool) stack, lean's input gradient and output
    equal PyTorch's plain freezing (bit-identical but for BatchNorm's folded scale)."""
    groups = channels if grouped and out % channels == 0 else 1
    activation = {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.2), "relu6": nn.ReLU6()}[act]
    layers = [nn.Conv2d(channels, out, kernel, stride, padding, dilation, groups=groups, bias=bias),
              nn.BatchNorm2d(out), activation]
    if pool is not None:
        layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))

    def make() -> nn.Module:
        stack = nn.Sequential(*copy.deepcopy(layers))
        with torch.no_grad():  # statistics a trained network would have, not the identity
            stack[1].running_mean.uniform_(-0.5, 0.5)
            stack[1].running_var.uniform_(0.5, 2.0)
        return stack

    plain, lean = _pair(make)
    torch.manual_seed(2)
    x = torch.randn(2, channels, 9, 9)
    for model in (plain, lean):
        model.train(train)
    g = torch.randn(plain(x).shape)
    want_out, want = _grads(plain, x, g, None, None)
    got_out, got = _grads(lean, x, g, None, None)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_keeps_tells_the_truth_for_batchnorm_on_batch_statistics():
    """A frozen BatchNorm that normalises with batch statistics (no running stats, or kept in train mode) runs
    PyTorch's forward, and explain/keeps say so instead of claiming the lean form."""
    no_stats = freeze(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)), lean=True)
    in_train = freeze(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), lean=True, eval_frozen=False).train()
    for model in (no_stats, in_train):
        assert keeps(model[1]).startswith("the input, as PyTorch does")
    assert keeps(in_train.eval()[1]).startswith("nothing new")


def test_silent_12_setting_lean_default_false_takes_effect_for_later_freezes():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))

    x = torch.randn(2, 3, 8, 8)
    saved = frostline.lean.DEFAULT
    try:
        frostline.lean.DEFAULT = False  # the documented switch: read when freeze runs, not copied at import
        off = freeze(make(), "2")
        assert keeps(off[2]) is None and "forward" not in off[2].__dict__  # PyTorch's own forward
        frostline.lean.DEFAULT = True
        on = freeze(make(), "2")
        assert keeps(on[2]) is not None and "forward" in on[2].__dict__
        # conv 0 trains, so backward runs through the frozen ReLU and conv 2: plain PyTorch keeps the ReLU's
        # float output (conv 2's input), the lean ReLU one bit per element
        assert saved_bytes(off, x)["1"] == 2 * 4 * 6 * 6 * 4 and saved_bytes(on, x)["1"] == 2 * 4 * 6 * 6 // 8
        assert freeze(off, "0") is off and keeps(off[2]) is None  # a module keeps the choice it was frozen with
        frostline.lean.DEFAULT = False
        assert keeps(freeze(make(), "2", lean=True)[2]) is not None  # an explicit lean= wins over the default
    finally:
        frostline.lean.DEFAULT = saved


# -- recomputing fully frozen blocks (issue 15 item 6) ----------------------------------------------------------
class Block(nn.Module):
    """A pre-norm residual MLP block: norm, up, GELU, down."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.norm, self.up, self.act, self.down = nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), \
            nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.down(self.act(self.up(self.norm(x))))


def _blocks_model(n: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), *[Block() for _ in range(n)], nn.Linear(8, 2))


def _packed(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every tensor autograd saves during the forward (parameters included), and the output."""
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = model(x)
    return saved, out


def test_recompute_frozen_blocks_keep_only_their_inputs_and_gradients_are_exact():
    plain_model, model = _blocks_model(), _blocks_model()
    for m in (plain_model, model):
        freeze(m, ["1", "2", "3"])  # the first Linear and the head train; gradients flow back through the blocks
    frostline.lean.recompute([model[1], model[2], model[3]])
    x = torch.randn(16, 4)
    # what the blocks save: exactly one tensor each, the block's input (the output of what runs before it)
    inputs: list[torch.Tensor] = []
    hooks = [model[i].register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for i in (1, 2, 3)]
    saved, out = _packed(model, x)
    for h in hooks:
        h.remove()
    from_blocks = [t for t in saved if any(t is i for i in inputs)]
    assert len(from_blocks) == 3
    plain_saved, _ = _packed(plain_model, x)
    params = {id(p) for p in model.parameters()}
    ours = [t for t in saved if id(t) not in params]
    assert len(ours) < len([t for t in plain_saved if id(t) not in {id(p) for p in plain_model.parameters()}])
    # the blocks save nothing but their inputs: the first Linear's input, three block inputs, the head's input
    assert sorted(saved_bytes(model, x)) == ["0", "1", "2", "3", "4"] and all(
        saved_bytes(model, x)[str(i)] == 16 * 8 * 4 for i in (1, 2, 3))
    del out
    # exact: every gradient bit-identical to the run that keeps the activations, and the trainable ones train
    for m in (plain_model, model):
        optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
        for step in range(3):
            optimizer.zero_grad()
            m(x + step).square().mean().backward()
            optimizer.step()
    for (name, a), b in zip(plain_model.named_parameters(), model.parameters(), strict=False):
        assert torch.equal(a, b), name
    start = _blocks_model()
    assert not torch.equal(start[0].weight, model[0].weight) and torch.equal(start[2].up.weight, model[2].up.weight)


def test_recompute_skips_blocks_that_train_and_unfreeze_restores_the_plain_forward():
    model = _blocks_model()
    freeze(model, ["1", "2.norm", "2.up", "2.down", "3.up"])  # block 3 trains its norm and down
    frostline.lean.recompute([model[1], model[2], model[3]])
    x = torch.randn(16, 4)
    kept = saved_bytes(model, x)
    assert "1" in kept and "1.act" not in kept  # frozen: its input only
    assert "3" not in kept and "3.act" in kept  # trains: its activations, as PyTorch keeps them
    assert keeps(model[1]) == keeps(model[2]) and "recomputes" in keeps(model[1]) and keeps(model[3]) is None
    frostline.lean.refresh(model, None)  # what every freeze/unfreeze does: drops it from blocks that train
    assert "forward" not in model[3].__dict__ and "forward" in model[1].__dict__
    unfreeze(model, ["2.up"])
    assert "forward" not in model[2].__dict__ and keeps(model[2]) is None and "2.act" in saved_bytes(model, x)
    freeze(model, ["2.up"])  # freezing again does not bring it back by itself
    assert "forward" not in model[2].__dict__
    frostline.lean.recompute(model[1], enabled=False)
    assert "forward" not in model[1].__dict__ and "1.act" in saved_bytes(model, x)
    # the forward travels with copies, and the copy recomputes too
    frostline.lean.recompute(model[2])
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "2.act" not in saved_bytes(clone, x) and keeps(clone[2]) == keeps(model[2])
    assert frostline.explain(model, x).kept["2"] == keeps(model[2])  # visible in explain's table


def test_recompute_refuses_a_module_with_a_forward_of_its_own():
    model = _blocks_model()
    model[1].forward = lambda x: x
    with pytest.raises(FreezeError, match="already has an instance forward of its own"):
        frostline.lean.recompute([model[2], model[1]])
    assert "forward" not in model[2].__dict__  # all or nothing
    with pytest.raises(TypeError, match="enabled must be True or False"):
        frostline.lean.recompute(model[2], enabled=1)


def test_recompute_leaves_calls_with_state_objects_plain():
    """A KV cache passed to a frozen layer would be appended to again by the replay in backward."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    freeze(llama, ["model.layers"])
    frostline.lean.recompute(list(llama.model.layers))
    ids = torch.randint(0, 50, (2, 9))
    grads = {}
    for use_cache in (False, True):
        llama.zero_grad()
        if use_cache:
            with pytest.warns(UserWarning, match="LlamaDecoderLayer was given cache=DynamicCache.*runs plain"
                                                 ".*use_cache=False"):
                out = llama(input_ids=ids, labels=ids, use_cache=True)
        else:
            assert "model.layers.0.mlp" not in saved_bytes(llama, input_ids=ids, labels=ids, use_cache=False)
            out = llama(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        grads[use_cache] = [p.grad.clone() for p in llama.parameters() if p.requires_grad]
        if use_cache:
            assert out.past_key_values.get_seq_length() == 9  # not 18: the layers ran once
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True], strict=False))
    assert any(g.abs().sum() > 0 for g in grads[False])
