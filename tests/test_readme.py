"""The README's example of the callback in another project runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).parents[1] / "README.md"


def _example(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match, f"no python block after <!-- {marker} --> in README.md"
    return match.group(1)


def test_callback_example_runs_and_learns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(_example("example:callback"), "README.md", "exec"), namespace)
    trainer, callback = namespace["trainer"], namespace["callback"]
    metrics = trainer.callback_metrics
    assert metrics["val/rewards/accuracies"].item() > 0.6  # the toy task is learnable; chance is 0.5
    assert callback.controller.num_steps == trainer.global_step == 3 * 14
    assert {"train/beta", "train/beta/kept_fraction", "val/margins/mean", "train/rewards/accuracies"} <= set(metrics)
    assert metrics["train/beta/kept_fraction"].item() == pytest.approx(25 / 32)  # k = ⌊32 · 0.8⌋ = 25
    assert torch.isfinite(metrics["train/beta"])
    assert "val/rewards/accuracies" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing written to the working directory
