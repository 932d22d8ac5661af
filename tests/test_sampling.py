"""SampleGenerations: fixed held-out prompts, the current policy's responses, gold rewards; training undisturbed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from betadpo_lightning.callbacks import DynamicBetaCallback, SampleGenerations
from betadpo_lightning.commands.cli import main
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.synthetic import SyntheticConfig, gold_reward
from betadpo_lightning.models.generation import next_tokens, until_eos
from betadpo_lightning.training.module import PreferenceModule
from helpers.trainers import quiet_trainer

CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
CONFIG |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
KEY = "val/samples/gold_reward"
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _module_and_data(tmp_path: Path, **module_kwargs) -> tuple[PreferenceModule, PreferenceDataModule]:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=module_kwargs.pop("model_config", CONFIG), beta=0.1, **module_kwargs)
    data = PreferenceDataModule(
        synthetic=SyntheticConfig(train_size=16, validation_size=8, seed=5),
        cache_dir=str(tmp_path / "data"),
        batch_size=4,
        max_length=32,
    )
    return module, data


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _greedy_alone(module: PreferenceModule, data: PreferenceDataModule, prompt: list[int], tokens: int) -> str:
    """``policy.generate`` on one prompt, cut at EOS and decoded as the callback decodes."""
    tokenizer = data.tokenizer
    policy = module.policy.eval()
    ids = torch.tensor([prompt])
    out = policy.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.decode(
        until_eos(out[0, len(prompt) :].tolist(), {tokenizer.eos_token_id}), skip_special_tokens=True
    )


def test_samples_after_each_validation(tmp_path):
    """Two validations in a fit (none in the sanity check): three records each in the CSV logger's folder, on the
    first three validation prompts, with the gold reward of each response and its mean logged; the last
    validation's greedy responses are those of ``policy.generate`` on each prompt alone."""
    module, data = _module_and_data(tmp_path)
    logger = CSVLogger(save_dir=str(tmp_path), name="logs")
    sampler = SampleGenerations(num_prompts=3, max_new_tokens=8)
    trainer = quiet_trainer(
        tmp_path, 4, [sampler], logger=logger, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=1
    )
    trainer.fit(module, datamodule=data)

    records = _records(Path(logger.log_dir) / "samples.jsonl")
    assert [record["step"] for record in records] == [2, 2, 2, 4, 4, 4]
    prompts = data.splits["validation"][:3]["prompt_input_ids"]
    expected = [data.tokenizer.decode(ids, skip_special_tokens=True) for ids in prompts]
    assert [record["prompt"] for record in records] == expected * 2
    assert any(record["response"] for record in records)
    for record in records:
        assert record["gold_reward"] == gold_reward(record["response"])
    with open(Path(logger.log_dir) / "metrics.csv", encoding="utf-8") as file:
        logged = [
            float(row["val/samples/gold_reward"]) for row in csv.DictReader(file) if row["val/samples/gold_reward"]
        ]
    means = [sum(r["gold_reward"] for r in records[i : i + 3]) / 3 for i in (0, 3)]
    assert logged == pytest.approx(means)

    for prompt, record in zip(prompts, records[3:], strict=True):
        assert record["response"] == _greedy_alone(module, data, prompt, 8)


def test_without_a_logger_the_file_goes_to_the_root_dir_and_sampling_is_reproducible(tmp_path):
    """``trainer.validate`` twice with temperature sampling: the same seed draws the same responses, in
    ``default_root_dir/samples.jsonl``; another seed draws others."""
    module, data = _module_and_data(tmp_path)
    root = tmp_path / "root"
    for seed in (3, 3, 4):
        sampler = SampleGenerations(num_prompts=2, max_new_tokens=12, temperature=1.0, top_p=0.95, seed=seed)
        quiet_trainer(root, 1, [sampler], limit_val_batches=1).validate(module, datamodule=data)
    records = _records(root / "samples.jsonl")
    responses = [[record["response"] for record in records[i : i + 2]] for i in (0, 2, 4)]
    assert responses[0] == responses[1]
    assert responses[0] != responses[2]


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class _DrawsGlobally(pl.Callback):
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        torch.rand(1)


