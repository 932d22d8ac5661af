"""What the export refuses, each with a one-line message naming the file or option and the fix: a non-empty output
directory, what is not a PreferenceModule checkpoint, non-finite weights, LoRA options that do not fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from betadpo_lightning.commands.export import main as export
from betadpo_lightning.models.reference import AdapterReference
from betadpo_lightning.training.module import PreferenceModule
from helpers.exports import adamw, assert_mentions, assert_same_logps, fit_random_pairs
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs


@pytest.fixture
def tiny_checkpoint(tmp_path) -> tuple[Path, PreferenceModule]:
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=adamw)
    return fit_random_pairs(tmp_path / "run", module, steps=1), module


def test_output_dir_is_replaced_only_with_overwrite_and_a_missing_tokenizer_is_named(tmp_path, tiny_checkpoint, capsys):
    checkpoint, module = tiny_checkpoint
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("an earlier export")
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert_mentions(err, str(out), "--overwrite")
    assert [path.name for path in out.iterdir()] == ["stale.txt"]
    # --overwrite deletes nothing but an earlier export: a folder holding other files is refused, naming them
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(out), "--overwrite"]) == 1
    assert_mentions(capsys.readouterr().err, str(out), "stale.txt", "does not write")
    assert [path.name for path in out.iterdir()] == ["stale.txt"]
    (out / "stale.txt").unlink()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):  # an earlier export
        (out / name).write_text("an earlier export")
    with pytest.warns(UserWarning, match=r"No tokenizer written .*--tokenizer"):
        assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(out), "--overwrite"]) == 0
    assert "pass --tokenizer" in capsys.readouterr().out
    names = sorted(path.name for path in out.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors"]  # the model, and nothing stale
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "run"]  # no staging folder left behind
    batch = collate_pairs([RandomPairs(8, seed=5)[i] for i in range(8)])
    assert_same_logps(AutoModelForCausalLM.from_pretrained(str(out)), module.policy, batch)


def test_what_is_not_a_preference_checkpoint_is_refused_naming_it(tmp_path, capsys):
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    folder = tmp_path / "folder"
    folder.mkdir()
    other = tmp_path / "boring.ckpt"
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(BoringModel())
    trainer.save_checkpoint(other)
    for path, expected in (
        (text, "is not a checkpoint"),
        (folder, "not a sharded Lightning checkpoint"),
        (other, "not a checkpoint of betadpo_lightning's PreferenceModule"),
        (tmp_path / "missing.ckpt", "no such checkpoint"),
    ):
        assert export(["--ckpt_path", str(path), "--output_dir", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert_mentions(err, str(path), expected)
        assert not (tmp_path / "out").exists()


def test_non_finite_weights_are_never_exported(tmp_path, tiny_checkpoint, capsys):
    checkpoint, _ = tiny_checkpoint
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["policy.model.norm.weight"][3] = float("nan")
    torch.save(state, tmp_path / "nan.ckpt")
    for dtype in ([], ["--dtype", "bfloat16"]):
        assert export(["--ckpt_path", str(tmp_path / "nan.ckpt"), "--output_dir", str(tmp_path / "out"), *dtype]) == 1
        err = capsys.readouterr().err
        assert_mentions(err, "not finite: policy.model.norm.weight", str(tmp_path / "nan.ckpt"))  # as stored
        assert not (tmp_path / "out").exists()

    state["state_dict"]["policy.model.norm.weight"][3] = 1e6  # finite in float32, infinite in float16
    torch.save(state, tmp_path / "large.ckpt")
    args = ["--ckpt_path", str(tmp_path / "large.ckpt"), "--output_dir", str(tmp_path / "out")]
    assert export([*args, "--dtype", "float16"]) == 1
    assert "not finite in float16" in capsys.readouterr().err  # finite as stored: the cast made it infinite
    assert sorted(path.name for path in tmp_path.iterdir()) == ["large.ckpt", "nan.ckpt", "run"]
    with pytest.warns(UserWarning, match="--tokenizer"):
        assert export(args) == 0


def test_the_module_runs_as_a_command(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "betadpo_lightning.commands.export", "--ckpt_path", str(tmp_path / "missing.ckpt")]
    proc = subprocess.run([*command, "--output_dir", str(tmp_path / "o")], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("betadpo-export: error:")


def test_lora_options_that_do_not_fit_the_checkpoint_are_refused(tmp_path, capsys):
    module = PreferenceModule(model_config=TINY_LLAMA, lora={"r": 4}, reference=AdapterReference(), optimizer=adamw)
    checkpoint = fit_random_pairs(tmp_path, module, steps=1)
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(tmp_path / "a")]) == 1
    assert "--merge_lora" in capsys.readouterr().err  # a random base cannot be named by an adapter directory
    assert not (tmp_path / "a").exists()
    with pytest.warns(UserWarning, match="--tokenizer"):
        assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(tmp_path / "m"), "--merge_lora"]) == 0
    batch = collate_pairs([RandomPairs(8, seed=5)[i] for i in range(8)])
    assert_same_logps(AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")), module.policy, batch)

    full = fit_random_pairs(tmp_path / "full", PreferenceModule(model_config=TINY_LLAMA), steps=1)
    assert export(["--ckpt_path", str(full), "--output_dir", str(tmp_path / "b"), "--merge_lora"]) == 1
    err = capsys.readouterr().err
    assert_mentions(err, "--merge_lora", str(full), "no LoRA adapters")


def test_a_tokenizer_that_is_not_the_policys_is_refused(tmp_path, tiny_checkpoint, bpe_tokenizer_dir, capsys):
    checkpoint, _ = tiny_checkpoint
    args = ["--ckpt_path", str(checkpoint), "--output_dir", str(tmp_path / "out")]
    assert export([*args, "--tokenizer", str(bpe_tokenizer_dir)]) == 1  # about 600 tokens for 48 embedding rows
    assert_mentions(capsys.readouterr().err, f"--tokenizer {bpe_tokenizer_dir}", "do not fit the policy's 48")
    assert export([*args, "--tokenizer", str(tmp_path / "nowhere")]) == 1
    assert_mentions(capsys.readouterr().err, f"--tokenizer {tmp_path / 'nowhere'}: cannot load it")
    assert not (tmp_path / "out").exists()
