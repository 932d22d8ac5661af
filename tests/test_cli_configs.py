"""Every YAML in configs/ parses and instantiates; `--help` works; the quickstart runs end to end."""

from __future__ import annotations

import csv
from pathlib import Path
from unittest import mock

import pytest
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.cli import main
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.module import PreferenceModule
from helpers.tiny import TINY_LLAMA

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def _tiny_from_pretrained(name, **kwargs):
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_LLAMA))


def test_configs_exist():
    names = {path.name for path in CONFIGS}
    assert "quickstart.yaml" in names
    assert len(names) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_instantiates(path):
    # The Trainer of a GPU config cannot start on a CPU-only machine; everything else is built for real.
    with mock.patch("lightning.pytorch.cli.LightningCLI.instantiate_trainer", return_value=mock.MagicMock()):
        cli = main(["--config", str(path)], run=False)  # run=False: no subcommand
    model, data = cli.model, cli.datamodule
    assert isinstance(model, PreferenceModule)
    assert isinstance(data, PreferenceDataModule)
    callback = cli.config_init["beta"]  # the top-level `beta:` section, handed to the Trainer as a callback
    assert isinstance(callback, DynamicBetaCallback)
    assert callback.controller.beta == model.beta  # linked: written once
    assert data.tokenizer_name == model.hparams.model_name_or_path  # linked: written once
    assert cli.config["trainer"]["max_steps"] > 0 or cli.config["trainer"]["max_epochs"]
    if model.hparams.model_name_or_path is not None:
        # Load the "hub" model through the real code path, with the download replaced by a tiny model.
        with mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=_tiny_from_pretrained) as load:
            model.configure_model()
        load.assert_called_once()
        assert load.call_args.args[0] == model.hparams.model_name_or_path
        assert not model.reference.training
        assert all(not p.requires_grad for p in model.reference.parameters())


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--beta.rho" in out
    assert "--model.loss_type" in out


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    args = ["fit", "--config", str(config), f"--data.cache_dir={tmp_path / 'cache'}"]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"]
    args += ["--trainer.enable_progress_bar=false"]
    cli = main(args)
    trainer = cli.trainer
    assert trainer.global_step == 300
    metrics = trainer.callback_metrics
    assert metrics["val/rewards/accuracies"].item() > 0.7  # chance is 0.5
    assert torch.isfinite(metrics["train/loss"])
    rows = list(csv.DictReader(next(tmp_path.glob("quickstart/version_*/metrics.csv")).open()))
    accuracies = [float(r["val/rewards/accuracies"]) for r in rows if r.get("val/rewards/accuracies")]
    assert len(accuracies) == 3  # validation every 100 steps
    assert any(r.get("train/beta") for r in rows)
    assert list(tmp_path.glob("quickstart/version_*/checkpoints/*.ckpt"))


def test_print_config_shows_the_resolved_values(capsys):
    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--beta.rho", "0.3", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "rho: 0.3" in out
    assert "class_path: betadpo_lightning.schedulers.LinearWarmup" in out
    assert "model_type: llama" in out
