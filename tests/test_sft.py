"""The supervised warm start: its loss is the NLL per chosen response token (checked against a float64
reimplementation), its validation loss is exact over the validation set, and the trained policy is written as a
transformers directory that loads back with the trained log-probs and that the preference module and CLI start from."""

from __future__ import annotations

import copy
import csv
import math
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from transformers import AutoModelForCausalLM, AutoTokenizer

from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.dataloaders import eval_loader
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.models.building import tokenizer_config_defaults
from betadpo_lightning.models.scoring import score_rows
from betadpo_lightning.training.metrics import exact_mean
from betadpo_lightning.training.module import PreferenceModule
from betadpo_lightning.training.schedulers import LinearWarmup
from betadpo_lightning.training.sft import SFTModule, chosen_rows, response_token_count
from helpers.exports import peft_loading
from helpers.trainers import quiet_trainer

ROOT = Path(__file__).parents[1]
SFT_CONFIG = ROOT / "configs" / "synthetic_sft.yaml"
DPO_CONFIG = ROOT / "configs" / "synthetic_dpo.yaml"
SFT_YAML = yaml.safe_load(SFT_CONFIG.read_text())
MODEL_CONFIG = SFT_YAML["model"]["model_config"]  # the 2-layer Llama of the synthetic configs
LR = SFT_YAML["model"]["optimizer"]["init_args"]["lr"]
TRAIN, VALIDATION = 512, 24


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreferenceDataModule:
    """The synthetic pairs, prepared once, with the synthetic configs' batch size and lengths."""
    data = PreferenceDataModule(
        synthetic=SyntheticConfig(train_size=TRAIN, validation_size=VALIDATION),
        batch_size=16,
        max_length=64,
        max_prompt_length=32,
        cache_dir=str(tmp_path_factory.mktemp("sft-cache")),
    )
    data.prepare_data()
    data.setup("fit")
    return data


def _module(data: PreferenceDataModule, **kwargs) -> SFTModule:
    """An SFTModule on the synthetic configs' Llama, built outside a Trainer (vocabulary given from the tokenizer)."""
    config = {**MODEL_CONFIG, **tokenizer_config_defaults(data.tokenizer)}
    module = SFTModule(model_config=config, **kwargs)
    module.configure_model()
    return module


def _adamw(params, lr: float = LR):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _warmup(optimizer):
    return LinearWarmup(optimizer, warmup_steps=5)


# --- independent float64 reimplementation ----------------------------------------------------------------------------


