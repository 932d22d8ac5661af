"""DynamicBetaCallback with a LightningModule that only follows the documented protocol (not a PreferenceModule)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController, BetaStep, ConstantBetaController
from betadpo_lightning.core.types import PairRequest
from betadpo_lightning.training.decision import BetaDecision, StaticBeta, static_decision
from helpers.logger import MemoryLogger
from helpers.protocol_module import PairScorer
from helpers.trainers import quiet_trainer

CONTROLLER = {"beta": 0.2, "alpha": 0.5, "rho": 0.25, "momentum": 0.8, "seed": 3}


def _callback(**overrides) -> DynamicBetaCallback:
    return DynamicBetaCallback(BetaDPOController(**{**CONTROLLER, **overrides}))


def _trainer(tmp_path, max_steps, callback, **kwargs):
    return quiet_trainer(tmp_path, max_steps, [callback], **kwargs)


def test_default_controller_is_beta_dpo():
    controller = DynamicBetaCallback().controller
    assert isinstance(controller, BetaDPOController)
    assert (controller.beta, controller.alpha, controller.rho) == (0.1, 0.6, 0.2)


def test_foreign_module_gets_the_single_process_beta_mask_and_gradient(tmp_path):
    module = PairScorer(sizes=(8,), mirror=CONTROLLER)
    callback = _callback()
    _trainer(tmp_path, 5, callback, limit_val_batches=0).fit(module)
    assert len(module.records) == 5
    for record in module.records:
        expected = record["expected"]
        assert torch.equal(record["beta"], expected["beta"])
        assert torch.equal(record["keep"], expected["keep"])
        assert record["normalizer"].item() == expected["keep"].sum().item() == 6  # k = floor(8 · 0.75)
        torch.testing.assert_close(record["grad"], expected["grad"])
    assert callback.controller.num_steps == 5
    assert isinstance(module.beta_provider, StaticBeta)  # its own provider again after teardown


def test_validation_uses_beta0_keeps_every_pair_and_changes_nothing(tmp_path):
    module = PairScorer(sizes=(8,))
    callback = _callback()
    trainer = _trainer(tmp_path, 3, callback, limit_val_batches=0)
    trainer.fit(module)
    before = callback.controller.state_dict()
    seen = []
    original = callback.decide

    def spy(pairs, margins, training):
        decision = original(pairs, margins, training)
        seen.append(decision)
        return decision

    callback.decide = spy
    validator = _trainer(tmp_path, 3, callback)
    validator.validate(module, verbose=False)
    after = callback.controller.state_dict()
    assert len(seen) == 4  # one decision per validation batch
    for decision in seen:
        assert decision.keep.all()
        assert decision.beta.item() == pytest.approx(CONTROLLER["beta"])  # the fixed β0
        assert decision.normalizer.item() == 8  # the local mean
    assert after.pop("settings") == before.pop("settings")
    for key, value in before.items():
        assert torch.equal(torch.as_tensor(after[key]), torch.as_tensor(value)), key
    assert {"val/rewards/accuracies", "val/logps/chosen", "val/margins/mean"} <= set(validator.callback_metrics)


def _window_expectations(module, batch_indices, weights) -> float:
    correct = total = 0
    for batch_idx, weight in zip(batch_indices, weights, strict=True):
        margins = module.margins(weight, batch_idx, 0)[0]
        correct += int((CONTROLLER["beta"] * margins > 0).sum())  # chosen reward > rejected ⇔ β0·h > 0
        total += margins.numel()
    return correct / total


def test_logged_train_metrics_cover_the_window(tmp_path):
    """With log_every_n_steps = 4, the accuracy logged at step 4 is over the 4 steps' pairs, with rewards β0·Δ."""
    module = PairScorer(sizes=(8,))
    trainer = _trainer(tmp_path, 4, _callback(), limit_val_batches=0, log_every_n_steps=4)
    weights = []
    module.on_train_batch_start = lambda batch, idx: weights.append(module.w.weight.detach().clone())
    trainer.fit(module)
    expected = _window_expectations(module, range(4), weights)
    assert trainer.callback_metrics["train/rewards/accuracies"].item() == pytest.approx(expected)
    betas = [record["beta"].item() for record in module.records]
    assert trainer.callback_metrics["train/beta"].item() == pytest.approx(sum(betas) / 4, rel=1e-6)


