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


def _commands(marker: str) -> list[list[str]]:
    """The commands of the bash block after ``<!-- marker -->``, split into words (comments dropped)."""
    import shlex

    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match, f"no bash block after <!-- {marker} --> in README.md"
    return [shlex.split(line, comments=True) for line in match.group(1).splitlines() if line.strip()]


SHORT = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.synthetic.train_size=32"]
SHORT += ["--data.synthetic.validation_size=8", "--data.batch_size=4", "--trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_sft_then_dpo_runs_as_written(tmp_path, monkeypatch):
    """The README's two commands, from a working folder holding the configs, shortened to 2 steps each: the SFT
    writes its model folder, and the DPO run starts from exactly those weights."""
    from safetensors.torch import load_file

    from betadpo_lightning.commands.cli import main as cli
    from betadpo_lightning.commands.sft_cli import main as sft

    sft_command, dpo_command = _commands("example:sft-dpo")
    assert sft_command[:4] == ["python", "-m", "betadpo_lightning.training.sft", "fit"]
    assert dpo_command[:3] == ["python", "cli.py", "fit"]
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    monkeypatch.chdir(tmp_path)
    cache = f"--data.cache_dir={tmp_path / 'cache'}"
    sft([*sft_command[3:], *SHORT, cache])
    model = tmp_path / "runs" / "synthetic_sft" / "model"
    assert (model / "config.json").is_file()
    assert (model / "tokenizer.json").is_file()
    warm = load_file(model / "model.safetensors")
    run = cli([*dpo_command[2:], *SHORT, cache])
    reference = run.model.reference_model.state_dict()
    for name, value in warm.items():  # the frozen reference is the warm start, unchanged by the DPO steps
        assert torch.equal(reference[name], value), name
    assert (tmp_path / "runs" / "synthetic_dpo" / "checkpoints" / "last.ckpt").is_file()


def test_the_cpu_ddp_command_builds_a_two_process_gloo_trainer(tmp_path, monkeypatch):
    """The README's CPU DDP command, parsed and its Trainer built (not launched): DDP over 2 CPU processes."""
    import shlex

    from lightning.pytorch.strategies import DDPStrategy

    from betadpo_lightning.commands.cli import main as cli

    text = README.read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith("python cli.py fit") and "strategy ddp" in line]
    words = shlex.split(line)
    assert words[:3] == ["python", "cli.py", "fit"]
    monkeypatch.chdir(README.parent)
    args = [*words[3:], f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    trainer = cli(args, run=False).trainer
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2
    assert trainer.strategy.root_device.type == "cpu"
    assert trainer.strategy._get_process_group_backend() == "gloo"