def _training_losses(tmp_path: Path, sampler: pl.Callback | None) -> list[float]:
    """A short β-DPO fit with attention dropout (drawing from the global random stream), validating every 2 steps."""
    module, data = _module_and_data(tmp_path, model_config={**CONFIG, "attention_dropout": 0.3}, dropout=True)
    losses = _Losses()
    callbacks = [DynamicBetaCallback(BetaDPOController(beta=0.1)), losses, *([sampler] if sampler else [])]
    trainer = quiet_trainer(tmp_path, 6, callbacks, val_check_interval=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    return losses.losses


def test_sampling_does_not_change_training(tmp_path):
    """Sampled generation between training steps leaves the training losses bit-identical."""
    plain = _training_losses(tmp_path / "plain", None)
    sampler = SampleGenerations(num_prompts=3, max_new_tokens=6, temperature=1.0, top_p=0.9)
    sampled = _training_losses(tmp_path / "sampled", sampler)
    assert len(_records(tmp_path / "sampled" / "samples.jsonl")) == 3 * 3  # it did generate
    assert len(plain) == 6
    assert sampled == plain
    # The comparison can fail: one draw from the global random stream at each validation changes the losses.
    assert _training_losses(tmp_path / "drawing", _DrawsGlobally()) != plain


def test_tensorboard_gets_a_markdown_table(tmp_path):
    tensorboard = pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    del tensorboard
    module, data = _module_and_data(tmp_path)
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    quiet_trainer(tmp_path, 1, [SampleGenerations(num_prompts=2)], logger=logger, limit_val_batches=1).validate(
        module, datamodule=data
    )
    assert len(_records(Path(logger.log_dir) / "samples.jsonl")) == 2
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert any("val/samples" in tag for tag in events.Tags()["tensors"])


def test_next_tokens_top_p_keeps_the_nucleus():
    """With top_p = 0.5 only the most likely token (probability 0.6) can be drawn; with 0.85 the two likeliest."""
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    generator = torch.Generator().manual_seed(0)
    draws = {int(next_tokens(logits, 1.0, 0.5, generator)) for _ in range(50)}
    assert draws == {1}
    draws = {int(next_tokens(logits, 1.0, 0.85, generator)) for _ in range(200)}
    assert draws == {1, 2}  # 0.6 + 0.3 reach 0.85: the least likely token is left out


SNIPPET = """
- class_path: betadpo_lightning.callbacks.SampleGenerations
  init_args:
    num_prompts: 4
    max_new_tokens: 32
    temperature: 0.0
"""


@pytest.mark.slow
def test_configured_from_yaml_in_the_quickstart(tmp_path):
    """The quickstart configures the callback (as the README's snippet does) and writes samples to the CSV log
    folder."""
    config = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    (entry,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("SampleGenerations")]
    assert entry == yaml.safe_load(SNIPPET)[0]
    main(
        [
            "fit",
            f"--config={QUICKSTART}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--data.cache_dir={tmp_path / 'data'}",
            "--data.synthetic.train_size=64",
            "--data.synthetic.validation_size=16",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    records = _records(tmp_path / "logs" / "version_0" / "samples.jsonl")
    assert [record["step"] for record in records] == [2] * 4
    assert all(record["gold_reward"] == gold_reward(record["response"]) for record in records)


def _validate_with_samples(root: Path, **trainer_kwargs) -> float:
    """One validation with greedy samples of 3 prompts into ``root/samples.jsonl``; the logged mean gold reward."""
    module, data = _module_and_data(root)
    sampler = SampleGenerations(num_prompts=3, max_new_tokens=6)
    trainer = quiet_trainer(root, 1, [sampler], limit_val_batches=1, **trainer_kwargs)
    trainer.validate(module, datamodule=data)
    return float(trainer.callback_metrics[KEY])


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_write_the_single_process_samples_once(tmp_path, strategy):
    """Under DDP and FSDP2 (sharded policy) every rank generates and rank 0 alone writes: the single-process
    records, once. This file is also the script the two ranks run (Lightning re-launches it for rank 1)."""
    single = _validate_with_samples(tmp_path / "one")
    root = tmp_path / strategy
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, strategy, str(root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _records(root / "samples.jsonl") == _records(tmp_path / "one" / "samples.jsonl")
    assert json.loads((root / "gold.json").read_text()) == pytest.approx(single)


if __name__ == "__main__":  # the two-rank run of the test above: python test_sampling.py {ddp,fsdp2} ROOT
    kind, out = sys.argv[1], Path(sys.argv[2])
    two = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if kind == "fsdp2" else DDPStrategy()
    gold = _validate_with_samples(out, devices=2, strategy=two)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        (out / "gold.json").write_text(json.dumps(gold))
