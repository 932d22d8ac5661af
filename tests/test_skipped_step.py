"""A step skipped by the non-finite guard leaves every controller untouched, and its message names each rank's fault."""

from __future__ import annotations

import functools
import sys
import warnings

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController, EpsilonBetaController
from betadpo_lightning.distributed import any_rank
from betadpo_lightning.training.module import PreferenceModule
from betadpo_lightning.training.nonfinite import describe_faults
from helpers.tiny import TINY_LLAMA, RandomPairs, RandomPairsData, resumable_loader
from helpers.trainers import quiet_trainer
from test_nonfinite import Poison


class ControllerStates(pl.Callback):
    """The controller's state at the start of every optimizer step and after it (placed after the β callback, so
    that its batch-end hook has run); asserted inside the worker under DDP."""

    def __init__(self, skipped: set[int] = frozenset(), accumulate: int = 1) -> None:
        self.skipped, self.accumulate = set(skipped), accumulate
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.setdefault(trainer.global_step, pl_module.beta_provider.controller.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.accumulate == 0:
            self.after[trainer.global_step - 1] = pl_module.beta_provider.controller.state_dict()

    def on_train_end(self, trainer, pl_module) -> None:
        for step, before in self.before.items():
            unchanged = _same(before, self.after[step])
            assert unchanged == (step in self.skipped), (step, before, self.after[step])


class SkipWarnings(pl.Callback):
    """Records the guard's skip warnings on rank 0 and checks them at the end of training (inside the worker)."""

    def __init__(self, expected: list[list[str]]) -> None:
        self.expected, self.caught, self._context = expected, [], None

    def on_train_start(self, trainer, pl_module) -> None:
        self._context = warnings.catch_warnings(record=True)
        self.caught = self._context.__enter__()
        warnings.simplefilter("always")

    def on_train_end(self, trainer, pl_module) -> None:
        self._context.__exit__(None, None, None)
        if trainer.global_rank != 0:
            return
        messages = [str(w.message) for w in self.caught if "Skipping the optimizer step" in str(w.message)]
        assert len(messages) == len(self.expected), messages
        for message, fragments in zip(messages, self.expected, strict=True):
            for fragment in fragments:
                assert fragment in message, (fragment, message)
            assert ": ." not in message, message
            assert "rank 0: non-finite margin" not in message, message


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a if k != "settings")


def test_describe_faults_names_each_rank():
    faults = ["non-finite gradients of ['w']", "non-finite margin for dataset pairs [7], non-finite loss", ""]
    assert describe_faults(4, faults) == (
        "at global step 4 on rank 1: non-finite margin for dataset pairs [7], non-finite loss; "
        "on rank 0: non-finite gradients of ['w']."
    )


def test_any_rank_leaves_the_callers_flag_alone():
    """A strategy reduces in place (as ``torch.distributed.all_reduce`` does): the caller's tensor must not change."""

    class InPlaceMax:
        def reduce(self, tensor, reduce_op):
            return tensor.fill_(1.0)  # another rank had the fault

    mine = torch.zeros((), dtype=torch.float32)
    assert any_rank(InPlaceMax(), mine)
    assert mine.item() == 0.0


@pytest.mark.parametrize(
    ("controller", "accumulate"),
    [
        (functools.partial(BetaDPOController, rho=0.25), 1),
        (functools.partial(BetaDPOController, rho=0.25), 2),
        (functools.partial(BetaDPOController, scope="optimizer_step"), 2),
        (functools.partial(EpsilonBetaController, beta=0.1, epsilon=0.2), 2),
    ],
    ids=["beta-dpo", "beta-dpo-accumulated", "beta-dpo-per-step", "epsilon"],
)
def test_a_gradient_only_fault_leaves_the_controller_untouched(tmp_path, controller, accumulate):
    """Step 2's loss is finite and only a gradient is NaN: the controller has already stepped on its micro-batches
    when the guard decides, yet after the skip its whole state (M0, σ, counters, pending sums) is as before the
    step, while every other step changes it."""
    pl.seed_everything(0)
    module = PreferenceModule(
        model_config=TINY_LLAMA, on_nonfinite="skip", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
    )
    states = ControllerStates(skipped={2}, accumulate=accumulate)
    callbacks = [DynamicBetaCallback(controller()), Poison({2}, "gradient"), states]
    trainer = quiet_trainer(tmp_path, 4, callbacks, accumulate_grad_batches=accumulate)
    with pytest.warns(UserWarning, match=r"at global step 2 on rank 0: non-finite gradients of \['policy.lm_head"):
        trainer.fit(module, resumable_loader(RandomPairs(64), 4))
    assert sorted(states.after) == [0, 1, 2, 3]  # asserted per step in on_train_end


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in spawned processes")
def test_two_ranks_skip_names_the_rank_and_leave_the_controller_untouched(tmp_path):
    """Rank 1 alone has NaN hidden states at step 1 and rank 0 alone a NaN gradient at step 3. Rank 0's warnings
    name rank 1's pairs (and rank 0's gradients only as gradients, averaged from rank 1's loss), then both ranks'
    gradients; the controller state on every rank is the one before each skipped step."""
    pl.seed_everything(0)
    module = PreferenceModule(
        model_config=TINY_LLAMA, on_nonfinite="skip", optimizer=functools.partial(torch.optim.AdamW, lr=1e-2)
    )
    expected = [
        [
            "at global step 1 on rank 1: non-finite margin",
            "dataset pairs [",
            "non-finite loss",
            "on rank 0: non-finite",
        ],
        ["at global step 3 on ranks 0, 1: non-finite gradients of ['policy.lm_head.weight']"],
    ]
    callbacks = [
        DynamicBetaCallback(BetaDPOController(rho=0.25)),
        Poison({1}, "logits", rank=1),
        Poison({3}, "gradient", rank=0),
        ControllerStates(skipped={1, 3}),
        SkipWarnings(expected),
    ]
    trainer = quiet_trainer(tmp_path, 5, callbacks, devices=2, strategy="ddp_spawn")
    trainer.fit(module, datamodule=RandomPairsData(size=40, batch_size=4))


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in spawned processes")
def test_two_ranks_raise_with_the_same_message_naming_rank_1(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    callbacks = [DynamicBetaCallback(BetaDPOController()), Poison({1}, "logits", rank=1)]
    trainer = quiet_trainer(tmp_path, 3, callbacks, devices=2, strategy="ddp_spawn")
    with pytest.raises(Exception, match="FloatingPointError") as error:
        trainer.fit(module, datamodule=RandomPairsData(size=24, batch_size=3))
    message = str(error.value)
    assert "at global step 1 on rank 1: non-finite margin" in message, message
    assert "rank 0: non-finite margin" not in message, message
    assert "rank 0: ." not in message, message
