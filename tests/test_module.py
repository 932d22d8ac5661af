"""PreferenceModule on a tiny Llama: training changes the policy only, exact plain-DPO loss, checkpoints, resume."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController, ConstantBetaController
from betadpo_lightning.core.losses import MallowsThetaLoss, dpo_loss
from betadpo_lightning.core.types import LOGPS_FIELDS
from betadpo_lightning.models.reference import FrozenReference
from betadpo_lightning.training.metrics import PreferenceMetrics
from betadpo_lightning.training.module import PreferenceModule
from helpers.logger import MemoryLogger
from helpers.recorder import Recorder, params_of
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs, resumable_loader
from helpers.trainers import quiet_trainer


def _adamw(params):
    return torch.optim.AdamW(params, lr=5e-3)


def _module(**kwargs) -> PreferenceModule:
    return PreferenceModule(model_config=TINY_LLAMA, optimizer=_adamw, **kwargs)


def _trainer(tmp_path, max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    return quiet_trainer(
        tmp_path, max_steps, callbacks, **{"log_every_n_steps": 1, "num_sanity_val_steps": 0, **kwargs}
    )


def test_fit_changes_the_policy_and_nothing_else(tmp_path):
    pl.seed_everything(0)
    module = _module()
    module.configure_model()
    policy_before, reference_before = params_of(module.policy), params_of(module.reference)
    recorder = Recorder()
    trainer = _trainer(
        tmp_path,
        4,
        [recorder, DynamicBetaCallback(BetaDPOController(beta=0.1))],
        limit_val_batches=2,
        val_check_interval=2,
    )
    val = torch.utils.data.DataLoader(RandomPairs(8, seed=1), batch_size=4, collate_fn=collate_pairs)
    trainer.fit(module, resumable_loader(RandomPairs(32), 4), val)

    changed = [k for k, v in params_of(module.policy).items() if not torch.equal(v, policy_before[k])]
    assert len(changed) == len(policy_before)
    for key, value in params_of(module.reference).items():
        assert torch.equal(value, reference_before[key]), key
    assert not module.reference.training
    assert all(not p.requires_grad for p in module.reference.parameters())
    optimizer_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for p in module.policy.parameters()}
    # Step 0: the reference is a copy of the policy, so every margin is 0 and the loss is exactly log 2.
    assert recorder.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    expected = {"train/loss", "train/beta", "train/beta/m0", "train/beta/sigma", "train/beta/kept_fraction"}
    expected |= {f"{s}/rewards/{k}" for s in ("train", "val") for k in ("chosen", "rejected", "margins", "accuracies")}
    expected |= {f"{s}/logps/{k}" for s in ("train", "val") for k in ("chosen", "rejected")} | {"val/loss"}
    assert expected <= set(trainer.callback_metrics)


def test_plain_dpo_without_callback_matches_the_formula(tmp_path):
    """No callback: fixed β, all pairs, local mean — the loss equals dpo_loss on the model's own log-probs."""
    pl.seed_everything(0)
    module = _module(beta=0.3)
    module.configure_model()
    with torch.no_grad():  # make the policy differ from the reference
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = collate_pairs([RandomPairs(8)[i] for i in range(4)])
    pairs = module.forward_pairs(batch)
    want = dpo_loss(*(pairs.tensors()[k] for k in LOGPS_FIELDS), beta=0.3).mean()
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    got = module._step(batch, "train")
    torch.testing.assert_close(got, want)
    assert got.item() != pytest.approx(math.log(2), abs=1e-3)


def test_one_concatenated_forward_per_model(tmp_path):
    pl.seed_everything(0)
    module = _module()
    module.configure_model()
    calls = {"policy": [], "reference": []}
    module.policy.register_forward_hook(
        lambda m, a, k, o: calls["policy"].append(k["input_ids"].shape), with_kwargs=True
    )
    module.reference.register_forward_hook(
        lambda m, a, k, o: calls["reference"].append(k["input_ids"].shape), with_kwargs=True
    )
    module.log = lambda *args, **kwargs: None
    batch = collate_pairs([RandomPairs(8)[i] for i in range(3)])
    module._step(batch, "train")
    assert calls["policy"] == [batch["input_ids"].shape]
    assert calls["reference"] == [batch["input_ids"].shape]
    assert batch["input_ids"].shape[0] == 6


