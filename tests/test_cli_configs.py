"""Every YAML in configs/ parses and instantiates for real (a local model directory stands in for the hub model);
the CLI's links and defaults; the quickstart runs end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.commands.cli import main
from betadpo_lightning.core.controllers import BetaDPOController, ConstantBetaController, EpsilonBetaController
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.training.module import PreferenceModule

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.stem.endswith("_sft"))  # SFT: test_sft.py
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.num_nodes=1"]
ON_CPU += ["--trainer.precision=32-true", "--trainer.logger=false"]


def _cli(args: list[str]):
    return main(args, run=False)  # run=False: no subcommand, classes and Trainer instantiated


def _beta_callbacks(trainer) -> list[DynamicBetaCallback]:
    return [c for c in trainer.callbacks if isinstance(c, DynamicBetaCallback)]


def test_configs_exist():
    names = {path.name for path in CONFIGS}
    assert "quickstart.yaml" in names
    assert len(names) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_instantiates(path, tiny_model_dir):
    """The GPU settings are overridden to CPU and a hub model by a local directory; everything else is the file's."""
    args = ["--config", str(path), *ON_CPU]
    hub_model = "model_name_or_path:" in path.read_text()
    if hub_model:
        args.append(f"--model.model_name_or_path={tiny_model_dir}")
    cli = _cli(args)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, PreferenceModule)
    assert isinstance(data, PreferenceDataModule)
    (callback,) = _beta_callbacks(cli.trainer)  # the `dynamic_beta:` section is a Trainer callback
    assert isinstance(callback.controller, BetaDPOController | ConstantBetaController | EpsilonBetaController)
    assert callback.controller.beta == model.beta  # β0 written once, linked
    assert data.tokenizer_name == model.hparams.model_name_or_path  # the model's own tokenizer by default
    assert cli.config["trainer"]["max_steps"] > 0 or cli.config["trainer"]["max_epochs"]
    if hub_model:  # the real loading path: from_pretrained on a directory
        model.configure_model()
        assert model.policy.training
        if model.reference is not None:
            assert not model.reference.training
            assert all(not p.requires_grad for p in model.reference.parameters())
        else:  # the base model with its adapters disabled is the reference
            assert hasattr(model.policy, "disable_adapter")
        assert model.policy.config.vocab_size == len(data._load_tokenizer(warn=False))


def test_beta0_is_written_once_and_the_controller_is_chosen_by_class_path():
    cli = _cli(["--config", str(QUICKSTART), *ON_CPU, "--model.beta=0.3", "--dynamic_beta.controller.rho=0.4"])
    (callback,) = _beta_callbacks(cli.trainer)
    assert (callback.controller.beta, callback.controller.rho) == (0.3, 0.4)
    cli = _cli(
        [
            "--config",
            str(QUICKSTART),
            *ON_CPU,
            "--model.beta=0.2",
            "--dynamic_beta.controller=betadpo_lightning.core.controllers.ConstantBetaController",
        ]
    )
    (callback,) = _beta_callbacks(cli.trainer)
    assert type(callback.controller) is ConstantBetaController
    assert callback.controller.beta == 0.2


def test_null_section_trains_without_the_callback(tmp_path):
    settings = yaml.safe_load(QUICKSTART.read_text())
    settings["dynamic_beta"] = None
    config = tmp_path / "dpo.yaml"
    config.write_text(yaml.safe_dump(settings))
    cli = _cli(["--config", str(config), *ON_CPU])
    assert _beta_callbacks(cli.trainer) == []
    assert cli.model.beta_provider is cli.model.static_beta
    assert cli.config["dynamic_beta"] is None  # and so in the saved config.yaml


def test_tokenizer_can_be_set_on_its_own(tiny_model_dir, bpe_tokenizer_dir):
    path = ROOT / "configs" / "hh_pythia410m_dpo.yaml"
    cli = _cli(["--config", str(path), *ON_CPU, f"--data.tokenizer={bpe_tokenizer_dir}"])
    assert cli.datamodule.tokenizer_name == str(bpe_tokenizer_dir)
    assert cli.model.hparams.model_name_or_path == "EleutherAI/pythia-410m"


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--dynamic_beta.controller" in out
    assert "--model.loss" in out
    assert "--model.reference" in out


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    args = ["fit", "--config", str(QUICKSTART), f"--data.cache_dir={tmp_path / 'cache'}"]
    args += [f"--trainer.default_root_dir={tmp_path}"]
    args += ["--trainer.enable_progress_bar=false"]
    cli = main(args)
    trainer = cli.trainer
    assert trainer.global_step == 300
    metrics = trainer.callback_metrics
    assert metrics["val/rewards/accuracies"].item() > 0.7  # chance is 0.5
    assert torch.isfinite(metrics["train/loss"])
    rows = list(csv.DictReader(next(tmp_path.glob("logs/version_*/metrics.csv")).open()))
    accuracies = [float(r["val/rewards/accuracies"]) for r in rows if r.get("val/rewards/accuracies")]
    assert len(accuracies) == 3  # validation every 100 steps
    assert len([r for r in rows if r.get("train/beta")]) == 30  # every 10 optimizer steps
    assert len([r for r in rows if r.get("train/loss")]) == 30
    assert {p.name for p in tmp_path.glob("checkpoints/*.ckpt")} == {
        "step=100.ckpt",
        "step=200.ckpt",
        "step=300.ckpt",
        "last.ckpt",
    }


