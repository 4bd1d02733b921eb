import re

import pytest
import torch
from torch import nn

import frostline
from frostline import SelectionError, select
from frostline.models import small_cnn, tiny_resnet


def test_glob_is_anchored_over_full_names():
    model = small_cnn()
    assert select(model, "head.*") == ["head.1.weight", "head.1.bias"]
    assert select(model, "*.bias") == [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    with pytest.raises(SelectionError):
        select(model, "ead.*")  # anchored: no substring match


def test_module_name_selects_everything_beneath():
    model = tiny_resnet()
    assert select(model, "layer1") == [n for n, _ in model.named_parameters() if n.startswith("layer1.")]
    assert select(model, "layer1.0.bn1") == ["layer1.0.bn1.weight", "layer1.0.bn1.bias"]


def test_list_union_and_exclusion():
    model = tiny_resnet()
    names = select(model, ["layer1.*", "!layer1.*.bn*", "fc"])
    assert "fc.weight" in names and "layer1.0.conv1.weight" in names
    assert not any(".bn" in n for n in names)
    assert select(model, ["!fc"]) == [n for n, _ in model.named_parameters() if not n.startswith("fc.")]


def test_regex_type_module_tensor_and_callable():
    model = tiny_resnet()
    assert select(model, re.compile(r"layer\d\.1\.conv2\.weight")) == [
        "layer1.1.conv2.weight", "layer2.1.conv2.weight", "layer3.1.conv2.weight"]
    bn = select(model, nn.BatchNorm2d)
    assert bn == [n for n, _ in model.named_parameters() if n.startswith("bn") or ".bn" in n or "downsample.1" in n]
    assert select(model, (nn.Linear, nn.BatchNorm2d)) == [
        n for n, _ in model.named_parameters() if n in bn or n.startswith("fc.")]
    assert select(model, model.fc) == ["fc.weight", "fc.bias"]
    assert select(model, model.fc.bias) == ["fc.bias"]
    assert select(model, lambda name, p: p.ndim == 1 and name.startswith("bn1")) == ["bn1.weight", "bn1.bias"]


def test_tied_parameter_selected_once_under_every_name(tied_lm):
    assert select(tied_lm, "out.weight") == ["embed.weight"]
    assert select(tied_lm, ["embed.weight", "out.weight"]) == ["embed.weight"]
    frostline.freeze(tied_lm, "out")
    assert not tied_lm.embed.weight.requires_grad and frostline.is_frozen(tied_lm, "out.weight") is True


def test_membership_is_by_identity_not_value():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every parameter has the same value
    assert select(model, model[1].weight) == ["1.weight"]
    with pytest.raises(SelectionError, match="identity"):
        select(model, torch.zeros(3, 3))
    other = nn.Linear(3, 3)
    with pytest.raises(SelectionError, match="not part of the model"):
        select(model, other)


def test_no_match_names_closest_real_names():
    model = tiny_resnet()
    with pytest.raises(SelectionError) as info:
        select(model, "layer1.0.conv3.weight")
    message = str(info.value)
    assert "layer1.0.conv1.weight" in message or "layer1.0.conv2.weight" in message
    assert message.count(",") <= 4  # at most five names
    with pytest.raises(SelectionError, match="LSTM"):
        select(model, nn.LSTM)
    with pytest.raises(SelectionError, match="predicate"):
        select(model, lambda n, p: False)
    with pytest.raises(SelectionError, match="cannot select"):
        select(model, 3.5)
    with pytest.raises(SelectionError, match="excludes everything"):
        select(model, ["fc", "!fc.*"])


def test_a_typo_inside_a_list_is_an_error():
    model = tiny_resnet()
    with pytest.raises(SelectionError, match="lyer1"):
        select(model, ["fc", "lyer1"])


def test_a_module_without_parameters_is_named_as_such():
    """Selecting a ReLU or an affine-free norm by name says it has nothing to freeze, instead of offering its own
    name as the closest match."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False), nn.ReLU())
    with pytest.raises(SelectionError, match=r"only modules without parameters: 1 \(BatchNorm2d\)"):
        select(model, "1")
    with pytest.raises(SelectionError, match=r"1 \(BatchNorm2d\), 2 \(ReLU\)"):
        select(model, ["0", "[12]"])


@pytest.mark.parametrize("spec", [r"layer[12]\..*", r"^fc", r"layer(1|2)\.0", r"layer\d.*"])
def test_first_hour_a_regex_written_as_a_glob_suggests_re_compile(spec):
    model = tiny_resnet()
    with pytest.raises(SelectionError) as info:
        select(model, spec)
    message = str(info.value)
    assert message.startswith(f"pattern {spec!r} matches no parameter; closest names: ")
    assert message.endswith(f"; this looks like a regular expression; pass re.compile(r'{spec}') to match by regex")
    assert select(model, re.compile(spec.lstrip("^") + ("" if spec.endswith("*") else ".*")))  # the advice works


def test_first_hour_a_glob_typo_gets_no_regex_advice():
    model = tiny_resnet()
    for spec in ["lyer1.*", "layer1.0.conv3.weight", "fc.weigth"]:
        with pytest.raises(SelectionError) as info:
            select(model, spec)
        assert "closest names" in str(info.value) and "regular expression" not in str(info.value)


# -- cost linear in the model (issue 14): counted operations, see tests/cost.py ------------------------------------
def test_a_list_of_names_or_modules_costs_linear_in_the_model():
    from cost import growth

    # every parameter by its exact name, every block by name and as a module object: one pass each, not one
    # scan of every name per entry
    assert growth(lambda m: lambda: select(m, [n for n, _ in m.named_parameters()])) < 4.5
    assert growth(lambda m: lambda: select(m, [f"layers.{i}" for i in range(len(m.layers))])) < 4.5
    assert growth(lambda m: lambda: select(m, list(m.layers))) < 4.5
    assert growth(lambda m: lambda: select(m, [p for p in m.parameters()])) < 4.5


def test_select_each_is_select_per_spec():
    from frostline.selection import select_each

    model = tiny_resnet()
    specs = ["layer1", model.fc, nn.BatchNorm2d, re.compile(r".*conv1\.weight"), ["*", "!layer*"], "fc.bias"]
    assert select_each(model, specs) == [select(model, spec) for spec in specs]
    with pytest.raises(SelectionError, match="closest names"):
        select_each(model, ["fc", "nope"])
