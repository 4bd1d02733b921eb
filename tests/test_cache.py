"""FeatureCache: same losses as uncached training, the prefix skipped once cached, invalidation and refusals."""

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline.cache import CacheError, _progress_bar
from frostline.models import seed_cnn, small_cnn, tiny_resnet


def counting(module: nn.Module) -> list[int]:
    """A list whose length is how often ``module`` really ran its forward."""
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def train_side_by_side(model, cache_args, upto, x, y, steps=3, sample_ids=None, watch=None, **cache_kwargs):
    """Train a copy without a cache and the model with one, same seeds; return both loss lists and the cache."""
    reference = copy.deepcopy(model)  # before any hook of the test is registered on the model
    cache = frostline.FeatureCache(model, upto=upto, **cache_kwargs)
    if watch is not None:  # (module name, list): count the real forwards of that module of the cached model
        model.get_submodule(watch[0]).register_forward_hook(lambda *_: watch[1].append(1))
    ids = torch.arange(len(x)) if sample_ids is None else sample_ids
    losses = []
    for m, forward in ((model, lambda: cache(ids, *cache_args)), (reference, lambda: reference(*cache_args))):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        run = []
        for step in range(steps):
            torch.manual_seed(step)  # the suffix's dropout draws the same numbers in both runs
            out = forward()
            logits = out if isinstance(out, torch.Tensor) else out.last_hidden_state[:, 0, :4]
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    return losses[0], losses[1], cache


@pytest.mark.parametrize("make, spec, upto, inner", [
    (seed_cnn, ["0", "2", "3"], "3", "2.0"),
    (small_cnn, "features", "features", "features.0"),
    (tiny_resnet, ["conv1", "bn1", "layer1", "layer2"], "layer2", "layer1.0.conv1"),
])
def test_cnn_same_losses_and_prefix_skipped(make, spec, upto, inner):
    torch.manual_seed(0)
    model = frostline.freeze(make(), spec).train()  # frozen BN and dropout stay in eval
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    ran = []
    cached, plain, cache = train_side_by_side(model, (x,), upto, x, y, steps=3, watch=(inner, ran))
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert len(ran) == 1  # only the forward that stored the rows
    assert len(cache) == 4 and cache.nbytes == 4 * cache.bytes_per_sample > 0


def test_bert_top2_same_losses_with_padding(minilm):
    frostline.freeze(minilm, ["embeddings", "encoder.layer.[0-3]"])
    minilm.train()
    minilm.embeddings.eval(), minilm.encoder.layer[:4].eval()  # the prefix in eval, layers 4-5 train with dropout
    ids = torch.randint(1000, 30000, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    y = torch.randint(0, 4, (4,))
    ran = []
    cached, plain, cache = train_side_by_side(minilm, (ids, mask), "encoder.layer.3", ids, y,
                                              watch=("embeddings.word_embeddings", ran))
    assert cached == pytest.approx(plain, rel=1e-5)
    assert len(ran) == 1
    assert cache.bytes_per_sample == 12 * 384 * 4


def test_mixed_batches_and_eval_mode_reuse_rows():
    torch.manual_seed(0)
    model = frostline.freeze(small_cnn(), "features").train()
    reference = copy.deepcopy(model)
    cache = frostline.FeatureCache(model, upto="features")
    x = torch.randn(8, 3, 8, 8)
    cache(torch.arange(4), x[:4])
    mixed = torch.tensor([2, 3, 4, 5])  # two stored, two new: the model runs as usual
    torch.manual_seed(1)
    out = cache(mixed, x[2:6])
    torch.manual_seed(1)
    assert torch.allclose(out, reference(x[2:6]))
    assert len(cache) == 6
    model.eval(), reference.eval()
    with torch.no_grad():  # validation in eval mode: same rows, nothing dropped
        assert torch.allclose(cache(torch.arange(6), x[:6]), reference(x[:6]))
        assert torch.allclose(cache(torch.arange(6), x[:6]), reference(x[:6]))
    assert cache.invalidations == 0 and len(cache) == 6


def test_fill_with_ids_dataloader_then_only_suffix_runs():
    torch.manual_seed(0)
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    data = torch.utils.data.TensorDataset(torch.randn(10, 3, 8, 8), torch.randint(0, 10, (10,)))
    loader = torch.utils.data.DataLoader(frostline.with_ids(data), batch_size=4)
    cache = frostline.FeatureCache(model, upto="2", progress=False)
    ran = counting(model[2][0])
    assert cache.fill((ids, x) for ids, x, y in loader) == 10
    assert cache.fill([(ids, x) for ids, x, y in loader]) == 0  # nothing new
    assert len(ran) == 3 and len(cache) == 10
    for ids, x, y in loader:
        assert torch.allclose(cache(ids, x), model(x), atol=1e-6)
    assert len(ran) == 3 + 3 + 1  # the uncached reference calls above, plus one checked cached forward
    with pytest.raises(CacheError, match="sample_ids, \\*model_args"):
        cache.fill([torch.zeros(3)])


def test_disk_store_survives_a_restart(tmp_path):
    torch.manual_seed(0)
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    x = torch.randn(5, 3, 8, 8)
    first = frostline.FeatureCache(model, upto="2", store="disk", path=tmp_path / "c")
    expected = first(torch.arange(5), x)
    assert len(first) == 5 and first.nbytes == 5 * 64 * 4 * 4 * 4
    assert isinstance(first._store.maps[0], np.memmap)
    del first

    again = frostline.FeatureCache(copy.deepcopy(model), upto="2", store="disk", path=tmp_path / "c")  # a new process
    assert len(again) == 5
    ran = counting(again.model[2][0])
    for _ in range(3):
        assert torch.allclose(again(torch.arange(5), x), expected)
    assert len(ran) == 1  # one checking forward in the new process, then the stored rows
    assert "store='disk'" in repr(again) and "5 samples" not in repr(again) and "samples=5" in repr(again)

    other = frostline.freeze(seed_cnn(), ["0", "2"]).eval()  # other weights: the store starts over
    with pytest.warns(UserWarning, match="another prefix"):
        fresh = frostline.FeatureCache(other, upto="2", store="disk", path=tmp_path / "c")
        fresh(torch.arange(2), x[:2])
    assert len(fresh) == 2


def test_invalidates_on_weight_dtype_and_freeze_changes():
    torch.manual_seed(0)
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    cache = frostline.FeatureCache(model, upto="2")
    x, ids = torch.randn(3, 3, 8, 8), torch.arange(3)
    cache(ids, x)
    with torch.no_grad():
        model[0].weight.mul_(2)
    with pytest.warns(UserWarning, match="0.weight changed"):
        out = cache(ids, x)
    assert torch.allclose(out, model(x)) and cache.invalidations == 1
    assert torch.allclose(cache(ids, x), model(x))

    model.double()
    with pytest.warns(UserWarning, match="changed"):
        out = cache(ids, x.double())
    assert out.dtype == torch.float64 and torch.allclose(out, model(x.double()))

    frostline.unfreeze(model, "2.0")
    with pytest.warns(UserWarning, match="2.0.weight changed"), pytest.raises(CacheError, match="not fully frozen"):
        cache(ids, x.double())


def test_refuses_changed_input_for_a_seen_id():
    model = frostline.freeze(small_cnn(), "features").eval()
    cache = frostline.FeatureCache(model, upto="features")
    x = torch.randn(4, 3, 8, 8)
    cache(torch.arange(4), x)
    cache(torch.arange(4), x.clone())  # same values: fine
    x[2, 0, 0, 0] += 1e-3  # augmentation
    with pytest.raises(CacheError, match=r"samples \[2\]"):
        cache(torch.arange(4), x)


class Stochastic(nn.Module):
    """A prefix block with functional dropout (as transformers' attention does)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return F.dropout(self.lin(x), 0.1, self.training)


class Skip(nn.Module):
    """The head reads the stem's output as well as the block's (a skip connection around ``block``)."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        s = self.stem(x)
        return self.head(self.block(s) + s)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.act, self.lin, self.head = nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.act(self.lin(self.act(x))))


