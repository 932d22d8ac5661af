"""Exporting each kind of trained checkpoint to a transformers directory (or a peft adapter) and loading it back as
users do: the exported policy has the trained weights and gives the trained policy's log-probs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from betadpo_lightning.commands.export import main as export
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.synthetic import SyntheticConfig, build_synthetic_tokenizer, synthetic_dir
from betadpo_lightning.models.reference import AdapterReference
from betadpo_lightning.training.module import PreferenceModule
from conftest import save_tiny_model
from helpers.exports import (
    adamw,
    assert_mentions,
    assert_same_logps,
    assert_same_weights,
    fit_random_pairs,
    logps,
    peft_loading,
)
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs
from helpers.trainers import quiet_trainer

SMALL_LLAMA = {k: v for k, v in TINY_LLAMA.items() if k != "vocab_size"}  # vocabulary from the tokenizer


def test_model_config_run_on_synthetic_data_exports_a_transformers_directory(tmp_path, capsys):
    data = PreferenceDataModule(
        synthetic=SyntheticConfig(train_size=32, validation_size=0),
        batch_size=4,
        max_length=32,
        cache_dir=str(tmp_path / "cache"),
    )
    module = PreferenceModule(model_config={**SMALL_LLAMA, "tie_word_embeddings": True}, optimizer=adamw)
    trainer = quiet_trainer(tmp_path, 3)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    folder = synthetic_dir(SyntheticConfig(train_size=32, validation_size=0), tmp_path / "cache") / "tokenizer"
    out = tmp_path / "exported"
    args = ["--ckpt_path", str(tmp_path / "trained.ckpt"), "--output_dir", str(out), "--tokenizer", str(folder)]
    assert export(args) == 0
    printed = capsys.readouterr().out
    assert_mentions(printed, str(out), "model.safetensors", "tokenizer.json")

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert not model.training  # as transformers returns every model: nothing of the training mode is saved
    assert model.config.vocab_size == len(build_synthetic_tokenizer()) == 64
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as trained
    assert_same_weights(model, module.policy)
    batch = data.collate([data.splits["train"][i] for i in range(6)])  # the run's own tokenized pairs
    assert_same_logps(model, module.policy, batch)
    text = "explain the clear answer"
    assert tokenizer(text)["input_ids"] == build_synthetic_tokenizer()(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer.chat_template == build_synthetic_tokenizer().chat_template

    # the datamodule records its options in the checkpoint, so a plain-Python run needs no --tokenizer either
    state = torch.load(tmp_path / "trained.ckpt", weights_only=True)
    assert state["datamodule_hyper_parameters"]["synthetic"]["train_size"] == 32
    capsys.readouterr()
    assert export(["--ckpt_path", str(tmp_path / "trained.ckpt"), "--output_dir", str(tmp_path / "recorded")]) == 0
    assert (
        "the synthetic dataset's tokenizer (from the checkpoint's datamodule hyperparameters)"
        in capsys.readouterr().out
    )
    assert (
        AutoTokenizer.from_pretrained(str(tmp_path / "recorded")).get_vocab() == build_synthetic_tokenizer().get_vocab()
    )


def test_local_directory_run_exports_the_trained_policy_with_its_own_config(tmp_path, bpe_tokenizer_dir):
    base = save_tiny_model(tmp_path / "base", bpe_tokenizer_dir, attention_dropout=0.1)
    module = PreferenceModule(model_name_or_path=str(base), gradient_checkpointing=True, optimizer=adamw)
    checkpoint = fit_random_pairs(tmp_path, module)
    out = tmp_path / "exported"
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(out)]) == 0  # tokenizer: the model's own

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not model.training
    # the training-only settings do not leak into the config: the model's own dropout, the KV cache on
    assert model.config.attention_dropout == 0.1
    assert model.config.use_cache is not False
    original = AutoModelForCausalLM.from_pretrained(str(base))
    batch = collate_pairs([RandomPairs(8, seed=5)[i] for i in range(8)])
    assert not torch.allclose(logps(original, batch), logps(model, batch), atol=1e-3)  # trained, not the base
    assert_same_weights(model, module.policy)
    assert_same_logps(model, module.policy, batch)
    tokenizer, expected = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))
    text = "say hello world again, worldwide"
    assert tokenizer(text)["input_ids"] == expected(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text

    half = tmp_path / "bf16"
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(half), "--dtype", "bfloat16"]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(half), dtype="auto")
    assert model.dtype == torch.bfloat16
    for name, value in module.policy.named_parameters():
        assert torch.equal(dict(model.named_parameters())[name], value.detach().to(torch.bfloat16)), name


def test_lora_run_exports_an_adapter_and_with_merge_lora_a_merged_model(tmp_path, tiny_model_dir):
    from peft import AutoPeftModelForCausalLM, PeftModel

    module = PreferenceModule(
        model_name_or_path=str(tiny_model_dir), lora={"r": 4, "lora_alpha": 8}, reference=AdapterReference()
    )
    module.optimizer_factory = adamw
    checkpoint = fit_random_pairs(tmp_path, module)
    batch = collate_pairs([RandomPairs(8, seed=5)[i] for i in range(8)])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert not torch.allclose(logps(base, batch), logps(module.policy.eval(), batch), atol=1e-3)  # adapters trained

    adapter = tmp_path / "adapter"
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(adapter)]) == 0
    names = {path.name for path in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(tiny_model_dir).resolve()
    )
    with peft_loading():
        auto, explicit = (
            AutoPeftModelForCausalLM.from_pretrained(str(adapter)),
            PeftModel.from_pretrained(base, str(adapter)),
        )
    assert_same_logps(auto, module.policy, batch)
    assert_same_logps(explicit, module.policy, batch)
    assert AutoTokenizer.from_pretrained(str(adapter)).decode([]) == ""
    # an adapter export is one that --overwrite replaces (every file it wrote, peft's README.md included)
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(adapter), "--overwrite"]) == 0
    assert {path.name for path in adapter.iterdir()} == names

    merged = tmp_path / "merged"
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(merged), "--merge_lora"]) == 0
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert_same_logps(model, module.policy, batch)


def test_qlora_run_exports_its_adapters_for_the_full_precision_base(tmp_path, bpe_tokenizer_dir):
    """A QLoRA checkpoint holds the adapters and the 4-bit base's quantisation state; the export rebuilds the base
    unquantised and writes exactly the trained adapters."""
    from peft import PeftModel

    base = save_tiny_model(tmp_path / "base", bpe_tokenizer_dir, hidden_size=64, intermediate_size=128)
    module = PreferenceModule(
        model_name_or_path=str(base), lora={"r": 4}, quantization="4bit", reference=AdapterReference(), optimizer=adamw
    )
    checkpoint = fit_random_pairs(tmp_path, module)
    for out, extra in ((tmp_path / "adapter", []), (tmp_path / "merged", ["--merge_lora"])):
        assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(out), *extra]) == 0
    with peft_loading():
        exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(tmp_path / "adapter"))
    trained = {name: p for name, p in module.policy.named_parameters() if "lora_" in name}
    assert len(trained) == 2 * 7 * 2  # A and B of the 7 linear layers of 2 decoder layers
    exported_params = dict(exported.named_parameters())
    for name, value in trained.items():
        assert torch.equal(exported_params[name], value.detach()), name
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    batch = collate_pairs([RandomPairs(8, seed=5)[i] for i in range(8)])
    assert_same_logps(merged, exported.merge_and_unload(), batch)


def test_cli_run_exports_with_the_tokenizer_its_config_records(tmp_path):
    """The quickstart's kind of run: ``cli.py fit`` on the synthetic data with a ``model_config`` policy; the export
    finds the synthetic tokenizer from what the run wrote, without --tokenizer."""
    from betadpo_lightning.commands.cli import main as cli

    root = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        seed_everything: 0
        trainer:
          default_root_dir: {root}
          accelerator: cpu
          devices: 1
          max_steps: 2
          enable_progress_bar: false
          enable_model_summary: false
          logger:
            class_path: lightning.pytorch.loggers.CSVLogger
            init_args: {{save_dir: {root}, name: logs}}
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args: {{dirpath: {root / "checkpoints"}, every_n_train_steps: 2}}
        model:
          model_config: {json.dumps(SMALL_LLAMA)}
          optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 0.01}}}}
        data:
          batch_size: 4
          max_length: 32
          cache_dir: {tmp_path / "cache"}
          synthetic: {{train_size: 32, validation_size: 8}}
        """)
    )
    run = cli(["fit", "--config", str(config)])
    (checkpoint,) = (root / "checkpoints").glob("*.ckpt")
    out = tmp_path / "exported"
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.get_vocab() == build_synthetic_tokenizer().get_vocab()
    assert tokenizer.chat_template == build_synthetic_tokenizer().chat_template
    model = AutoModelForCausalLM.from_pretrained(str(out))
    batch = run.datamodule.collate([run.datamodule.splits["train"][i] for i in range(6)])
    assert_same_logps(model, run.model.policy, batch)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups")