def nll_sum_and_count_f64(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Summed NLL of the chosen rows' response tokens (labels != -100, shifted by one) and their number, in float64."""
    model64 = copy.deepcopy(model).double().eval()
    pairs = batch["pair_index"].shape[0]
    keep = torch.ones(pairs, dtype=torch.bool)
    if "is_padding" in batch:
        keep = ~batch["is_padding"]
    ids, mask, labels = (batch[k][:pairs][keep] for k in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        logits = model64(input_ids=ids, attention_mask=mask).logits.double()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    predicted = targets != -100
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(picked * predicted).sum()), int(predicted.sum())


def _row_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return score_rows(model.eval(), batch, head=False).logps


# --- 1. the training loss ---------------------------------------------------------------------------------------------


def test_chosen_rows_and_token_count_on_a_collated_batch(data):
    batch = data.collate([data.splits["train"][i] for i in range(5)])
    rows = chosen_rows(batch)
    assert set(rows) == {"input_ids", "attention_mask", "labels"}
    for key, value in rows.items():
        assert torch.equal(value, batch[key][:5])
    labels = rows["labels"]
    expected = [sum(1 for t in range(1, labels.shape[1]) if labels[r, t] != -100) for r in range(5)]
    assert response_token_count(labels).tolist() == expected
    assert min(expected) > 0
    # a label at position 0 is never predicted: it does not count
    first = torch.full((1, 3), -100)
    first[0, 0] = 7
    assert response_token_count(first).tolist() == [0]


def test_training_loss_is_the_nll_per_chosen_response_token(data):
    torch.manual_seed(0)
    module = _module(data)
    batch = data.collate([data.splits["train"][i] for i in range(8)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = module.training_step(batch, 0)
    nll, tokens = nll_sum_and_count_f64(module.policy, batch)
    assert tokens > 8
    assert loss.requires_grad
    value = float(loss.detach())
    assert abs(value - nll / tokens) < 1e-5 * value
    assert value > 1.0  # a random model: far from the data, so the comparison is not of two zeros

    # the rejected rows play no part: other tokens in rows [B:] leave the loss as it was
    other = {k: v.clone() for k, v in batch.items()}
    rejected = other["attention_mask"][8:].bool()
    other["input_ids"][8:][rejected] = torch.randint(4, len(data.tokenizer), (int(rejected.sum()),))
    other["labels"][8:] = torch.where(other["labels"][8:] != -100, other["input_ids"][8:], -100)
    assert not torch.equal(other["input_ids"], batch["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = module.training_step(other, 0)
    torch.testing.assert_close(again, loss, rtol=1e-6, atol=1e-6)

    # and the gradient is that of the chosen rows alone
    loss.backward()
    grads = [p.grad.clone() for p in module.policy.parameters()]
    module.policy.zero_grad()
    chosen_only = {**chosen_rows(batch), "pair_index": batch["pair_index"]}
    nll_rows = -score_rows(module.policy, chosen_only, head=False).logps.sum()
    (nll_rows / tokens).backward()
    for got, expected in zip(grads, (p.grad for p in module.policy.parameters()), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


# --- 2. the validation loss -------------------------------------------------------------------------------------------


def _validate(module: SFTModule, data: PreferenceDataModule, tmp_path: Path) -> float:
    trainer = quiet_trainer(tmp_path, 1)
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    return metrics["val/loss"]


def _eval_batches(data: PreferenceDataModule, size: int) -> PreferenceDataModule:
    """The same prepared data with another validation batch size."""
    other = copy.copy(data)
    other.eval_batch_size = size
    return other


def test_val_loss_is_the_token_weighted_mean_over_the_validation_set(data, tmp_path):
    torch.manual_seed(1)
    module = _module(data)
    validation = data.splits["validation"]
    whole = data.collate([validation[i] for i in range(len(validation))])
    nll, tokens = nll_sum_and_count_f64(module.policy, whole)
    values = [_validate(module, _eval_batches(data, size), tmp_path) for size in (5, 16)]
    for value in values:
        assert abs(value - nll / tokens) < 1e-6 * nll / tokens
    # the batch means differ, so a mean of batch means would not give it
    batch_means = []
    for start in range(0, len(validation), 5):
        part = data.collate([validation[i] for i in range(start, min(start + 5, len(validation)))])
        n, t = nll_sum_and_count_f64(module.policy, part)
        batch_means.append(n / t)
    assert abs(sum(batch_means) / len(batch_means) - nll / tokens) > 1e-4


def test_padding_pairs_count_in_no_validation_loss(data):
    """Two ranks' shares of an odd number of pairs: the repeated pair (is_padding) is left out, also when it is
    alone in its batch (the model still runs on it, as a sharded model must on every rank)."""
    torch.manual_seed(2)
    module = _module(data)
    validation = data.splits["validation"].select(range(21))  # rank 1: 10 pairs, then a batch of one repeated pair
    metric = exact_mean()
    flagged, alone = 0, 0
    with torch.no_grad():
        for rank in (0, 1):
            for batch in eval_loader(validation, 5, data.collate, num_replicas=2, rank=rank):
                flagged += int(batch["is_padding"].sum())
                alone += int(bool(batch["is_padding"].all()))
                nll, tokens = module.response_nll(batch)
                metric.update((nll / tokens.clamp(min=1)).reshape(1), weight=tokens.reshape(1).double())
    assert (flagged, alone) == (1, 1)
    whole = data.collate([validation[i] for i in range(len(validation))])
    nll, tokens = nll_sum_and_count_f64(module.policy, whole)
    assert int(metric.weight) == tokens
    assert abs(float(metric.compute()) - nll / tokens) < 1e-6 * nll / tokens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compute before update
        assert math.isnan(float(exact_mean().compute()))  # nothing to average: NaN, never 0


# --- 3. a short fit and the written model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """30 steps of the config's optimizer on the synthetic pairs; the model written to output_dir."""
    root = tmp_path_factory.mktemp("sft-fit")
    pl.seed_everything(0, verbose=False)
    output = root / "model"
    module = SFTModule(model_config=dict(MODEL_CONFIG), optimizer=_adamw, scheduler=_warmup, output_dir=str(output))
    before = quiet_trainer(root, 1).validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer = quiet_trainer(root, 30, gradient_clip_val=10.0, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    after = quiet_trainer(root, 1).validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    return module, output, before, after


def test_short_fit_lowers_val_loss(trained):
    _, _, before, after = trained
    assert after < before - 0.2, (before, after)


def test_output_dir_loads_with_transformers_and_gives_the_trained_logps(trained, data):
    module, output, _, _ = trained
    assert (output / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(output))
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    assert tokenizer.get_vocab() == data.tokenizer.get_vocab()
    assert tokenizer.chat_template == data.tokenizer.chat_template
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == data.tokenizer.pad_token_id
    validation = data.splits["validation"]
    batch = data.collate([validation[i] for i in range(8)])
    torch.testing.assert_close(_row_logps(model, batch), _row_logps(module.policy, batch), rtol=0, atol=1e-5)
    for name, value in module.policy.named_parameters():
        assert torch.equal(model.get_parameter(name), value.detach()), name


def test_preference_module_starts_from_the_output_dir(trained):
    _, output, _, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    module = PreferenceModule(model_name_or_path=str(output))
    module.configure_model()
    assert module.policy.config.vocab_size == len(tokenizer)
    assert module.policy.get_input_embeddings().weight.shape[0] == len(tokenizer)
    saved = AutoModelForCausalLM.from_pretrained(str(output))
    for name, value in saved.named_parameters():
        assert torch.equal(module.policy.get_parameter(name), value), name


def test_sft_config_has_the_preference_configs_model():
    dpo = yaml.safe_load(DPO_CONFIG.read_text())
    assert SFT_YAML["model"]["model_config"] == dpo["model"]["model_config"]
    assert SFT_YAML["data"]["max_length"] == dpo["data"]["max_length"]
    assert SFT_YAML["data"]["max_prompt_length"] == dpo["data"]["max_prompt_length"]
    assert SFT_YAML["data"]["dataset"] == dpo["data"]["dataset"] == "synthetic"


def test_preference_cli_loads_the_sft_model(trained):
    from betadpo_lightning.commands.cli import main

    _, output, _, _ = trained
    on_cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false"]
    args = ["--config", str(DPO_CONFIG), *on_cpu, "--model.model_config", "null"]
    cli = main([*args, "--model.model_name_or_path", str(output)], run=False)
    model, data = cli.model, cli.datamodule
    assert model.hparams.model_name_or_path == str(output)
    assert model.hparams.model_config is None
    assert data.tokenizer_name == str(output)  # the SFT model's own tokenizer
    model.configure_model()
    saved = AutoModelForCausalLM.from_pretrained(str(output))
    for name, value in saved.named_parameters():
        assert torch.equal(model.policy.get_parameter(name), value), name
    assert model.policy.config.vocab_size == len(data._load_tokenizer(warn=False))


def test_written_config_keeps_the_models_dropout(data, tmp_path):
    config = {**MODEL_CONFIG, **tokenizer_config_defaults(data.tokenizer), "attention_dropout": 0.25}
    module = SFTModule(model_config=config)
    module.configure_model()
    assert module.policy.config.attention_dropout == 0.0  # disabled in training
    out = module.save_pretrained(tmp_path / "model", data.tokenizer)
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.attention_dropout == 0.25
    assert module.policy.config.attention_dropout == 0.0


def test_save_pretrained_replaces_a_model_directory_whole_and_refuses_other_files(data, tmp_path):
    """The directory is written beside the destination and moved into place: a save that fails midway leaves the
    earlier model directory as it was, and a directory holding other files is refused, naming them."""
    module = _module(data)
    out = module.save_pretrained(tmp_path / "model", data.tokenizer)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    class FailingTokenizer:
        def save_pretrained(self, folder: str) -> None:
            (Path(folder) / "tokenizer.json").write_text("{")  # a partial write, then the failure
            raise OSError("disk full")

    with torch.no_grad():
        next(module.policy.parameters()).add_(1.0)  # the new weights differ from the saved ones
    with pytest.raises(OSError, match="disk full"):
        module.save_pretrained(out, FailingTokenizer())
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging folder left behind

    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that a model directory does not: notes\.txt"):
        module.save_pretrained(out, data.tokenizer)
    assert (out / "notes.txt").read_text() == "mine"


# --- 4. the command line ----------------------------------------------------------------------------------------------


def test_cli_fit_writes_the_model_and_a_csv_log(tmp_path):
    from betadpo_lightning.commands.sft_cli import main

    args = ["fit", "--config", str(SFT_CONFIG), "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path)]
    args += ["--model.output_dir", str(tmp_path / "model"), "--data.synthetic.train_size", "64"]
    args += ["--data.synthetic.validation_size", "16", "--trainer.val_check_interval", "3"]
    args += ["--trainer.enable_progress_bar", "false", "--data.cache_dir", str(tmp_path / "cache")]
    args += ["--trainer.log_every_n_steps", "1"]
    cli = main(args)
    assert isinstance(cli.model, SFTModule)
    assert cli.trainer.global_step == 3
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == MODEL_CONFIG["hidden_size"]
    (metrics,) = (tmp_path / "logs").glob("version_*/metrics.csv")
    with metrics.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len([row for row in rows if row.get("train/loss")]) == 3
    assert len([row for row in rows if row.get("val/loss")]) == 1


def test_module_help_runs():
    result = subprocess.run(
        [sys.executable, "-m", "betadpo_lightning.training.sft", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout


# --- 5. refused options -----------------------------------------------------------------------------------------------


def test_refused_options():
    with pytest.raises(ValueError, match="exactly one of `model_name_or_path` and `model_config`"):
        SFTModule(model_name_or_path="x", model_config=dict(MODEL_CONFIG))
    with pytest.raises(ValueError, match="exactly one of `model_name_or_path` and `model_config`"):
        SFTModule()
    with pytest.raises(ValueError, match=r"head.*'bogus'"):
        SFTModule(model_config=dict(MODEL_CONFIG), head="bogus")


def test_cli_names_the_refused_option(capsys, tmp_path):
    from betadpo_lightning.commands.sft_cli import main

    base = ["--config", str(SFT_CONFIG), "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--model.head", "bogus"], run=False)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "model.head" in error
    assert "bogus" in error
    with pytest.raises(SystemExit) as exit_info:  # the config has a model_config
        main([*base, "--model.model_name_or_path", str(tmp_path)], run=False)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "model.model_name_or_path: Give exactly one of `model_name_or_path` and `model_config`" in error
    assert len(error.strip().splitlines()) <= 3
    assert "Traceback" not in error
    with pytest.raises(SystemExit) as exit_info:  # the optimizer is model.optimizer, as in the preference CLI
        main([*base, "--optimizer", "torch.optim.SGD"], run=False)
    assert exit_info.value.code == 2
    assert "model.optimizer" in capsys.readouterr().err


def test_output_dir_is_refused_under_a_sharded_strategy(tmp_path):
    from lightning.pytorch.strategies import ModelParallelStrategy

    module = SFTModule(model_config=dict(MODEL_CONFIG), output_dir=str(tmp_path / "model"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=ModelParallelStrategy(), logger=False)
    module.trainer = trainer
    with pytest.raises(MisconfigurationException, match="ModelParallelStrategy shards it"):
        module.setup("fit")
    module.hparams.output_dir = None
    module.setup("fit")  # without an output directory the strategy is fine


# --- 6. LoRA ----------------------------------------------------------------------------------------------------------


def test_lora_policy_is_written_merged(data, tmp_path):
    pytest.importorskip("peft")
    with peft_loading():
        module = _module(data, lora={"r": 4, "lora_alpha": 8})
        lora_b = [p for name, p in module.policy.named_parameters() if "lora_B" in name]
        assert lora_b
        assert all(p.requires_grad for p in lora_b)
        with torch.no_grad():  # as after training: adapters that change the outputs (lora_B starts at zero)
            for p in lora_b:
                p.normal_(0.0, 0.2)
        out = module.save_pretrained(tmp_path / "merged", data.tokenizer)
    assert not (out / "adapter_config.json").exists()
    assert (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in name for name, _ in model.named_parameters())
    validation = data.splits["validation"]
    batch = data.collate([validation[i] for i in range(8)])
    trained = _row_logps(module.policy, batch)
    torch.testing.assert_close(_row_logps(model, batch), trained, rtol=0, atol=1e-4)
    with module.policy.disable_adapter():  # the adapters matter: the base model alone gives other log-probs
        assert (_row_logps(module.policy, batch) - trained).abs().max() > 1e-2
    assert hasattr(module.policy, "peft_config")  # the module keeps its adapters (the merge was of a copy)
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == data.tokenizer.get_vocab()
