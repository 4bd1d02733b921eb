"""frostline.integrations.lightning: real Trainer runs on the pretrained all-MiniLM-L6-v2 (CPU, a few steps)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
import frostline  # noqa: E402
from frostline.integrations.lightning import FreezeCallback  # noqa: E402
from frostline.schedules import AutoFreeze, GradualUnfreeze, ProgressiveFreeze, UnfreezeAt  # noqa: E402


@pytest.fixture(scope="module")
def batches(minilm_dir, sentiment):
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(minilm_dir))([t for t, _ in sentiment], padding="max_length",
                                                            max_length=12, truncation=True, return_tensors="pt")
    labels = torch.tensor([y for _, y in sentiment])
    return torch.utils.data.TensorDataset(tokens["input_ids"], tokens["attention_mask"], labels)


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir), add_pooling_layer=False)


class Classifier(pl.LightningModule):
    """BERT encoder + linear head; records the freeze state and optimizer layout at each epoch's first batch."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        torch.manual_seed(0)
        self.head = nn.Linear(self.encoder.config.hidden_size, 2)
        self.frozen_at: dict[tuple[int, int], list[int]] = {}  # (epoch, global step) -> frozen layer groups
        self.layout_at: dict[int, list[list[str]]] = {}

    def frozen_groups(self) -> list[int]:
        groups = [self.encoder.embeddings, *self.encoder.encoder.layer, self.head]
        return [i for i, g in enumerate(groups) if not any(p.requires_grad for p in g.parameters())]

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(1000 + self.current_epoch)  # dropout draws depend only on the epoch: resumable runs

    def training_step(self, batch, batch_idx):
        self.frozen_at[(self.current_epoch, self.global_step)] = self.frozen_groups()
        if batch_idx == 0:
            names = {id(p): n for n, p in self.named_parameters()}
            self.layout_at[self.current_epoch] = [[names[id(p)] for p in g["params"]]
                                                  for g in self.trainer.optimizers[0].param_groups]
        ids, mask, y = batch
        cls = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return F.cross_entropy(self.head(cls), y)

    def configure_optimizers(self):  # over the trainable parameters; the schedule's sync adds the rest later
        return frostline.optimizer(self, torch.optim.AdamW, lr=1e-3, weight_decay=0.01)


def fit(module, data, schedule, epochs, tmp_path=None, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [FreezeCallback(schedule)]
    if tmp_path is not None:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=tmp_path is not None, num_sanity_val_steps=0)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8), ckpt_path=ckpt_path)
    return trainer


def test_gradual_unfreeze_in_a_real_trainer_and_resume(encoder, batches, tmp_path):
    # Uninterrupted: 4 epochs. 8 groups (embeddings, 6 layers, head): epoch e trains the top e + 1.
    straight = Classifier(encoder)
    start = copy.deepcopy(straight.state_dict())
    fit(straight, batches, GradualUnfreeze(), epochs=4)
    by_epoch = {e: f for (e, _), f in straight.frozen_at.items()}
    assert by_epoch == {0: [0, 1, 2, 3, 4, 5, 6], 1: [0, 1, 2, 3, 4, 5], 2: [0, 1, 2, 3, 4], 3: [0, 1, 2, 3]}
    end = straight.state_dict()
    prefixes = ("encoder.embeddings.", *(f"encoder.encoder.layer.{i}." for i in range(3)))
    never_trained = [k for k in end if k.startswith(prefixes)]
    assert never_trained and all(torch.equal(start[k], end[k]) for k in never_trained)  # bit-identical
    assert not torch.equal(start["head.weight"], end["head.weight"])
    assert not torch.equal(start["encoder.encoder.layer.5.output.dense.weight"],
                           end["encoder.encoder.layer.5.output.dense.weight"])

    # Interrupted after epoch 1, resumed from its checkpoint in a fresh process-like setup.
    first = Classifier(encoder)
    fit(first, batches, GradualUnfreeze(), epochs=2, tmp_path=tmp_path)
    resumed = Classifier(encoder)
    trainer = fit(resumed, batches, GradualUnfreeze(), epochs=4, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert {e: f for (e, _), f in resumed.frozen_at.items()} == {2: by_epoch[2], 3: by_epoch[3]}
    assert resumed.layout_at == {e: straight.layout_at[e] for e in (2, 3)}  # optimizer groups restored by name
    assert len(trainer.callbacks[0].schedule.history) == 4
    final = resumed.state_dict()
    assert all(torch.equal(end[k], final[k]) for k in end)  # the resumed run continued exactly


@pytest.fixture(scope="module")
def small_encoder(minilm_dir):
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(minilm_dir), num_hidden_layers=2)
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False)


