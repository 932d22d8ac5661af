"""The step progress bar: on a terminal one bar of optimizer steps; piped to a file, one plain line per logging step
and one per validation, and no bar redrawn as new lines."""

from __future__ import annotations

import re

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from betadpo_lightning.commands.progress import StepProgressBar


class _Logged(BoringModel):
    """Logs ``train/loss`` on the progress bar at every step (the value is the step) and ``val/loss`` at validation."""

    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.log("train/loss", float(self.trainer.global_step + 1), prog_bar=True)
        return output

    def on_validation_epoch_end(self):
        self.log("val/loss", torch.tensor(0.25))


def _fit(tmp_path, bar: StepProgressBar, max_steps: int = 6, ckpt_path=None, **kwargs) -> pl.Trainer:
    options = {"val_check_interval": 3, "check_val_every_n_epoch": None, "limit_val_batches": 1}
    options.update({"enable_checkpointing": False, "num_sanity_val_steps": 1, **kwargs})
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=max_steps,
        log_every_n_steps=2,
        callbacks=[bar],
        logger=False,
        enable_model_summary=False,
        **options,
    )
    trainer.fit(_Logged(), ckpt_path=ckpt_path)
    return trainer


def test_plain_lines_one_per_logging_step(tmp_path, capsys):
    _fit(tmp_path, StepProgressBar(plain=True))
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.strip().splitlines()
    pattern = r"step (\d)/6 \(\d+%\) elapsed \d\d:\d\d, left \d\d:\d\d, [\d.]+ (step/s|s/step), train/loss=(\d)"
    steps = [re.fullmatch(pattern, line) for line in lines if line.startswith("step ")]
    assert all(steps), lines
    assert [(m.group(1), m.group(3)) for m in steps] == [("2", "2"), ("4", "4"), ("6", "6")]  # this step's value
    assert [line for line in lines if line.startswith("validation")] == [
        "validation at step 3: val/loss=0.25",
        "validation at step 6: val/loss=0.25",
    ]
    assert len(lines) == 5  # nothing else: no sanity check or validation bars


def test_plain_lines_of_a_resumed_run_start_at_its_step(tmp_path, capsys):
    first = _fit(tmp_path, StepProgressBar(plain=True), 4, limit_val_batches=0)
    checkpoint = tmp_path / "step4.ckpt"
    first.save_checkpoint(checkpoint)
    capsys.readouterr()
    _fit(tmp_path / "resumed", StepProgressBar(plain=True), 7, ckpt_path=checkpoint, limit_val_batches=0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["step 6/7", "step 7/7"]  # logging steps, and the last


def test_terminal_bar_counts_steps(tmp_path, capsys):
    _fit(tmp_path, StepProgressBar(plain=False))
    out = capsys.readouterr().out
    assert "step 6/6 100%" in out
    assert "v_num" not in out
