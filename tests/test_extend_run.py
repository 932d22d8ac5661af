"""A finished run extended with a larger ``max_steps`` (``--ckpt_path last``) goes on exactly as an uninterrupted run:
the same weights and every log row once, whether the first run stopped in the middle of an epoch (right after a
validation) or at its end.

The first run's ``last.ckpt`` is written at the end of its last step, while Lightning still counts the epoch as
running; written after the fit (when Lightning has marked the cut-short epoch as finished) the extended run started
the next epoch, trained on other batches and logged at shifted steps.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from betadpo_lightning.commands.cli import main

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TOTAL = 20  # 40 pairs in batches of 4: 10 steps per epoch
# The training values are logged over windows of log_every_n_steps steps, which a checkpoint does not keep: the first
# run stops at the end of a window.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _config(folder: Path) -> Path:
    """The quickstart without sample generations: its step checkpoints come every 100 steps, so each fit of a few
    steps writes only ``last.ckpt`` at its end."""
    settings = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    settings["trainer"]["callbacks"] = settings["trainer"]["callbacks"][:1]
    assert settings["trainer"]["callbacks"][0]["init_args"] == {"every_n_train_steps": 100}
    settings["model"]["scheduler"]["init_args"]["warmup_steps"] = 5
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def _fit(root: Path, steps: int, *extra: str) -> None:
    args = ["fit", "--config", str(_config(root.parent)), f"--trainer.default_root_dir={root}"]
    args += [f"--data.cache_dir={root.parent.parent / 'cache'}", "--data.synthetic.train_size=40"]
    args += ["--data.synthetic.validation_size=8", "--data.batch_size=4", "--trainer.val_check_interval=4"]
    args += ["--trainer.log_every_n_steps=2", "--trainer.enable_progress_bar=false"]
    main([*args, "--trainer.enable_model_summary=false", f"--trainer.max_steps={steps}", *extra])


def _rows(root: Path) -> Counter:
    """Every logged value of every log version: (epoch, step, metric, value), counted."""
    rows: Counter = Counter()
    for version in sorted((root / "logs").glob("version_*")):
        with open(version / "metrics.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                values = {k: v for k, v in row.items() if v and k not in ("epoch", "step")}
                rows.update((int(row["epoch"]), int(row["step"]), k, round(float(v), 5)) for k, v in values.items())
    return rows


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extend") / "whole" / "run"
    _fit(root, TOTAL)
    return root


@pytest.mark.parametrize("first", [12, 10], ids=["mid-epoch-after-validation", "epoch-end"])
def test_a_finished_run_extended_equals_an_uninterrupted_one(uninterrupted, tmp_path, first):
    root = tmp_path / "extended" / "run"
    _fit(root, first)
    _fit(root, TOTAL, "--ckpt_path=last")
    extended, whole = _weights(root), _weights(uninterrupted)
    assert extended.keys() == whole.keys()
    difference = max((extended[k].float() - whole[k].float()).abs().max().item() for k in whole)
    assert difference <= 1e-6  # float32 rounding at most (the run that started a new epoch was off by ~1e-3)
    rows, expected = _rows(root), _rows(uninterrupted)
    assert max(rows.values()) == 1  # no row twice
    assert rows == expected  # every row, at the same epoch and step, with the same value
    assert {step for _, step, name, _ in rows if name == "train/loss"} == set(range(1, TOTAL, 2))
