"""DynamicBetaCallback with a LightningModule that only follows the documented protocol (not a PreferenceModule)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from betadpo_lightning.callbacks import BetaDecision, DynamicBetaCallback, static_decision
from helpers.protocol_module import PairScorer
from helpers.trainers import quiet_trainer

CONTROLLER = {"beta": 0.2, "alpha": 0.5, "rho": 0.25, "momentum": 0.8, "seed": 3}


def _trainer(tmp_path, max_steps, callback, **kwargs):
    return quiet_trainer(tmp_path, max_steps, [callback], **kwargs)


def test_foreign_module_gets_the_single_process_beta_mask_and_gradient(tmp_path):
    module = PairScorer(sizes=(8,), mirror=CONTROLLER)
    callback = DynamicBetaCallback(**CONTROLLER)
    _trainer(tmp_path, 5, callback, limit_val_batches=0).fit(module)
    assert len(module.records) == 5
    for record in module.records:
        expected = record["expected"]
        assert torch.equal(record["beta"], expected["beta"])
        assert torch.equal(record["keep"], expected["keep"])
        assert record["normalizer"].item() == expected["keep"].sum().item() == 6  # k = floor(8 · 0.75)
        torch.testing.assert_close(record["grad"], expected["grad"])
    assert callback.controller.num_steps == 5
    assert module.beta_provider is None  # detached again at teardown


def test_validation_changes_no_statistic_and_keeps_every_pair(tmp_path):
    module = PairScorer(sizes=(8,))
    callback = DynamicBetaCallback(**CONTROLLER)
    trainer = _trainer(tmp_path, 3, callback, limit_val_batches=0)
    trainer.fit(module)
    before = callback.controller.state_dict()
    seen = []
    original = callback.decide

    def spy(margins):
        decision = original(margins)
        seen.append(decision)
        return decision

    callback.decide = spy
    validator = _trainer(tmp_path, 3, callback)
    validator.validate(module, verbose=False)
    after = callback.controller.state_dict()
    assert seen
    assert all(decision.keep.all() for decision in seen)
    for key, value in before.items():
        assert torch.equal(torch.as_tensor(after[key]), torch.as_tensor(value)), key
    assert len(seen) == 4  # one decision per validation batch
    assert {"val/rewards/accuracies", "val/logps/chosen", "val/margins/mean"} <= set(validator.callback_metrics)


def test_logged_train_metrics_cover_the_window(tmp_path):
    """With log_every_n_steps = 4, the accuracy logged at step 4 is over the 4 steps' pairs, with rewards β0·Δ."""
    module = PairScorer(sizes=(8,))
    callback = DynamicBetaCallback(**CONTROLLER)
    trainer = _trainer(tmp_path, 4, callback, limit_val_batches=0, log_every_n_steps=4)
    weights = []
    module.on_train_batch_start = lambda batch, idx: weights.append(module.w.weight.detach().clone())
    trainer.fit(module)
    correct = total = 0
    for step, weight in enumerate(weights):
        margins = module.margins(weight, step, 0)[0]
        correct += int((CONTROLLER["beta"] * margins > 0).sum())  # chosen reward > rejected ⇔ β0·h > 0
        total += margins.numel()
    assert trainer.callback_metrics["train/rewards/accuracies"].item() == pytest.approx(correct / total)


def test_state_round_trip_through_a_checkpoint(tmp_path):
    module = PairScorer(sizes=(6,))
    callback = DynamicBetaCallback(**CONTROLLER)
    trainer = _trainer(tmp_path, 3, callback, limit_val_batches=0)
    trainer.fit(module)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    checkpoint = torch.load(tmp_path / "c.ckpt", weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("DynamicBetaCallback")]
    fresh = DynamicBetaCallback(**CONTROLLER)
    fresh.load_state_dict(state)
    assert fresh.controller.state_dict()["steps"] == 3
    assert torch.equal(fresh.controller.state_dict()["m0"], callback.controller.state_dict()["m0"])


def test_module_without_the_protocol_is_refused(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(MisconfigurationException, match="beta_provider"):
        _trainer(tmp_path, 1, DynamicBetaCallback()).fit(Plain(), train_dataloaders=[torch.zeros(1)])


def test_missing_step_outputs_are_named(tmp_path):
    class Forgetful(PairScorer):
        def training_step(self, batch, batch_idx):
            return {"loss": super().training_step(batch, batch_idx)["loss"]}

    with pytest.raises(MisconfigurationException, match="policy_chosen_logps"):
        _trainer(tmp_path, 1, DynamicBetaCallback(), limit_val_batches=0).fit(Forgetful())


def test_beta_disagreement_is_warned(tmp_path):
    module = PairScorer(sizes=(4,))
    module.beta = 0.5
    with pytest.warns(UserWarning, match="differ"):
        _trainer(tmp_path, 1, DynamicBetaCallback(beta=0.1), limit_val_batches=0).fit(module)


def test_decision_reduce_and_static_decision():
    """keep = [T, F, T], normalizer 1 ⇒ (ℓ0 + ℓ2) / 1; static: mean over all pairs with the fixed β."""
    losses = torch.tensor([1.0, 100.0, 3.0])
    decision = BetaDecision(torch.tensor(0.1), torch.tensor([True, False, True]), torch.tensor(1.0))
    assert decision.reduce(losses).item() == 4.0
    static = static_decision(torch.zeros(3), 0.3)
    assert static.reduce(losses).item() == pytest.approx(104 / 3)
    assert static.beta.item() == pytest.approx(0.3)
    h = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    loss = decision.reduce(-F.logsigmoid(decision.beta * h))
    loss.backward()
    assert h.grad[1] == 0  # a dropped pair gets no gradient