def test_print_config_shows_the_resolved_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--dynamic_beta.controller.rho", "0.3", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "rho: 0.3" in out
    assert "class_path: betadpo_lightning.core.controllers.BetaDPOController" in out
    assert "class_path: betadpo_lightning.training.schedulers.LinearWarmup" in out
    assert "model_type: llama" in out


@pytest.mark.parametrize("optimizer", ["bitsandbytes.optim.AdamW8bit", "bitsandbytes.optim.PagedAdamW"])
def test_bitsandbytes_optimizers_are_selectable_in_yaml(optimizer):
    import importlib

    cli = _cli(["--config", str(QUICKSTART), *ON_CPU, f"--model.optimizer={optimizer}", "--model.optimizer.lr=1e-3"])
    params = [torch.nn.Parameter(torch.zeros(2))]
    built = cli.model.optimizer_factory(params)
    module_name, name = optimizer.rsplit(".", 1)
    assert isinstance(built, getattr(importlib.import_module(module_name), name))
    assert built.param_groups[0]["lr"] == 1e-3


REAL_DATA = [path for path in CONFIGS if path.name.startswith(("hh_", "ultrafeedback_"))]


def _quirky_rows(path: Path, fixtures_dir: Path) -> tuple[list[dict], str]:
    """The config's real-shaped fixture plus the real rows that once aborted it, and the reason they are skipped.

    HH-RLHF: a blank answer after the last shared "Assistant:". UltraFeedback: a pair whose two answers are the same.
    """
    if path.name.startswith("hh_"):
        rows = [json.loads(line) for line in (fixtures_dir / "hh_rlhf.jsonl").read_text().splitlines()]
        turn = "\n\nHuman: Thanks!\n\nAssistant:"
        return [*rows, {"chosen": turn + " ", "rejected": turn + " You are welcome."}], "empty_text"
    rows = [json.loads(line) for line in (fixtures_dir / "ultrafeedback.jsonl").read_text().splitlines()]
    return [*rows, {**rows[0], "rejected": rows[0]["chosen"]}], "identical_pair"


@pytest.mark.parametrize("path", REAL_DATA, ids=lambda p: p.name)
def test_real_data_configs_skip_and_count_real_quirks(path, tiny_model_dir, fixtures_dir, tmp_path):
    """Each HH-RLHF and UltraFeedback config, its data section as shipped (split names aside), prepares data that
    holds the real rows that used to abort the run in `prepare_data`: they are skipped and counted."""
    rows, reason = _quirky_rows(path, fixtures_dir)
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    args = ["--config", str(path), *ON_CPU, f"--data.dataset={source}", "--data.train_split=train"]
    args += ["--data.val_split=null", "--data.num_proc=null", f"--data.cache_dir={tmp_path / 'cache'}"]
    if "model_name_or_path:" in path.read_text():
        args.append(f"--model.model_name_or_path={tiny_model_dir}")
    data = _cli(args).datamodule
    assert data.spec.on_bad_row == "skip"
    data.prepare_data()
    with pytest.warns(UserWarning, match=rf"skipped {reason}=1"):
        data.setup("fit")
    assert data.stats["train"].skipped == {reason: 1}
    assert data.stats["train"].kept == len(rows) - 1


def test_multi_node_overrides_of_the_readme_parse(capsys):
    """The README's multi-node lines override the FSDP2 config's nodes, accumulation and data-parallel size."""
    config = ROOT / "configs" / "hh_pythia410m_beta_dpo_fsdp.yaml"
    args = ["fit", "--config", str(config), "--trainer.num_nodes=2", "--trainer.accumulate_grad_batches=1"]
    args += ["--trainer.strategy.init_args.data_parallel_size=8", "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    trainer = printed["trainer"]
    assert trainer["num_nodes"] == 2
    assert trainer["accumulate_grad_batches"] == 1
    assert trainer["strategy"]["class_path"].endswith("ModelParallelStrategy")
    assert trainer["strategy"]["init_args"]["data_parallel_size"] == 8
    assert trainer["strategy"]["init_args"]["tensor_parallel_size"] == 1
