"""Checkpoints that exist: every N steps and at the end of every fit, in `<default_root_dir>/checkpoints`, so that
`--ckpt_path last` resumes the previous run of a config and `--trainer.default_root_dir` moves logs and checkpoints."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from betadpo_lightning.commands.cli import main

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _fit(run: Path, cache: Path, *extra: str) -> None:
    args = ["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={run}", f"--data.cache_dir={cache}"]
    args += ["--data.synthetic.train_size=64", "--data.synthetic.validation_size=8", "--trainer.val_check_interval=4"]
    args += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]
    main(args)


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _logged_steps(version: Path) -> list[int]:
    with open(version / "metrics.csv", newline="") as handle:
        return sorted({int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")})


def test_short_run_leaves_last_and_resume_last_continues(tmp_path):
    """max_steps 3 with checkpoints every 100 steps still writes last.ckpt at step 3; a second run of the same config
    with `--ckpt_path last` starts from it (its logged steps follow step 3) and writes last.ckpt at step 6."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    _fit(run, cache, "--trainer.max_steps=3", "--trainer.log_every_n_steps=1")
    last = run / "checkpoints" / "last.ckpt"
    assert _step(last) == 3
    assert not list((run / "checkpoints").glob("step=*.ckpt"))  # every_n_train_steps is 100
    assert _logged_steps(run / "logs" / "version_0") == [0, 1, 2]
    _fit(run, cache, "--trainer.max_steps=6", "--trainer.log_every_n_steps=1", "--ckpt_path=last")
    assert _step(last) == 6
    assert _logged_steps(run / "logs" / "version_1") == [3, 4, 5]


def test_step_checkpoints_without_validation(tmp_path):
    """every_n_train_steps saves step=N.ckpt whether or not validation runs (here it never does)."""
    run = tmp_path / "elsewhere"
    _fit(run, tmp_path / "cache", "--trainer.max_steps=5", "--trainer.limit_val_batches=0",
         "--trainer.callbacks+=betadpo_lightning.callbacks.PreferenceCheckpoint",
         "--trainer.callbacks.every_n_train_steps=2")  # fmt: skip
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert {"step=2.ckpt", "step=4.ckpt", "last.ckpt"} <= set(names)
    assert _step(run / "checkpoints" / "last.ckpt") == 5