class Token(nn.Module):
    """A root-level parameter (like ViT's cls token) read by the prefix."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(4))
        self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x + self.token))


def refused(model, upto, x, match):
    with pytest.raises(CacheError, match=match):
        frostline.FeatureCache(model, upto=upto)(torch.arange(len(x)), x)


def test_refusals_say_why():
    x = torch.randn(3, 4)
    plain = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4), nn.Linear(4, 2))
    refused(plain, "2", x, "not fully frozen: 0.weight trains")
    plain[:3].requires_grad_(False)
    refused(plain.train(), "2", x, "1 is a dropout in training mode")
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    bn[:2].requires_grad_(False)
    refused(bn.train(), "1", x, "batch statistics in 1")
    stochastic = nn.Sequential(Stochastic(), nn.Linear(4, 2))
    stochastic[0].requires_grad_(False)
    refused(stochastic.train(), "0", x, r"stochastic: 0 \(Stochastic, in training mode\) draws random numbers")
    skip = Skip()
    skip.stem.requires_grad_(False), skip.block.requires_grad_(False)
    refused(skip, "block", x, "depends on more of the prefix")
    shared = Shared()
    shared.lin.requires_grad_(False)
    refused(shared, "act", x, "runs more than once")
    token = Token()
    token.body.requires_grad_(False)
    refused(token, "body", x, "not fully frozen: token trains")
    token.token.requires_grad_(False)
    assert frostline.FeatureCache(token, upto="body")(torch.arange(3), x).shape == (3, 2)
    refused(nn.Sequential(nn.Flatten(0), nn.Linear(12, 2)), "0", x, "no batch dimension")
    with pytest.raises(CacheError, match="no submodule 'blok'; closest: block"):
        frostline.FeatureCache(skip, upto="blok")
    frozen = frostline.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), "0")
    frozen[0].__dict__["_frostline_partial"] = {"weight": object()}  # what a partial freeze leaves behind
    refused(frozen, "0", x, "0 is partially frozen")


def test_bad_ids_and_arguments():
    model = frostline.freeze(small_cnn(), "features").eval()
    cache = frostline.FeatureCache(model, upto="features")
    x = torch.randn(3, 3, 8, 8)
    with pytest.raises(CacheError, match="2 sample ids for a batch of 3"):
        cache([0, 1], x)
    with pytest.raises(CacheError, match="integer"):
        cache(torch.zeros(3), x)
    with pytest.raises(CacheError, match="batch of 3 rows"):
        cache([0, 1, 2], x, torch.zeros(2))
    with pytest.raises(ValueError, match="needs path"):
        frostline.FeatureCache(model, upto="features", store="disk")
    assert cache([5, 6, 7], x).shape == (3, 10) and len(cache) == 3


def test_progress_bar_is_optional(monkeypatch):
    assert _progress_bar(3, False, "x") is None
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert _progress_bar(3, None, "x") is None
    bar = _progress_bar(3, True, "x")
    assert bar is not None and bar.total == 3
    bar.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cached run emits no warning
        model = frostline.freeze(small_cnn(), "features").eval()
        cache = frostline.FeatureCache(model, upto="features", progress=True)
        assert cache.fill([(torch.arange(2), torch.randn(2, 3, 8, 8))]) == 2