def test_checkpoint_has_no_reference_and_resumes(tmp_path):
    pl.seed_everything(0)
    module = _module()
    trainer = _trainer(tmp_path, 2, [DynamicBetaCallback()])
    trainer.fit(module, resumable_loader(RandomPairs(16), 4))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["state_dict"]
    assert all(k.startswith("policy.") for k in checkpoint["state_dict"])
    assert checkpoint["reference"]["fingerprint"] is not None
    assert any("DynamicBetaCallback" in k for k in checkpoint["callbacks"])

    pl.seed_everything(0)
    resumed = _module()
    trainer2 = _trainer(tmp_path, 4, [DynamicBetaCallback()])
    trainer2.fit(resumed, resumable_loader(RandomPairs(16), 4), ckpt_path=path)
    assert trainer2.global_step == 4


def test_resume_with_another_reference_fails(tmp_path):
    pl.seed_everything(0)
    trainer = _trainer(tmp_path, 1)
    trainer.fit(_module(), resumable_loader(RandomPairs(8), 4))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    pl.seed_everything(1)  # a different random init ⇒ a different reference
    with pytest.raises(
        RuntimeError, match=r"reference model differs.*seed_everything seed: '0' in the checkpoint, '1' now"
    ):
        _trainer(tmp_path, 2).fit(_module(), resumable_loader(RandomPairs(8), 4), ckpt_path=tmp_path / "a.ckpt")


def _run(tmp_path, max_steps, ckpt_path=None, checkpoint_every=None):
    pl.seed_everything(0)
    recorder = Recorder()
    callbacks = [DynamicBetaCallback(BetaDPOController(beta=0.1, alpha=0.6, rho=0.25)), recorder]
    kwargs = {}
    if checkpoint_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=checkpoint_every, save_top_k=-1))
        kwargs["enable_checkpointing"] = True
    trainer = _trainer(tmp_path, max_steps, callbacks, **kwargs)
    module = _module()
    # 10 pairs in batches of 4: epochs of 3 batches (the last one short), so the resume point is mid-epoch.
    trainer.fit(module, resumable_loader(RandomPairs(10), 4, seed=3), ckpt_path=ckpt_path)
    return recorder, module


def test_resume_mid_run_equals_uninterrupted_run(tmp_path):
    full, full_module = _run(tmp_path / "full", 8)
    first, _ = _run(tmp_path / "first", 4, checkpoint_every=4)
    ckpt = next((tmp_path / "first").glob("*step=4*.ckpt"))
    second, second_module = _run(tmp_path / "second", 8, ckpt_path=ckpt)

    assert len(second.losses) == 4
    assert first.pair_indices + second.pair_indices == full.pair_indices
    torch.testing.assert_close(torch.tensor(first.losses + second.losses), torch.tensor(full.losses), rtol=0, atol=0)
    assert first.betas + second.betas == full.betas
    assert second.controller_states[-1]["steps"] == full.controller_states[-1]["steps"] == 8
    for key in ("m0", "sigma"):
        assert torch.equal(second.controller_states[-1][key], full.controller_states[-1][key])
    for key, value in params_of(full_module.policy).items():
        torch.testing.assert_close(params_of(second_module.policy)[key], value, rtol=0, atol=0)


def test_the_loss_declares_length_averaged_logps():
    assert _module(loss="ipo").preference_loss.average_logps
    assert not _module().preference_loss.average_logps
    assert _module(loss=MallowsThetaLoss(average_logps=True)).preference_loss.average_logps


