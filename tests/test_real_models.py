"""Models loaded by path as users load them (no mock of from_pretrained): train mode, activation checkpointing,
dropout, and checkpoints that load back with load_from_checkpoint."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.training.module import PreferenceModule
from conftest import save_tiny_model
from helpers.recorder import params_of
from helpers.tiny import RandomPairs, collate_pairs, resumable_loader
from helpers.trainers import quiet_trainer


def _count_calls(module: torch.nn.Module, counter: list[int]) -> None:
    """Count calls of ``module.forward`` (forward hooks do not fire when checkpointing recomputes a layer)."""
    forward = module.forward

    def counting(*args, **kwargs):
        counter[0] += 1
        return forward(*args, **kwargs)

    module.forward = counting


class _Modes(pl.Callback):
    def __init__(self) -> None:
        self.train, self.val = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append((pl_module.policy.training, pl_module.reference.training))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.append((pl_module.policy.training, pl_module.reference.training))


def test_policy_loaded_by_path_trains_in_train_mode_and_recomputes_activations(tmp_path, tiny_model_dir):
    pl.seed_everything(0)
    module = PreferenceModule(model_name_or_path=str(tiny_model_dir), gradient_checkpointing=True)
    module.configure_model()
    policy_calls, reference_calls = [0], [0]
    _count_calls(module.policy.model.layers[0].mlp, policy_calls)
    _count_calls(module.reference.model.layers[0].mlp, reference_calls)
    modes = _Modes()
    trainer = quiet_trainer(tmp_path, 3, [modes], limit_val_batches=1, val_check_interval=2, num_sanity_val_steps=0)
    val = torch.utils.data.DataLoader(RandomPairs(4, seed=1), batch_size=4, collate_fn=collate_pairs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, resumable_loader(RandomPairs(12), 4), val)
    assert modes.train == [(True, False)] * 3  # the policy trains in train mode, before and after validation
    assert modes.val == [(False, False)]
    # 3 training steps: the policy's layer runs forward + recompute each step; 1 validation batch runs it once.
    assert policy_calls[0] == 3 * 2 + 1
    assert reference_calls[0] == 3 + 1
    assert not [w for w in caught if "eval mode" in str(w.message)]  # the eval-mode reference is not reported


def test_dropout_option_takes_effect(tmp_path):
    path = save_tiny_model(tmp_path / "model", attention_dropout=0.5)
    batch = collate_pairs([RandomPairs(4)[i] for i in range(2)])
    for dropout, differs in ((True, True), (False, False)):
        module = PreferenceModule(model_name_or_path=str(path), dropout=dropout)
        module.configure_model()
        first, second = (module.forward_pairs(batch).policy_chosen_logps.detach() for _ in range(2))
        assert (not torch.equal(first, second)) is differs
        reference = [module.forward_pairs(batch).reference_chosen_logps for _ in range(2)]
        assert torch.equal(*reference)  # the reference runs in eval mode: never any dropout


def _fit_synthetic(tmp_path, module: PreferenceModule, steps: int = 2) -> pl.Trainer:
    data = PreferenceDataModule(
        synthetic=SyntheticConfig(train_size=32, validation_size=0),
        batch_size=4,
        max_length=32,
        cache_dir=str(tmp_path / "cache"),
    )
    trainer = quiet_trainer(tmp_path, steps)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    return trainer


def test_load_from_checkpoint_of_a_model_config_run(tmp_path):
    """The quickstart's kind of run: the vocabulary (64 words of the synthetic tokenizer, not the config class's
    default 32,000) and special ids are resolved into hparams, so the checkpoint loads back without a datamodule,
    under any seed, without building a reference."""
    pl.seed_everything(0)
    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    config |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    module = PreferenceModule(model_config=config, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    _fit_synthetic(tmp_path, module)
    resolved = module.hparams["model_config"]
    assert resolved["vocab_size"] == module.policy.config.vocab_size < 100
    assert {"pad_token_id", "bos_token_id", "eos_token_id"} <= set(resolved)
    pl.seed_everything(123)
    loaded = PreferenceModule.load_from_checkpoint(tmp_path / "trained.ckpt")
    assert loaded.policy.config.vocab_size == resolved["vocab_size"]
    assert loaded.reference_model is None  # not needed for inference
    for key, value in params_of(module.policy).items():
        assert torch.equal(params_of(loaded.policy)[key], value), key


def test_load_from_checkpoint_of_a_local_directory_run(tmp_path, tiny_model_dir):
    module = PreferenceModule(model_name_or_path=str(tiny_model_dir), optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    trainer = quiet_trainer(tmp_path, 2)
    trainer.fit(module, resumable_loader(RandomPairs(8), 4))
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    loaded = PreferenceModule.load_from_checkpoint(tmp_path / "trained.ckpt")
    original = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    changed = False
    for key, value in params_of(module.policy).items():
        assert torch.equal(params_of(loaded.policy)[key], value), key
        changed |= not torch.equal(value, original.state_dict()[key])
    assert changed  # the loaded weights are the trained ones, not the directory's
    assert loaded.policy.training


def test_resume_against_another_reference_checkpoint_says_what_differs(tmp_path, tiny_model_dir):
    from betadpo_lightning.models.reference import FrozenReference

    other = save_tiny_model(tmp_path / "other", seed=5)
    first = PreferenceModule(model_name_or_path=str(tiny_model_dir))
    trainer = quiet_trainer(tmp_path, 1)
    trainer.fit(first, resumable_loader(RandomPairs(8), 4))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    second = PreferenceModule(model_name_or_path=str(tiny_model_dir), reference=FrozenReference(str(other)))
    with pytest.raises(
        RuntimeError, match=r"provider: 'FrozenReference\(name_or_path=None, quantization=None\)' in the checkpoint"
    ):
        quiet_trainer(tmp_path, 2).fit(second, resumable_loader(RandomPairs(8), 4), ckpt_path=tmp_path / "a.ckpt")
