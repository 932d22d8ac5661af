"""No NaN or infinity ever reaches the weights: the guard before every optimizer step, raise or skip, on every rank."""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.training.module import PreferenceModule
from betadpo_lightning.training.schedulers import LinearWarmup
from helpers.logger import MemoryLogger
from helpers.recorder import params_of
from helpers.tiny import TINY_LLAMA, RandomPairs, resumable_loader
from helpers.trainers import quiet_trainer


class Poison(pl.Callback):
    """At the given global steps, make the policy's last hidden states NaN (``"logits"``) or the output layer's
    gradient NaN while the loss stays finite (``"gradient"``); records the weights around each step."""

    def __init__(self, steps: set[int], where: str, rank: int | None = None) -> None:
        self.steps, self.where, self.rank = steps, where, rank
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}
        self.lrs: list[float] = []

    def _active(self, trainer) -> bool:
        return trainer.global_step in self.steps and (self.rank is None or trainer.global_rank == self.rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = params_of(pl_module.policy)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        if not self._active(trainer):
            return
        policy = pl_module.policy
        if self.where == "logits":
            layer = policy.model.layers[-1]
            handle = layer.register_forward_hook(
                lambda m, a, out: (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
            )
        else:
            handle = policy.lm_head.weight.register_hook(lambda grad: grad * float("nan"))
        self.handle = handle

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = params_of(pl_module.policy)
        if getattr(self, "handle", None) is not None:
            self.handle.remove()
            self.handle = None


def _fit(tmp_path, where, policy="raise", steps=5, poison_steps=frozenset({2}), **kwargs):
    pl.seed_everything(0)
    module = PreferenceModule(
        model_config=TINY_LLAMA,
        on_nonfinite=policy,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        scheduler=lambda optimizer: LinearWarmup(optimizer, warmup_steps=10),
        **kwargs,
    )
    poison = Poison(set(poison_steps), where)
    logger = MemoryLogger()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = quiet_trainer(
        tmp_path,
        steps,
        [DynamicBetaCallback(BetaDPOController()), poison, checkpoints],
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=True,
    )
    return trainer, module, poison, logger


@pytest.mark.parametrize("where", ["logits", "gradient"])
def test_raise_names_the_step_and_writes_no_poisoned_checkpoint(tmp_path, where):
    trainer, module, _, _ = _fit(tmp_path, where)
    with pytest.raises(FloatingPointError) as error:
        trainer.fit(module, resumable_loader(RandomPairs(32), 4))
    message = str(error.value)
    assert "at global step 2 on rank 0" in message
    if where == "logits":
        assert "non-finite margin" in message
        assert "dataset pairs [" in message
    else:  # the loss was finite: only the gradient tells
        assert "non-finite gradients of ['policy.lm_head.weight']" in message
    assert all(bool(torch.isfinite(p).all()) for p in module.policy.parameters())
    written = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert written == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]  # none after the poisoned step
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(bool(torch.isfinite(v).all()) for v in state.values())


@pytest.mark.parametrize("where", ["logits", "gradient"])
def test_skip_leaves_weights_optimizer_and_schedule_untouched(tmp_path, where):
    trainer, module, poison, logger = _fit(tmp_path, where, policy="skip", steps=5)
    with pytest.warns(UserWarning, match="Skipping the optimizer step: at global step 2"):
        trainer.fit(module, resumable_loader(RandomPairs(32), 4))
    assert trainer.global_step == 5
    for key, value in poison.before[2].items():  # the poisoned step changed nothing
        assert torch.equal(poison.after[2][key], value), key
    assert any(not torch.equal(poison.after[3][k], v) for k, v in poison.before[3].items())  # the next one trains
    assert all(bool(torch.isfinite(p).all()) for p in module.policy.parameters())
    # The default warmup schedule did not advance on the skipped step: steps 2 and 3 see the same learning rate.
    assert poison.lrs[3] == poison.lrs[2]
    assert poison.lrs[2] > poison.lrs[1]
    skipped = [metrics["train/skipped_steps"] for _, metrics in logger.written if "train/skipped_steps" in metrics]
    assert skipped[-1] == 1.0
    assert module._guard.skipped == 1


def test_consecutive_skips_stop_training(tmp_path):
    trainer, module, _, _ = _fit(
        tmp_path, "logits", policy="skip", steps=8, poison_steps={1, 2, 3, 4}, max_skipped_steps=3
    )
    with (
        pytest.warns(UserWarning, match="Skipping the optimizer step"),
        pytest.raises(FloatingPointError, match="4 optimizer steps in a row were skipped"),
    ):
        trainer.fit(module, resumable_loader(RandomPairs(64), 4))


def test_plain_dpo_is_guarded_too(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA)
    trainer = quiet_trainer(tmp_path, 3, [Poison({1}, "gradient")])
    with pytest.raises(FloatingPointError, match="global step 1"):
        trainer.fit(module, resumable_loader(RandomPairs(16), 4))


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA)
    trainer = quiet_trainer(tmp_path, 1)
    trainer.fit(module, resumable_loader(RandomPairs(8), 4))
    with torch.no_grad():
        module.policy.lm_head.weight[0, 0] = math.inf
    with pytest.raises(FloatingPointError, match=r"non-finite weights \(\['lm_head.weight'\]\)"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_poison_on_one_rank_only_under_ddp(tmp_path, policy):
    """Rank 1 alone sees NaN at step 1: with one collective both ranks reach the same verdict, so both skip the
    step (and stay identical) or both raise (nobody is left waiting)."""
    from helpers.ddp_checks import SameWeights
    from helpers.tiny import RandomPairsData

    pl.seed_everything(0)
    module = PreferenceModule(
        model_config=TINY_LLAMA, on_nonfinite=policy, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2)
    )
    callbacks = [DynamicBetaCallback(BetaDPOController()), Poison({1}, "logits", rank=1), SameWeights()]
    trainer = quiet_trainer(tmp_path, 3, callbacks, devices=2, strategy="ddp_spawn")
    if policy == "skip":
        trainer.fit(module, datamodule=RandomPairsData(size=24, batch_size=3))
        assert trainer.callback_metrics["guard_skipped"].item() == 1
        return
    with pytest.raises(Exception, match="FloatingPointError") as error:
        trainer.fit(module, datamodule=RandomPairsData(size=24, batch_size=3))
    assert "global step 1" in str(error.value)
