"""frostline.integrations.transformers: a real HF Trainer run on the pretrained all-MiniLM-L6-v2 (CPU, a few
steps), resume, the name helpers, and gradient checkpointing with frozen embeddings."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import frostline  # noqa: E402
from frostline.integrations.transformers import (  # noqa: E402
    FreezeCallback,
    embedding_names,
    fix_checkpointing,
    freeze_embeddings,
    freeze_first_layers,
    layer_names,
)
from frostline.schedules import GradualUnfreeze  # noqa: E402


@pytest.fixture(scope="module")
def dataset(minilm_dir, sentiment):
    tokens = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))(
        [t for t, _ in sentiment], padding="max_length", max_length=12, truncation=True)
    return [{"input_ids": torch.tensor(i), "attention_mask": torch.tensor(m), "labels": torch.tensor(y)}
            for i, m, (_, y) in zip(tokens["input_ids"], tokens["attention_mask"], sentiment, strict=False)]


@pytest.fixture(scope="module")
def classifier(minilm_dir):
    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2)


class Recorder(TrainerCallback):
    """Frozen layer groups (embeddings 0, layers 1-6, pooler 7, classifier 8) and optimizer layout per epoch."""

    def __init__(self):
        self.frozen, self.layout = {}, {}

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        groups = [model.bert.embeddings, *model.bert.encoder.layer, model.bert.pooler, model.classifier]
        epoch = int(state.epoch + 1e-6)
        self.frozen[epoch] = [i for i, g in enumerate(groups) if not any(p.requires_grad for p in g.parameters())]
        names = {id(p): n for n, p in model.named_parameters()}
        self.layout[epoch] = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def train(model, dataset, out, epochs, resume=None):
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8,
                             save_strategy="epoch", logging_strategy="no", report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    recorder = Recorder()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, None),
                      callbacks=[FreezeCallback(GradualUnfreeze()), recorder])
    trainer.train(resume_from_checkpoint=resume)
    return recorder, trainer


def test_gradual_unfreeze_in_a_real_trainer_and_resume(classifier, dataset, tmp_path):
    model = copy.deepcopy(classifier)
    start = copy.deepcopy(model.state_dict())
    recorder, trainer = train(model, dataset, tmp_path / "straight", epochs=3)
    # 9 groups (embeddings, 6 layers, pooler, classifier): epoch e trains the top e + 1
    assert recorder.frozen == {0: list(range(8)), 1: list(range(7)), 2: list(range(6))}
    end = model.state_dict()
    never = [k for k in end if k.startswith(("bert.embeddings.", *(f"bert.encoder.layer.{i}." for i in range(5))))]
    assert never and all(torch.equal(start[k], end[k]) for k in never)  # frozen: bit-identical
    assert not torch.equal(start["classifier.weight"], end["classifier.weight"])
    assert not torch.equal(start["bert.pooler.dense.weight"], end["bert.pooler.dense.weight"])
    ours = [c for c in trainer.callback_handler.callbacks if isinstance(c, FreezeCallback)]
    assert len(ours[0].schedule.history) == 3

    # resume from the checkpoint written after epoch 1 (global step 4) with a fresh model and optimizer
    resumed = copy.deepcopy(classifier)
    again, _ = train(resumed, dataset, tmp_path / "straight", epochs=3,
                     resume=str(tmp_path / "straight" / "checkpoint-4"))
    assert again.frozen == {2: recorder.frozen[2]}
    assert again.layout == {2: recorder.layout[2]}  # optimizer groups restored by parameter name
    final = resumed.state_dict()
    assert all(torch.equal(end[k], final[k]) for k in end)  # continued exactly


def test_trainer_created_optimizer_works_and_warns_about_resume(dataset, tmp_path, caplog):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8,
                             save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    recorder = Recorder()
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      callbacks=[FreezeCallback(GradualUnfreeze(groups=["bert", "classifier"])), recorder])
    with caplog.at_level(logging.WARNING, logger="frostline.schedules"):
        trainer.train()
    assert "HINT: give the Trainer the optimizer" in caplog.text
    assert recorder.frozen[0] == [0, 1, 2, 3] and recorder.frozen[1] == []
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}  # the unfrozen encoder joined the Trainer's optimizer


def test_callback_called_without_a_model_says_so():
    from transformers import TrainerControl, TrainerState

    callback = FreezeCallback(GradualUnfreeze())
    with pytest.raises(frostline.FrostlineError, match="on_epoch_begin got no model"):
        callback.on_epoch_begin(None, TrainerState(epoch=0.0), TrainerControl())


def checkpointed(model: BertModel, reentrant: bool) -> BertModel:
    """Gradient checkpointing on, and no input-grad hook (transformers < 5 installs none; 5.x does)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.disable_input_require_grads()
    return model.train()


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32))


def test_name_helpers_for_bert_gpt2_and_llama(caplog):
    bert = tiny_bert()
    assert {n.split(".")[0] for n in embedding_names(bert)} == {"embeddings"}
    assert layer_names(bert, 2, embeddings=False)[-1].startswith("encoder.layer.1.")

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2, n_positions=32))
    with caplog.at_level(logging.INFO, logger="frostline.schedules"):
        assert embedding_names(gpt2) == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert "lm_head.weight is tied" in caplog.text
    assert {n.rsplit(".", 3)[0] for n in layer_names(gpt2, 2, embeddings=False)} >= {"transformer.h.0"}

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    freeze_first_layers(llama, 2)
    frozen = frostline.frozen_names(llama)
    assert frozen[0] == "model.embed_tokens.weight"
    assert all(n.startswith(("model.embed_tokens.", "model.layers.0.", "model.layers.1.")) for n in frozen)
    assert not frostline.is_frozen(llama, "model.layers.2.mlp.up_proj.weight")
    with pytest.raises(ValueError, match="between 0 and 3"):
        layer_names(llama, 4)


def test_gradient_checkpointing_with_frozen_embeddings_still_trains():
    head = torch.nn.Linear(16, 1)  # a trainable head, so backward runs even when the encoder gets nothing

    def encoder_grads(model):
        model.zero_grad()
        head(model(input_ids=torch.randint(0, 50, (2, 8))).last_hidden_state).sum().backward()
        return [p.grad is not None for p in model.encoder.parameters()]

    model = checkpointed(tiny_bert(), reentrant=True)
    frostline.freeze(model, "embeddings")
    assert not any(encoder_grads(model))  # the failure: nothing in the checkpointed blocks gets a gradient
    assert fix_checkpointing(model) is True
    assert all(encoder_grads(model))
    assert fix_checkpointing(model) is False  # idempotent

    other = checkpointed(tiny_bert(), reentrant=True)
    freeze_embeddings(other)  # the helper applies the fix itself
    assert all(encoder_grads(other))
    assert all(torch.equal(a, b) for a, b in zip(tiny_bert().embeddings.parameters(), other.embeddings.parameters(), strict=False))


def test_non_reentrant_checkpointing_needs_no_fix():
    model = checkpointed(tiny_bert(), reentrant=False)
    frostline.freeze(model, "embeddings")
    assert fix_checkpointing(model) is False
