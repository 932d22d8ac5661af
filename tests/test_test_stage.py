"""``trainer.test`` (and ``cli.py test``) evaluates like validation: same loss and metrics, under ``test/``."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.commands.cli import main
from betadpo_lightning.core.controllers import BetaDPOController
from helpers.evaluation import Perturb, module_and_data
from helpers.trainers import quiet_trainer

METRICS = (
    "loss",
    "nonfinite_pairs",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "margins/mean",
    "margins/std",
)
QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


def _evaluate(
    tmp_path: Path, stage: str, callback: bool, eval_batch_size: int = 16, **trainer_kwargs
) -> dict[str, float]:
    """``trainer.validate`` or ``trainer.test`` of a randomly initialised (seed 0) policy, perturbed from its
    reference, on the 33 validation pairs (there is no test split); values by metric name, without the prefix."""
    module, data = module_and_data(tmp_path, eval_batch_size)
    callbacks = [DynamicBetaCallback(BetaDPOController(beta=0.1))] if callback else []
    trainer = quiet_trainer(tmp_path / f"{stage}{callback}", 1, [*callbacks, Perturb()], **trainer_kwargs)
    run = trainer.test if stage == "test" else trainer.validate
    (results,) = run(module, datamodule=data)
    prefix = "test/" if stage == "test" else "val/"
    assert not any(key.startswith("test/" if stage == "val" else "val/") for key in results)
    return {name: float(results[prefix + name]) for name in METRICS}


@pytest.mark.parametrize("callback", [False, True], ids=["module", "callback"])
def test_test_gives_the_validation_values(tmp_path, callback):
    """Without a test split, ``test`` evaluates the validation split: every metric of ``validate`` under ``test/``
    (at another batch size: both are exact means over the pairs), whoever logs the metrics."""
    validated = _evaluate(tmp_path, "val", callback, eval_batch_size=16)
    tested = _evaluate(tmp_path, "test", callback, eval_batch_size=5)
    assert 0.0 < tested["rewards/accuracies"] < 1.0  # not a degenerate case
    assert tested["margins/std"] > 0.0
    assert tested["nonfinite_pairs"] == 0.0
    for name in METRICS:
        assert tested[name] == pytest.approx(validated[name], rel=1e-5, abs=1e-6), name


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in spawned processes")
def test_two_rank_test_gives_the_single_process_values(tmp_path):
    """33 pairs on 2 ranks (17 and 16 + 1 flagged padding) give the values of one process."""
    single = _evaluate(tmp_path / "one", "test", callback=True, eval_batch_size=5)
    double = _evaluate(tmp_path / "two", "test", callback=True, eval_batch_size=5, devices=2, strategy="ddp_spawn")
    for name in METRICS:
        assert double[name] == pytest.approx(single[name], rel=1e-5, abs=1e-6), name


def _cli(command: str, root: Path, *extra: str) -> None:
    main(
        [
            command,
            "--config",
            QUICKSTART,
            f"--trainer.default_root_dir={root}",
            f"--data.cache_dir={root / 'data'}",
            "--data.synthetic.train_size=64",
            "--data.synthetic.validation_size=16",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            *extra,
        ]
    )


def _logged_test_values(root: Path) -> dict[str, float]:
    """The ``test/`` values of the newest CSV log under ``root``."""
    logs = sorted((root / "logs").glob("version_*"), key=lambda path: int(path.name.split("_")[1]))
    with open(logs[-1] / "metrics.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return {key: float(value) for row in rows for key, value in row.items() if key.startswith("test/") and value}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_test_logs_the_test_metrics_also_from_the_last_checkpoint(tmp_path):
    """``cli.py test`` on the quickstart evaluates the initial policy; after a short ``fit``, ``--ckpt_path last``
    evaluates the trained one."""
    _cli("test", tmp_path)
    initial = _logged_test_values(tmp_path)
    assert {f"test/{name}" for name in METRICS} <= set(initial)
    assert 0.0 <= initial["test/rewards/accuracies"] <= 1.0
    fit = ["--trainer.max_steps=3", "--trainer.val_check_interval=3", "--model.scheduler.init_args.warmup_steps=0"]
    _cli("fit", tmp_path, *fit)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    _cli("test", tmp_path, "--ckpt_path", "last")
    trained = _logged_test_values(tmp_path)
    assert {f"test/{name}" for name in METRICS} <= set(trained)
    assert trained["test/loss"] != initial["test/loss"]  # the checkpoint's weights, not the initial ones