def test_the_default_reference_follows_the_loss():
    # a reference-free MallowsPO loss still reads the reference's entropy: it gets the frozen copy
    assert isinstance(_module(loss=MallowsThetaLoss(reference_free=True)).reference_provider, FrozenReference)
    assert isinstance(_module().reference_provider, FrozenReference)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "kto"}, "Unknown loss 'kto'"),
        ({"loss": {"class_path": "torch.nn.MSELoss"}}, "class path of a PreferenceLoss"),
        ({"beta": 0.0}, "beta"),
        ({"model_name_or_path": "some/model"}, "exactly one"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _module(**kwargs)


def _checkpointing(policy) -> bool:
    """Whether activation checkpointing is on (``is_activation_checkpointing`` from transformers 5.23; before it,
    ``is_gradient_checkpointing``, which 5.23 deprecates)."""
    if hasattr(type(policy), "is_activation_checkpointing") or "is_activation_checkpointing" in dir(policy):
        return bool(policy.is_activation_checkpointing)
    return bool(policy.is_gradient_checkpointing)


def test_activation_checkpointing_changes_no_number():
    pl.seed_everything(0)
    plain = _module()
    plain.configure_model()
    pl.seed_everything(0)
    checkpointed = _module(gradient_checkpointing=True)
    checkpointed.configure_model()
    batch = collate_pairs([RandomPairs(8)[i] for i in range(4)])
    for module in (plain, checkpointed):
        module.log = lambda *args, **kwargs: None
        module.policy.train()
        module._step(batch, "train").backward()
    assert _checkpointing(checkpointed.policy)
    assert not _checkpointing(plain.policy)
    for (name, a), b in zip(plain.policy.named_parameters(), checkpointed.policy.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning")
@pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning")
@pytest.mark.parametrize("small", ["policy", "reference model"])
def test_token_id_outside_a_vocabulary_is_named_once_before_training(tmp_path, small, bpe_tokenizer_dir, fixtures_dir):
    """Data tokenized with a 600-token tokenizer, a policy or a reference whose embedding has 48 rows: the first
    out-of-range id is named with its split, row and part before any step (instead of an IndexError mid-step)."""
    from betadpo_lightning.data import PreferenceDataModule
    from betadpo_lightning.models.reference import FrozenReference
    from conftest import save_tiny_model

    small_dir = save_tiny_model(tmp_path / "small")  # TINY_LLAMA: 48 rows, no tokenizer
    big_dir = save_tiny_model(tmp_path / "big", bpe_tokenizer_dir)  # 600 rows
    policy, reference = (small_dir, big_dir) if small == "policy" else (big_dir, small_dir)
    data = PreferenceDataModule(dataset=str(fixtures_dir / "standard.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                                cache_dir=str(tmp_path / "cache"), val_split=None, batch_size=2)  # fmt: skip
    module = PreferenceModule(model_name_or_path=str(policy), reference=FrozenReference(name_or_path=str(reference)))
    data.prepare_data()
    data.setup("fit")
    first = next(
        (row, part, token)
        for row, sample in zip(data.splits["train"]["index"], data.splits["train"], strict=True)
        for part in ("prompt", "chosen", "rejected")
        for token in sample[f"{part}_input_ids"]
        if token >= 48
    )
    expected = (
        rf"token id {first[2]} \(split 'train', row {first[0]}, {first[1]}\) is outside the vocabulary of the "
        rf"{small}: its input embedding has 48 rows, but the data was tokenized with a tokenizer of "
        rf"{len(data.tokenizer)} tokens"
    )
    recorder = Recorder()
    with pytest.raises(ValueError, match=expected):
        _trainer(tmp_path, 1, [recorder]).fit(module, datamodule=data)
    assert recorder.losses == []


def _logged_run(tmp_path, callbacks, monkeypatch) -> tuple[MemoryLogger, int]:
    calls = [0]
    update = PreferenceMetrics.update

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return update(self, *args, **kwargs)

    monkeypatch.setattr(PreferenceMetrics, "update", counting)
    pl.seed_everything(0)
    logger = MemoryLogger()
    trainer = quiet_trainer(
        tmp_path,
        4,
        callbacks,
        logger=logger,
        log_every_n_steps=2,
        limit_val_batches=2,
        val_check_interval=2,
        num_sanity_val_steps=0,
    )
    val = torch.utils.data.DataLoader(RandomPairs(8, seed=1), batch_size=4, collate_fn=collate_pairs)
    trainer.fit(_module(beta=0.2), resumable_loader(RandomPairs(32), 4), val)
    return logger, calls[0]


def test_plain_dpo_without_callback_logs_the_same_metrics_once(tmp_path, monkeypatch):
    """No callback: the module logs train/ and val/ rewards, accuracies, log-probs and margins itself, with the
    same values as the callback with a constant β; either way each batch updates the metrics exactly once."""
    alone, alone_calls = _logged_run(tmp_path / "a", [], monkeypatch)
    with_callback, callback_calls = _logged_run(
        tmp_path / "b", [DynamicBetaCallback(ConstantBetaController(beta=0.2))], monkeypatch
    )
    assert alone_calls == callback_calls == 4 + 2 * 2  # 4 training batches, 2 validations of 2 batches
    keys = {f"{s}/{k}" for s in ("train", "val") for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")}
    keys |= {f"{s}/{k}" for s in ("train", "val") for k in ("rewards/accuracies", "logps/chosen", "margins/mean")}
    keys |= {"train/loss", "val/loss"}
    for name, logger in (("alone", alone), ("callback", with_callback)):
        logged = {key for _, metrics in logger.written for key in metrics}
        assert keys <= logged, (name, keys - logged)
    assert all(metrics["train/beta"] == pytest.approx(0.2) for _, metrics in alone.written if "train/beta" in metrics)
    assert not any(key.startswith("train/beta/") for _, metrics in alone.written for key in metrics)
    for key in sorted(keys):
        a, b = alone.rows_with(key), with_callback.rows_with(key)
        assert sorted(a) == sorted(b), key
        for step in a:
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-6, abs=1e-7), (key, step)