def test_gradient_accumulation_windows_and_optimizer_step_statistics(tmp_path):
    """accumulate_grad_batches = 2, log_every_n_steps = 2, 4 optimizer steps (8 micro-batches): each logged window
    covers the 4 micro-batches of its 2 optimizer steps (none lost, none twice), train/beta is their mean β, and an
    ``optimizer_step``-scope controller updated its statistics once per optimizer step."""
    module = PairScorer(sizes=(8,))
    callback = _callback(scope="optimizer_step")
    logger = MemoryLogger()
    trainer = quiet_trainer(
        tmp_path, 4, [callback], limit_val_batches=0, log_every_n_steps=2, accumulate_grad_batches=2, logger=logger
    )
    weights = []
    module.on_train_batch_start = lambda batch, idx: weights.append(module.w.weight.detach().clone())
    trainer.fit(module)
    assert len(module.records) == 8
    assert callback.controller.num_updates == 4
    assert callback.controller.num_steps == 8
    written = logger.rows_with("train/beta")
    assert sorted(written) == [1, 3]  # Lightning's step index of the 2nd and 4th optimizer steps
    betas = [record["beta"].item() for record in module.records]
    for step, window in ((2, range(0, 4)), (4, range(4, 8))):
        logged = written[step - 1]
        assert logged["train/beta"] == pytest.approx(sum(betas[i] for i in window) / 4, rel=1e-6)
        expected = _window_expectations(module, window, [weights[i] for i in window])
        assert logged["train/rewards/accuracies"] == pytest.approx(expected)


def test_state_round_trip_through_a_checkpoint(tmp_path):
    module = PairScorer(sizes=(6,))
    callback = _callback()
    trainer = _trainer(tmp_path, 3, callback, limit_val_batches=0)
    trainer.fit(module)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    checkpoint = torch.load(tmp_path / "c.ckpt", weights_only=True)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("DynamicBetaCallback")]
    fresh = _callback()
    fresh.load_state_dict(state)
    assert fresh.controller.state_dict()["steps"] == 3
    assert torch.equal(fresh.controller.state_dict()["m0"], callback.controller.state_dict()["m0"])
    with pytest.raises(MisconfigurationException, match=r"BetaDPOController.*ConstantBetaController"):
        DynamicBetaCallback(ConstantBetaController()).load_state_dict(state)


def test_module_without_the_protocol_is_refused(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    lacks = r"Plain cannot use DynamicBetaCallback: it lacks `beta_provider`.*`preference_loss`.*`pair_extras`"
    with pytest.raises(MisconfigurationException, match=lacks):
        _trainer(tmp_path, 1, DynamicBetaCallback()).fit(Plain(), train_dataloaders=[torch.zeros(1)])


class _NeedsEntropy(ConstantBetaController):
    request = PairRequest(frozenset({"reference_entropy"}))


def test_controller_needing_what_the_module_lacks_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"_NeedsEntropy needs \['reference_entropy'\].*PairScorer"):
        _trainer(tmp_path, 1, DynamicBetaCallback(_NeedsEntropy()), limit_val_batches=0).fit(PairScorer(sizes=(4,)))


class _PerPairBeta(ConstantBetaController):
    """A controller with one β per pair (as ε-DPO has): β_i = 0.1 · (i + 1) over the global batch."""

    def step(self, gaps, pairs=None):
        n = gaps.shape[0]
        return BetaStep(
            beta=0.1 * torch.arange(1, n + 1, dtype=torch.float32), keep=torch.ones(n, dtype=torch.bool), stats={}
        )


def test_per_pair_beta_reaches_the_module(tmp_path):
    module = PairScorer(sizes=(3,))
    _trainer(tmp_path, 2, DynamicBetaCallback(_PerPairBeta()), limit_val_batches=0).fit(module)
    for record in module.records:
        torch.testing.assert_close(record["beta"], torch.tensor([0.1, 0.2, 0.3]))


def test_beta_disagreement_is_warned(tmp_path):
    module = PairScorer(sizes=(4,))
    module.beta_provider = StaticBeta(0.5)
    with pytest.warns(UserWarning, match="differ"):
        _trainer(tmp_path, 1, DynamicBetaCallback(), limit_val_batches=0).fit(module)


def test_decision_reduce_and_static_decision():
    """keep = [T, F, T], normalizer 1 ⇒ (ℓ0 + ℓ2) / 1; static: mean over all pairs with the fixed β."""
    losses = torch.tensor([1.0, 100.0, 3.0])
    decision = BetaDecision(torch.tensor(0.1), torch.tensor([True, False, True]), torch.tensor(1.0))
    assert decision.reduce(losses).item() == 4.0
    static = static_decision(3, 0.3)
    assert static.reduce(losses).item() == pytest.approx(104 / 3)
    assert static.beta.item() == pytest.approx(0.3)
    h = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    loss = decision.reduce(-F.logsigmoid(decision.beta * h))
    loss.backward()
    assert h.grad[1] == 0  # a dropped pair gets no gradient


def test_resume_with_other_settings_is_warned(tmp_path):
    """α, ρ, momentum and the seed are in the checkpoint; a resume with another value of one of them says which,
    and runs with the configured value."""
    module = PairScorer(sizes=(6,))
    callback = _callback()
    _trainer(tmp_path, 2, callback, limit_val_batches=0).fit(module)
    state = callback.state_dict()
    assert state["controller"]["settings"]["rho"] == CONTROLLER["rho"]
    changed = _callback(rho=0.5, seed=9)
    with pytest.warns(UserWarning, match=r"rho: 0.25 in the checkpoint, 0.5 now, .*seed: 3 in the checkpoint, 9 now"):
        changed.load_state_dict(state)
    assert changed.controller.seed == 9
    assert changed.controller.rho == 0.5
    assert changed.controller.num_steps == 2
