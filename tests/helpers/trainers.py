"""A quiet CPU Trainer for tests: no logger, checkpointing, progress bar or model summary unless asked for."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl


def quiet_trainer(tmp_path, max_steps: int, callbacks: Sequence[pl.Callback] = (), **overrides) -> pl.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return pl.Trainer(callbacks=list(callbacks), **{**settings, **overrides})
