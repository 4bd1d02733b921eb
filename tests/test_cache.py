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
    for ids, x, _y in loader:
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


def _stored_cnn(**cache_args):
    """A seed CNN with blocks 0 and 2 frozen, a FeatureCache up to block 2, a batch (x, ids) and what the cache's
    first call on it returned: its rows are stored from then on."""
    torch.manual_seed(0)
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    cache = frostline.FeatureCache(model, upto="2", **cache_args)
    x, ids = torch.randn(3, 3, 8, 8), torch.arange(3)
    return model, cache, x, ids, cache(ids, x)


def test_invalidates_on_weight_dtype_and_freeze_changes():
    model, cache, x, ids, _ = _stored_cnn()
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


def test_issue16_a_new_prefix_tensor_or_a_data_assignment_is_seen_at_the_next_call():
    model, cache, x, ids, _ = _stored_cnn()
    model[0].weight = nn.Parameter(torch.randn_like(model[0].weight), requires_grad=False)  # another tensor
    with pytest.warns(UserWarning, match=r"0\.weight changed"):
        out = cache(ids, x)
    assert torch.allclose(out, model(x)) and cache.invalidations == 1
    model[2][1].bias.data = torch.randn_like(model[2][1].bias)  # same tensor, new storage, same version
    with pytest.warns(UserWarning, match=r"2\.1\.bias changed"):
        out = cache(ids, x)
    assert torch.allclose(out, model(x)) and cache.invalidations == 2


def test_issue16_train_mode_of_plain_prefix_layers_keeps_the_rows_dropout_is_still_refused():
    torch.manual_seed(0)
    model = frostline.freeze(nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Dropout(0.5),
                                           nn.Linear(8, 3)), ["0"]).eval()
    cache = frostline.FeatureCache(model, upto="0")
    ran = counting(model[0][0])  # (a hook: that Linear's mode counts from now on; it stays in eval)
    x, ids = torch.randn(4, 6), torch.arange(4)
    first = cache(ids, x)
    before = len(ran)
    model[0].training = model[0][1].training = True  # a Sequential and a ReLU compute the same in either mode
    assert torch.equal(cache(ids, x), first) and len(ran) == before and cache.invalidations == 0
    cache = frostline.FeatureCache(model, upto="1")  # now the prefix holds the dropout
    model.eval()
    cache(ids, x)
    model[1].training = True
    with pytest.raises(CacheError, match="stochastic"):
        cache(ids, x)


def test_issue16_input_hashes_keep_their_formula():
    """Hashes stored by a disk store stay comparable: salt + sum of (row bits . weights) * 1_000_003 ** later."""
    from frostline.cache._store import _Hasher

    hasher = _Hasher()
    torch.manual_seed(0)
    tokens, feats = torch.randint(0, 30000, (5, 7)), torch.randn(5, 3)
    w7, w3 = hasher._w(7, torch.device("cpu")), hasher._w(3, torch.device("cpu"))
    expected = (tokens * w7).sum(1) * 1_000_003 + (feats.view(torch.int32).long() * w3).sum(1) + 12345
    assert torch.equal(hasher.rows([tokens, feats], 5, 12345), expected)
    # the weights themselves (their seed), pinned: the values the hashes had before the fast CPU path existed
    assert hasher.rows([torch.arange(3).view(1, 3)], 1).item() == -4549177130260024295
    assert hasher.rows([torch.arange(3).view(1, 3), torch.tensor([[1.5]])], 1, 7).item() == 9010752017974563986


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


# -- issue 13, items 7-10: nothing silent ---------------------------------------------------------------------------
def _bypass(write: str, w: torch.Tensor) -> None:
    """Change ``w`` in place without touching its version counter, the three ways the issue lists."""
    if write == "data.mul_":
        w.data.mul_(2)
    elif write == "numpy":
        w.detach().numpy()[...] *= 2
    else:  # an EMA teacher's update
        w.data.copy_(0.5 * w.data + 0.5 * torch.randn_like(w))