def test_fsdp2_sharded_checkpoint_exports_the_policy_of_its_step(tmp_path):
    """A 2-rank FSDP2 run writes its step-2 checkpoint as a folder of per-rank shards; the export (converted in one
    process) holds exactly the weights the ranks held at that step and gives their log-probs."""
    script = Path(__file__).parent / "scripts" / "export_two_ranks.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run.pt"), str(tmp_path / "ckpt"), "--strategy", "fsdp2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (checkpoint,) = (tmp_path / "ckpt").glob("*step=2*")
    assert checkpoint.is_dir()  # sharded
    recorded = torch.load(tmp_path / "run.pt", weights_only=True)
    assert recorded["global_step"] == 2
    with pytest.warns(UserWarning, match="--tokenizer"):  # random pairs: the run has no tokenizer
        assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(tmp_path / "out")]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    params = dict(model.named_parameters())
    assert params.keys() == recorded["params"].keys()
    for name, value in recorded["params"].items():
        assert torch.equal(params[name], value), name
    initial = AutoModelForCausalLM.from_config(model.config)
    assert not torch.equal(initial.lm_head.weight, params["lm_head.weight"])
    batch = collate_pairs([RandomPairs(8, seed=3)[i] for i in range(8)])
    torch.testing.assert_close(logps(model, batch), recorded["logps"], rtol=0, atol=1e-5)
