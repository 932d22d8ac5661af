"""A metric with nothing finite to average is NaN, never 0, and a NaN score never becomes the best checkpoint."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from betadpo_lightning.callbacks import PreferenceCheckpoint
from betadpo_lightning.training.metrics import ExactMean, MomentMetric, RewardAccuracy
from helpers.evaluation import module_and_data
from helpers.trainers import quiet_trainer

VALUES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
VALUES += ("logps/chosen", "logps/rejected", "margins/mean", "margins/std")


class NaNValidation(pl.Callback):
    """Makes the policy's last hidden states NaN during the given validation runs (1-based), weights untouched."""

    def __init__(self, runs: set[int]) -> None:
        self.runs, self.count, self.handle = runs, 0, None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.count += 1
        if self.count in self.runs:
            layer = pl_module.policy.model.layers[-1]
            self.handle = layer.register_forward_hook(
                lambda m, a, out: (out[0] * math.nan, *out[1:]) if isinstance(out, tuple) else out * math.nan
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def test_empty_metrics_are_nan():
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(RewardAccuracy().compute().item())
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(ExactMean().compute().item())
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert all(math.isnan(v.item()) for v in MomentMetric().compute())
    moments = MomentMetric()
    moments.update(torch.tensor([]))  # an evaluation batch whose pairs were all left out
    assert all(math.isnan(v.item()) for v in moments.compute())
    accuracy = RewardAccuracy()
    accuracy.update(torch.tensor([]), torch.tensor([]))
    assert math.isnan(accuracy.compute().item())


def test_validation_with_no_finite_pair_is_nan_everywhere(tmp_path):
    """All 33 validation pairs have a NaN margin: every value is NaN (none 0.0), with the pairs counted."""
    module, data = module_and_data(tmp_path, eval_batch_size=8)
    trainer = quiet_trainer(tmp_path / "run", 1, [NaNValidation({1})])
    with pytest.warns(UserWarning, match=r"No val pair was counted .* every `val/` metric is NaN"):
        (results,) = trainer.validate(module, datamodule=data)
    assert results["val/nonfinite_pairs"] == 33.0
    assert results["val/pairs"] == 0.0
    for name in VALUES:
        assert math.isnan(results[f"val/{name}"]), (name, results[f"val/{name}"])


def test_a_finite_validation_counts_its_pairs(tmp_path):
    module, data = module_and_data(tmp_path, eval_batch_size=8)
    (results,) = quiet_trainer(tmp_path / "run", 1).validate(module, datamodule=data)
    assert (results["val/pairs"], results["val/nonfinite_pairs"]) == (33.0, 0.0)
    assert all(math.isfinite(results[f"val/{name}"]) for name in VALUES)


@pytest.mark.parametrize("kind", ["lightning", "preference"])
def test_a_nan_validation_never_becomes_the_best_checkpoint(tmp_path, kind):
    """Validations after steps 1, 2 and 3; the first and the last have no finite pair. The best checkpoint is step 2
    (Lightning's ModelCheckpoint scores NaN as +inf; PreferenceCheckpoint does not even keep it as a top-k)."""
    module, data = module_and_data(tmp_path, eval_batch_size=8)
    options = {"dirpath": tmp_path / "ckpt", "monitor": "val/loss", "mode": "min", "save_top_k": 1}
    if kind == "lightning":
        checkpoint = ModelCheckpoint(filename="step={step}", auto_insert_metric_name=False, **options)
    else:
        checkpoint = PreferenceCheckpoint(save_last=False, **options)
    trainer = quiet_trainer(
        tmp_path / "run",
        3,
        [NaNValidation({1, 3}), checkpoint],
        enable_checkpointing=True,
        val_check_interval=1,
        num_sanity_val_steps=0,
    )
    with pytest.warns(UserWarning, match="No val pair was counted"):
        trainer.fit(module, datamodule=data)
    assert checkpoint.best_model_path.endswith("step=2.ckpt"), checkpoint.best_model_path
    assert math.isfinite(float(checkpoint.best_model_score))
    saved = sorted(path.name for path in (tmp_path / "ckpt").glob("*.ckpt"))
    assert saved == ["step=2.ckpt"]
    if kind == "preference":  # the NaN validation of step 1 was never a top-k checkpoint, even while alone
        assert set(checkpoint.best_k_models) == {checkpoint.best_model_path}
