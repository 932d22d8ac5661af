"""``PreferenceDataModule(packing=True, max_tokens=...)`` under a Trainer: fit, exact resume, evaluation, options."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.data import PreferenceDataModule, SyntheticConfig
from betadpo_lightning.data.packing import is_packed
from betadpo_lightning.training.module import PreferenceModule
from helpers.recorder import Recorder, params_of
from helpers.trainers import quiet_trainer

CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
CONFIG |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
BUDGET = 256


def _data(root, **kwargs) -> PreferenceDataModule:
    options = {"packing": True, "max_tokens": BUDGET, "max_length": 48, "seed": 2} | kwargs
    synthetic = SyntheticConfig(train_size=40, validation_size=9, seed=4)
    return PreferenceDataModule(synthetic=synthetic, cache_dir=str(root / "data"), **options)


class BudgetCheck(pl.Callback):
    """Every training batch is packed, its pairs hold at most ``BUDGET`` tokens, and its rows (at most ``max_length``
    long unless one pair alone is longer) are padded only at their ends, to the longest row."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert is_packed(batch)
        real = batch["segment_ids"] >= 0  # (R, L)
        assert int(real.sum()) <= BUDGET
        lengths = real.sum(-1)  # (R,)
        assert bool((real == (torch.arange(real.shape[1]) < lengths[:, None])).all())  # no padding inside a row
        assert real.shape[1] == int(lengths.max())
        assert all(
            length <= 48 or len(set(row[row >= 0].tolist())) == 1
            for row, length in zip(batch["segment_ids"], lengths, strict=True)
        )


def _run(tmp_path, run: str, max_steps: int, checkpoint_every: int = 0, ckpt_path=None):
    pl.seed_everything(0)
    recorder = Recorder()
    callbacks = [DynamicBetaCallback(BetaDPOController(beta=0.1, rho=0.25, seed=1)), recorder, BudgetCheck()]
    kwargs = {"limit_val_batches": 0}
    if checkpoint_every:
        every = ModelCheckpoint(dirpath=tmp_path / run, every_n_train_steps=checkpoint_every, save_top_k=-1)
        callbacks.append(every)
        kwargs["enable_checkpointing"] = True
    trainer = quiet_trainer(tmp_path / run, max_steps, callbacks, **kwargs)
    module = PreferenceModule(model_config=CONFIG, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer.fit(module, datamodule=_data(tmp_path), ckpt_path=ckpt_path)
    return recorder, module, trainer


def test_fit_resumes_mid_epoch_exactly_with_a_token_budget(tmp_path):
    full, full_module, trainer = _run(tmp_path, "full", 8)
    per_epoch = trainer.num_training_batches
    assert 2 < per_epoch < 8  # the run crosses an epoch boundary
    first_epoch = sorted(i for batch in full.pair_indices[:per_epoch] for i in batch)
    assert first_epoch == list(range(40))  # every pair exactly once per epoch
    assert len({len(batch) for batch in full.pair_indices}) > 1  # the pair count follows the lengths

    first, _, _ = _run(tmp_path, "first", 3, checkpoint_every=3)
    ckpt = next((tmp_path / "first").glob("*step=3*.ckpt"))
    second, second_module, _ = _run(tmp_path, "second", 8, ckpt_path=ckpt)
    assert first.pair_indices + second.pair_indices == full.pair_indices
    torch.testing.assert_close(torch.tensor(first.losses + second.losses), torch.tensor(full.losses), rtol=0, atol=0)
    assert second.controller_states[-1]["steps"] == full.controller_states[-1]["steps"] == 8
    for key, value in params_of(full_module.policy).items():
        torch.testing.assert_close(params_of(second_module.policy)[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("packing", [True, False])
def test_validation_counts_every_pair_once(tmp_path, packing):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=CONFIG, beta=0.1)
    data = _data(tmp_path, packing=packing, max_tokens=96)  # 96 = 2 * max_length: the smallest budget allowed
    trainer = quiet_trainer(tmp_path, 1)
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    assert metrics["val/pairs"] == 9
    sizes = [len(batch["pair_index"]) for batch in data.val_dataloader()]
    assert sum(sizes) == 9
    assert len(sizes) > 1


def test_the_datamodule_names_bad_budget_options(tmp_path):
    with pytest.raises(ValueError, match=r"max_tokens=95 is below the 96 tokens.*max_length=48"):
        _data(tmp_path, max_tokens=95)
    with pytest.raises(ValueError, match=r"max_tokens=256 is below the 320 tokens.*padded.*max_length=150"):
        _data(tmp_path, packing=False, max_length=150, pad_to_multiple_of=32)
    with pytest.raises(ValueError, match="max_tokens must be a positive integer, got 0"):
        _data(tmp_path, max_tokens=0)
    with pytest.raises(ValueError, match="packing must be true or false, got 'yes'"):
        _data(tmp_path, packing="yes")


def test_without_max_length_a_long_pair_is_named_when_the_loader_is_built(tmp_path):
    data = _data(tmp_path, max_length=None, max_prompt_length=None, max_tokens=20)
    data.prepare_data()
    data.setup("fit")
    with pytest.raises(ValueError, match=r"row \d+, field 'max_tokens': the pair needs \d+ tokens .*max_tokens=20"):
        data.train_dataloader()


def test_without_a_budget_batches_keep_their_pair_count(tmp_path):
    data = _data(tmp_path, max_tokens=None, batch_size=6)
    data.prepare_data()
    data.setup("fit")
    sizes = [len(batch["pair_index"]) for batch in data.train_dataloader()]
    assert sizes == [6] * 6 + [4]
    assert all(is_packed(batch) for batch in data.train_dataloader())


def test_the_options_parse_from_the_command_line():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PreferenceDataModule, "data")
    config = parser.parse_args(["--data.packing", "true", "--data.max_tokens", "4096"])
    assert config.data.packing is True
    assert config.data.max_tokens == 4096