def test_step_schedule_gets_total_steps_and_runs_per_batch(small_encoder, batches):
    module = Classifier(small_encoder)
    schedule = ProgressiveFreeze(t0=0.5, schedule="linear")  # 4 groups stop at 1/2, 2/3, 5/6 of 6 steps
    fit(module, batches, schedule, epochs=3)
    assert schedule.total_steps == 6
    assert [module.frozen_at[(s // 2, s)] for s in range(6)] == [[], [], [], [0], [0, 1], [0, 1, 2]]


def test_autofreeze_reads_gradients_inside_lightning(small_encoder, batches):
    module = Classifier(small_encoder)
    schedule = AutoFreeze(every_n_steps=1)
    fit(module, batches, schedule, epochs=3)
    # Lightning runs backward inside optimizer.step: the post-step hook still saw every group's gradients
    assert schedule._prev is not None and all(v > 0 for v in schedule._prev[schedule.prefix:])
    for frozen in module.frozen_at.values():
        assert frozen == list(range(len(frozen))) and 3 not in frozen  # a prefix; the head always trains


def test_a_bare_spec_stays_frozen(small_encoder, batches):
    module = Classifier(small_encoder)
    before = copy.deepcopy(module.encoder.embeddings.state_dict())
    head = module.head.weight.detach().clone()
    fit(module, batches, "encoder.embeddings", epochs=1)
    assert all(f == [0] for f in module.frozen_at.values())
    assert all(torch.equal(before[k], v) for k, v in module.encoder.embeddings.state_dict().items())
    assert not torch.equal(module.head.weight, head)  # the rest trained


class FrozenBackbone(Classifier):
    """Lightning's BackboneFinetuning pattern: the module freezes its own backbone; a schedule unfreezes it."""

    def __init__(self, encoder: nn.Module):
        super().__init__(encoder)
        frostline.freeze(self, "encoder")

    def on_train_epoch_start(self) -> None:  # a resumed epoch makes its data iterator before this hook: seed later
        pass

    def training_step(self, batch, batch_idx):
        torch.manual_seed(1000 + self.global_step)  # dropout draws depend only on the step: resumable runs
        return super().training_step(batch, batch_idx)


def test_silent_05_unfreeze_at_unfreezes_a_backbone_the_module_froze_itself(small_encoder, batches, tmp_path):
    straight = FrozenBackbone(small_encoder)
    start = copy.deepcopy(straight.state_dict())
    fit(straight, batches, UnfreezeAt("encoder", epoch=1), epochs=3, tmp_path=tmp_path)
    assert {e: f for (e, _), f in straight.frozen_at.items()} == {0: [0, 1, 2], 1: [], 2: []}
    end = straight.state_dict()
    weight = "encoder.encoder.layer.0.output.dense.weight"
    assert not torch.equal(start[weight], end[weight]) and not torch.equal(start["head.weight"], end["head.weight"])

    resumed = FrozenBackbone(small_encoder)  # from the checkpoint after epoch 1, by a script that freezes again
    fit(resumed, batches, UnfreezeAt("encoder", epoch=1), epochs=3, ckpt_path=str(tmp_path / "epoch=1.ckpt"))
    assert {e: f for (e, _), f in resumed.frozen_at.items()} == {2: []}
    assert resumed.layout_at[2] == straight.layout_at[2]
    final = resumed.state_dict()
    assert all(torch.equal(end[k], final[k]) for k in end)  # continued exactly