@pytest.mark.parametrize("write", ["data.mul_", "numpy", "data.copy_"])
def test_silent_07_a_write_that_bypasses_the_version_counter_drops_the_rows(write):
    model, cache, x, ids, before = _stored_cnn()
    assert torch.equal(cache(ids, x), before)  # served from the stored rows
    w = model[2][3].weight
    version = w._version
    _bypass(write, w)
    assert w._version == version  # nothing but the values tells the write happened
    with pytest.warns(UserWarning, match=r"2\.3\.weight changed.*version counter"):
        out = cache(ids, x)
    assert torch.allclose(out, model(x)) and not torch.allclose(out, before)  # the new weights, not stale rows
    assert cache.invalidations == 1 and len(cache) == 3
    assert torch.equal(cache(ids, x), out)  # stored again, served again


def test_silent_07_an_ema_teacher_updated_through_data_serves_fresh_rows_every_step():
    torch.manual_seed(0)
    student = seed_cnn().eval()
    teacher = frostline.freeze(copy.deepcopy(student), ["0", "2"]).eval()
    cache = frostline.FeatureCache(teacher, upto="2")
    x, ids = torch.randn(3, 3, 8, 8), torch.arange(3)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    prefix = [p for n, p in teacher.named_parameters() if n.startswith(("0.", "2."))]
    start = [p.detach().clone() for p in prefix]
    for step in range(3):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            out = cache(ids, x)
        assert (len(seen) == 1) == (step > 0)  # every update after the first call is noticed
        assert torch.allclose(out, teacher(x))
        loss = F.cross_entropy(student(x), torch.arange(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for t, s in zip(teacher.parameters(), student.parameters(), strict=False):
            t.data.mul_(0.5).add_(s.data, alpha=0.5)  # the usual EMA update, through .data
    assert all(not torch.equal(p, s) for p, s in zip(prefix, start, strict=False))  # the teacher's frozen prefix did move
    assert cache.invalidations == 2


def test_silent_07_a_one_value_numpy_write_is_found_within_one_pass():
    model, cache, x, ids, first = _stored_cnn()
    period = max(w.period for w in cache._watches)
    assert 1 < period < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a whole pass over unchanged weights drops nothing
        for _ in range(period + 1):
            assert torch.equal(cache(ids, x), first)
    model[2][0].weight.detach().numpy().reshape(-1)[7] += 1.0  # one value, outside the block checked every call
    found = None
    for call in range(period):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            out = cache(ids, x)
        if seen:
            found = call
            assert "2.0.weight changed" in str(seen[0].message)
            break
    assert found is not None, f"not found in {period} calls"
    assert torch.allclose(out, model(x)) and not torch.equal(out, first)
    assert cache.invalidations == 1


def test_silent_07_on_an_accelerator_the_check_is_read_every_check_every_calls():
    model, cache, x, ids, first = _stored_cnn(check_every=3)
    cache._watches[0].device = torch.device("cuda")  # its flags now stay tensors, as an accelerator's do
    model[0].weight.data.mul_(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(cache(ids, x), first) and torch.equal(cache(ids, x), first)  # not read yet: stale
    with pytest.warns(UserWarning, match=r"0\.weight changed.*up to 4 calls ago: the calls since may have served"):
        out = cache(ids, x)  # the third call reads the flags
    assert torch.allclose(out, model(x)) and not torch.allclose(out, first)
    assert cache.invalidations == 1


def _filled_disk_store(path, n=8):
    torch.manual_seed(0)
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    x = torch.randn(n, 3, 8, 8)
    cache = frostline.FeatureCache(model, upto="2", store="disk", path=path)
    for start in range(0, n, 4):
        cache(torch.arange(start, start + 4), x[start:start + 4])
    del cache
    return model, x


def _reopen(model, path):
    return frostline.FeatureCache(copy.deepcopy(model), upto="2", store="disk", path=path)


def test_silent_08_a_truncated_rows_file_is_refused_and_left_as_it_is(tmp_path):
    model, x = _filled_disk_store(tmp_path / "c")
    rows = sorted((tmp_path / "c").glob("rows*.bin"))[0]
    size = rows.stat().st_size
    with open(rows, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CacheError, match=rf"{rows.name}.*truncated: expected at least \d+ bytes, found {size // 2}"):
        _reopen(model, tmp_path / "c")(torch.arange(4), x[:4])
    assert rows.stat().st_size == size // 2  # never grown on open


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_silent_08_a_flipped_byte_outside_the_first_batch_is_refused(tmp_path):
    model, x = _filled_disk_store(tmp_path / "c")
    rows = sorted((tmp_path / "c").glob("rows*.bin"))[0]
    row_bytes = 64 * 4 * 4 * 4
    _flip(rows, 6 * row_bytes + 100)  # the row of sample 6
    cache = _reopen(model, tmp_path / "c")
    assert torch.allclose(cache(torch.arange(4), x[:4]), model(x[:4]))  # undamaged rows still serve
    with pytest.raises(CacheError, match=rf"{rows.name}.*row 6 \(sample id 6\).*checksum"):
        cache(torch.arange(4, 8), x[4:])


def test_silent_08_a_flipped_input_hash_is_damage_not_augmentation(tmp_path):
    model, x = _filled_disk_store(tmp_path / "c")
    hashes = sorted((tmp_path / "c").glob("hashes*.bin"))[0]
    _flip(hashes, 8 * 5 + 3)
    cache = _reopen(model, tmp_path / "c")
    with pytest.raises(CacheError, match=r"damaged.*checksum") as info:
        cache(torch.arange(4, 8), x[4:])
    assert "augmentation" not in str(info.value)


def test_silent_08_a_truncated_meta_or_a_missing_rows_file_is_a_clear_error(tmp_path):
    model, x = _filled_disk_store(tmp_path / "c")
    meta = tmp_path / "c" / "meta.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    with pytest.raises(CacheError, match=r"meta\.json is damaged"):
        _reopen(model, tmp_path / "c")
    meta.write_text(text)
    rows = sorted((tmp_path / "c").glob("rows*.bin"))[0]
    rows.unlink()
    with pytest.raises(CacheError, match=rf"{rows.name} is missing"):
        _reopen(model, tmp_path / "c")(torch.arange(4), x[:4])


def test_silent_09_a_directory_with_foreign_files_is_refused_and_nothing_deleted(tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"not the cache's")
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(CacheError, match="pytorch_model.bin.*empty or new directory"):
        frostline.FeatureCache(model, upto="2", store="disk", path=tmp_path)(torch.arange(2), x)
    assert weights.read_bytes() == b"not the cache's"


def test_silent_09_starting_over_deletes_only_the_files_the_cache_made(tmp_path):
    model, x = _filled_disk_store(tmp_path / "c")
    made = {f.name for f in (tmp_path / "c").iterdir()}
    other = frostline.freeze(seed_cnn(), ["0", "2"]).eval()  # other weights: the store starts over
    with pytest.warns(UserWarning, match="another prefix"):
        fresh = frostline.FeatureCache(other, upto="2", store="disk", path=tmp_path / "c")
        fresh(torch.arange(2), x[:2])
    now = {f.name for f in (tmp_path / "c").iterdir()}
    assert len(fresh) == 2 and now  # the old rows are gone, the new ones stored
    (tmp_path / "c" / "notes.txt").write_text("mine")  # a user's file in the cache's directory
    with pytest.raises(CacheError, match="notes.txt"):
        frostline.FeatureCache(other, upto="2", store="disk", path=tmp_path / "c")
    assert made and (tmp_path / "c" / "notes.txt").read_text() == "mine"


_FILLER = """
import sys, time
from pathlib import Path
import torch, frostline
from frostline.models import seed_cnn
torch.set_num_threads(1)
path, order, ready, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
x = torch.randn(n, 3, 8, 8)
ids = list(range(n)) if order == "up" else list(reversed(range(n)))
(ready / order).touch()
deadline = time.monotonic() + 60
while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:  # start together
    time.sleep(0.005)
cache = frostline.FeatureCache(model, upto="2", store="disk", path=path)
for k in range(0, n, 2):
    cache.fill([(torch.tensor(ids[k:k + 2]), x[ids[k:k + 2]])], progress=False)
"""


def test_silent_10_two_processes_filling_one_path_leave_whole_rows(tmp_path):
    import subprocess
    import sys

    n = 48
    (tmp_path / "ready").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _FILLER, str(tmp_path / "c"), order, str(tmp_path / "ready"),
                               str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for order in ("up", "down")]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=False):
        assert p.returncode == 0, err[-2000:]
    torch.manual_seed(0)
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    x = torch.randn(n, 3, 8, 8)
    cache = frostline.FeatureCache(model, upto="2", store="disk", path=tmp_path / "c")
    assert len(cache) == n
    stored = cache._store.read([cache._store.index[i] for i in range(n)], torch.device("cpu"))[0]
    with torch.no_grad():
        assert torch.allclose(stored, model[:3](x), atol=1e-6)  # every row is the row of its id, whole


def test_silent_10_a_second_writer_waits_for_the_lock_then_is_refused(tmp_path, monkeypatch):
    import fcntl

    from frostline.cache import _disk

    torch.manual_seed(0)
    model = frostline.freeze(seed_cnn(), ["0", "2"]).eval()
    x = torch.randn(4, 3, 8, 8)
    cache = frostline.FeatureCache(model, upto="2", store="disk", path=tmp_path / "c")
    cache(torch.arange(2), x[:2])
    monkeypatch.setattr(_disk._DiskStore, "lock_timeout", 0.3)
    with open(tmp_path / "c" / _disk._LOCK, "a+") as other:  # another process's writer holds the lock
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(CacheError, match=rf"{_disk._LOCK}.*another process.*0\.3 s"):
            cache(torch.arange(2, 4), x[2:])
    assert len(cache) == 2
    assert torch.allclose(cache(torch.arange(2, 4), x[2:]), model(x[2:]))  # lock released: it writes
    assert len(cache) == 4


def test_silent_10_a_writer_whose_store_another_process_started_over_is_refused(tmp_path):
    torch.manual_seed(0)
    model, other = (frostline.freeze(seed_cnn(), ["0", "2"]).eval() for _ in range(2))  # other weights
    x = torch.randn(4, 3, 8, 8)
    first = frostline.FeatureCache(model, upto="2", store="disk", path=tmp_path / "c")
    first(torch.arange(2), x[:2])
    with pytest.warns(UserWarning, match="held 2 rows of another prefix"):  # as another process would
        frostline.FeatureCache(other, upto="2", store="disk", path=tmp_path / "c")(torch.arange(2), x[:2])
    assert torch.allclose(first(torch.arange(2), x[:2]), model(x[:2]))  # its open files still hold its rows
    with pytest.raises(CacheError, match="another process started the disk store .* over for another prefix"):
        first(torch.arange(2, 4), x[2:])


# -- issue 17: a new user's errors -------------------------------------------------------------------------------
def test_error_cache_without_ids():
    model = frostline.freeze(small_cnn(), "features").eval()
    cache = frostline.FeatureCache(model, upto="features")
    x = torch.randn(3, 3, 8, 8)
    with pytest.raises(CacheError, match=r"without sample ids.*cache\(sample_ids, \*model_args\)"):
        cache(x)
    with pytest.raises(CacheError, match=r"without sample ids"):
        cache(x, x)
    assert cache(torch.arange(3), x).shape == (3, 10)


def test_error_cache_one_id_two_inputs():
    model = frostline.freeze(small_cnn(), "features").eval()
    cache = frostline.FeatureCache(model, upto="features")
    x = torch.randn(3, 3, 8, 8)
    with pytest.raises(CacheError, match=r"sample id 0 names rows 0 and 2.*different inputs"):
        cache(torch.tensor([0, 1, 0]), x)
    same = torch.cat([x[:2], x[:1]])  # one id for two equal inputs (sampling with replacement) is fine
    assert torch.allclose(cache(torch.tensor([0, 1, 0]), same), model(same))
    assert len(cache) == 2


# -- issue 16: the schedule drives the cache --------------------------------------------------------------------
class _Counted(nn.Linear):
    """Counts its real forwards (a cache's placeholder replaces ``forward`` on the instance; hooks would count it)."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.lin, self.norm = _Counted(n_in, n_out), nn.LayerNorm(n_out)

    def forward(self, x, mask):
        return torch.tanh(self.norm(self.lin(x))) * mask  # a second per-sample input, as an attention mask is


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = _Counted(6, 12)
        self.blocks = nn.ModuleList([_Block(12, 12) for _ in range(3)])
        self.head = nn.Linear(12, 3)

    def forward(self, x, mask):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(h)


class _Deeper(frostline.schedules.Schedule):
    """Freezes one more group at each step in ``at``; shrinks back to ``back`` groups at step ``back_at``."""

    unit = "step"

    def __init__(self, at, back_at=None, back=0):
        super().__init__(groups=["embed", "blocks.0", "blocks.1", "blocks.2", "head"])
        self.at, self.back_at, self.back = at, back_at, back

    def plan(self, epoch, step):
        n = sum(step >= s for s in self.at)
        if self.back_at is not None and step >= self.back_at:
            n = self.back
        return frostline.schedules.Plan(frozenset(range(n)))


def _follow_run(cached: bool, schedule, steps: int, batches):
    torch.manual_seed(0)
    model = _Stack()
    ran = {name: model.get_submodule(name) for name in ("embed", "blocks.0.lin", "blocks.1.lin")}
    cache = frostline.FeatureCache(model, upto=schedule) if cached else None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, at = [], []
    for step in range(steps):
        schedule.step(model, opt, step=step)
        if step == 9:
            model.snap = {n: p.detach().clone() for n, p in model.named_parameters()}
        ids, x, mask, y = batches[step % len(batches)]
        before = {k: m.calls for k, m in ran.items()}
        out = cache(ids, x, mask) if cached else model(x, mask)
        at.append({k: m.calls - before[k] for k, m in ran.items()})
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return model, losses, at, cache


def _follow_batches(n=3, rows=4):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n * rows, 6, generator=g), torch.randint(0, 3, (n * rows,), generator=g)
    mask = (torch.rand(n * rows, 12, generator=g) > 0.2).float()
    return [(torch.arange(k * rows, (k + 1) * rows), x[k * rows:(k + 1) * rows], mask[k * rows:(k + 1) * rows],
             y[k * rows:(k + 1) * rows]) for k in range(n)]


def test_issue16_cache_follows_the_schedule_same_losses_rows_advanced_not_recomputed():
    batches = _follow_batches()  # 3 batches: an epoch is 3 steps
    # step 0-2 nothing frozen, 3-5 embed frozen, 6-8 + blocks.0, 9-11 + blocks.1
    sched_c, sched_p = _Deeper(at=[3, 6, 9]), _Deeper(at=[3, 6, 9])
    model_c, cached, at, cache = _follow_run(True, sched_c, 15, batches)
    model_p, plain, _, _ = _follow_run(False, sched_p, 15, batches)
    assert all(torch.equal(a, b) for a, b in zip(cached, plain, strict=False))  # bit-identical losses
    assert cache.upto == "blocks.1" and len(cache) == 12 and cache.advanced == 6
    for name in ("embed", "blocks.0", "blocks.1"):  # frozen stays as it started, in both runs
        assert all(torch.equal(a, b) for a, b in zip(model_c.get_submodule(name).parameters(),
                                                     model_p.get_submodule(name).parameters(), strict=False))
    snap = model_c.snap  # taken at step 9, when blocks.1 froze: frozen stays bit-identical, what trains moved
    assert torch.equal(model_c.embed.weight, snap["embed.weight"])
    assert torch.equal(model_c.blocks[1].lin.weight, snap["blocks.1.lin.weight"])
    assert not torch.equal(model_c.blocks[2].lin.weight, snap["blocks.2.lin.weight"])
    assert not torch.equal(model_c.head.weight, snap["head.weight"])
    assert torch.equal(model_c.head.weight, model_p.head.weight)
    # real forwards per step: the embedding runs until its rows are stored (steps 0-5), never again: when blocks.0
    # and then blocks.1 freeze, only they run, once per batch, on the stored rows (steps 6-8, 9-11). A 2 is the
    # suffix of the check each new depth's first cached forward makes against the uncached one
    assert [a["embed"] for a in at] == [1] * 6 + [0] * 9
    assert [a["blocks.0.lin"] for a in at] == [1, 1, 1, 2, 1, 1, 1, 1, 1] + [0] * 6
    assert [a["blocks.1.lin"] for a in at] == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 0, 0, 0]
    assert len(cache._depths) == 1  # the shallower rows went once every sample was advanced


def test_issue16_cache_drops_deeper_rows_when_the_prefix_shrinks_and_runs_the_model_before_any_freeze():
    batches = _follow_batches(n=2)
    sched_c, sched_p = _Deeper(at=[2, 4], back_at=6, back=1), _Deeper(at=[2, 4], back_at=6, back=1)
    _, cached, at, cache = _follow_run(True, sched_c, 10, batches)
    _, plain, _, _ = _follow_run(False, sched_p, 10, batches)
    assert all(torch.equal(a, b) for a, b in zip(cached, plain, strict=False))
    assert cache.upto == "embed" and len(cache) == 8
    # from step 6 blocks.0 trains again and runs every step (twice at the new depth's check); the embedding's
    # rows went when blocks.0's depth held every sample, so they are computed again from the input, once
    assert [a["blocks.0.lin"] for a in at] == [1, 1, 2, 1, 1, 1, 2, 1, 1, 1]
    assert [a["embed"] for a in at] == [1, 1, 1, 1, 0, 0, 1, 1, 0, 0]


def test_issue16_following_cache_refusals():
    model = _Stack()
    with pytest.raises(ValueError, match="keeps its rows in memory"):
        frostline.FeatureCache(model, upto=_Deeper(at=[0]), store="disk", path="somewhere")
    cache = frostline.FeatureCache(model, upto=_Deeper(at=[5]))
    assert isinstance(cache, frostline.FeatureCache) and cache.upto is None and len(cache) == 0
    ids, x, mask, y = _follow_batches(n=1)[0]
    assert torch.equal(cache(ids, x, mask), model(x, mask))  # nothing frozen, no step yet: the model runs
    with pytest.raises(CacheError, match="frozen no prefix yet"):
        cache.fill([(ids, x, mask)])


class _ClsProbe(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.config.hidden_size, 4)

    def forward(self, input_ids, attention_mask):
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])


def test_issue16_bert_rows_advance_layer_by_layer_with_the_padding_mask(minilm):
    class Deeper(frostline.schedules.Schedule):
        unit = "step"

        def plan(self, epoch, step):  # embeddings at step 2, then one more layer every 2 steps
            return frostline.schedules.Plan(frozenset(range(min(step // 2, 4))))

    groups = ["encoder.embeddings", *[f"encoder.encoder.layer.{i}" for i in range(3)], "head"]
    torch.manual_seed(0)
    ids, y = torch.randint(1000, 30000, (8, 12)), torch.randint(0, 4, (8,))
    mask = torch.ones_like(ids)
    mask[1, 7:] = mask[6, 3:] = 0
    runs = []
    for cached in (True, False):
        torch.manual_seed(0)
        model = _ClsProbe(copy.deepcopy(minilm)).eval()  # eval: no dropout anywhere, so losses match bit for bit
        ran = counting(model.encoder.embeddings.word_embeddings)
        schedule = Deeper(groups=groups)
        cache = frostline.FeatureCache(model, upto=schedule) if cached else None
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        losses = []
        for step in range(10):
            schedule.step(model, opt, step=step)
            if step == 2:  # the embeddings just froze
                snap = [model.encoder.embeddings.word_embeddings.weight.clone(), model.head.weight.clone()]
            b = slice(4 * (step % 2), 4 * (step % 2) + 4)
            out = cache(torch.arange(8)[b], ids[b], mask[b]) if cached else model(ids[b], mask[b])
            loss = F.cross_entropy(out, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        runs.append((losses, len(ran), cache, model, snap))
    (cached_losses, cached_ran, cache, model, snap), (plain_losses, plain_ran, _, plain, _) = runs
    assert all(torch.equal(a, b) for a, b in zip(cached_losses, plain_losses, strict=False))
    assert cache.upto == "encoder.encoder.layer.2" and cache.advanced == 6  # 3 deeper prefixes x 2 batches
    assert cached_ran == 4 and plain_ran == 10  # the embeddings ran before and when they froze, never again
    assert torch.equal(model.head.weight, plain.head.weight)
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, snap[0])  # frozen: bit-identical
    assert not torch.equal(model.head.weight, snap[1])  # the head trained
