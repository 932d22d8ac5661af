"""Every shipped real-data config trains on a user's own files, as the README says to run it.

Each ``configs/hh_*.yaml`` and ``configs/ultrafeedback_*.yaml`` runs ``fit`` to its end (one epoch of 128 pairs: two
optimizer steps of 64 pairs; eight of 16 for the multi-GPU configs run on one device) on real-shaped local files,
with its own data and trainer sections. The only overrides:

* the model: ``model.model_name_or_path`` is a tiny local model of the config's family (GPT-NeoX for the Pythia
  configs, Qwen2 for the Qwen configs) saved with a tokenizer of the real one's special-token layout
  (:mod:`helpers.user_files`);
* the data: ``data.dataset`` is the local file or folder (and ``data.cache_dir`` a temporary folder);
* the GPU-only trainer settings: ``accelerator=cpu``, ``devices=1``, ``strategy=auto``, ``num_nodes=1`` (the DDP and
  FSDP2 configs) and ``precision=32-true`` (the configs' ``bf16-mixed``);
* what the test observes: where the run writes (``default_root_dir``), no progress bar, and ``log_every_n_steps=1``
  (the configs log every 10 optimizer steps; these runs have two).

Batch sizes, gradient accumulation, ``val_check_interval``, ``limit_val_batches``, ``num_proc``, ``num_workers``,
splits, formats and losses are the configs' own.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

from betadpo_lightning.commands.cli import main
from helpers.user_files import neox_like_tokenizer, qwen2_like_tokenizer, read_rows, save_model, write_rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning"),
]

ROOT = Path(__file__).parents[1]
HH = sorted((ROOT / "configs").glob("hh_*.yaml"))
UF = sorted((ROOT / "configs").glob("ultrafeedback_*.yaml"))
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.num_nodes=1"]
ON_CPU += ["--trainer.precision=32-true"]
PAIRS = 128  # one epoch: 2 optimizer steps of 64 pairs, the configs' step size
UF_LAYOUTS = {
    "ultrafeedback_messages": "ultrafeedback_messages.jsonl",
    "ultrafeedback_strings": "ultrafeedback_strings.jsonl",
    "llama_factory_en": "llama_factory_dpo_en.json",
    "llama_factory_zh": "llama_factory_dpo_zh.json",
    "llama_factory_v1": "llama_factory_v1_dpo.jsonl",
}
# Every layout through at least one UltraFeedback config, and every UltraFeedback config with at least one layout.
UF_CASES = [
    ("ultrafeedback_qwen2.5_0.5b_beta_dpo", "ultrafeedback_messages"),
    ("ultrafeedback_qwen2.5_0.5b_beta_dpo", "ultrafeedback_strings"),
    ("ultrafeedback_qwen2.5_0.5b_beta_dpo", "llama_factory_v1"),
    ("ultrafeedback_qwen2.5_0.5b_epsilon_dpo", "llama_factory_zh"),
    ("ultrafeedback_qwen2.5_0.5b_mallows_theta", "llama_factory_en"),
    ("ultrafeedback_qwen2.5_7b_qlora_beta_dpo", "ultrafeedback_messages"),
]


@pytest.fixture(scope="module")
def pythia_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("tiny-pythia"), "gpt_neox", neox_like_tokenizer())


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Width 64: bitsandbytes' 4-bit CPU kernels (the QLoRA config) quantise in blocks of 64 input features.
    return save_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", qwen2_like_tokenizer(), hidden_size=64)


def _folder(tmp_path: Path, fixture: str) -> Path:
    """A folder with ``train`` and ``test`` files of the fixture's rows (the splits a Hub dataset would have)."""
    rows, suffix = read_rows(fixture), Path(fixture).suffix
    folder = tmp_path / "my_data"
    write_rows(folder / f"train{suffix}", rows, PAIRS)
    write_rows(folder / f"test{suffix}", rows, 8)
    return folder


def _fit(config: Path, dataset: Path, model: Path, tmp_path: Path):
    args = ["fit", "--config", str(config), *ON_CPU, f"--model.model_name_or_path={model}"]
    args += [f"--data.dataset={dataset}", f"--data.cache_dir={tmp_path / 'cache'}"]
    args += [f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.log_every_n_steps=1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(args)
    return cli, [str(warning.message) for warning in caught]


def _check_run(cli, validated: bool) -> None:
    # One epoch: 64 pairs per optimizer step with the configs' GPU counts; 16 on one CPU for the DDP/FSDP2 configs.
    micro_batches = math.ceil(PAIRS / cli.datamodule.batch_size)
    assert cli.trainer.global_step == math.ceil(micro_batches / cli.trainer.accumulate_grad_batches)
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert ("val/loss" in metrics) is validated
    if validated:
        assert math.isfinite(float(metrics["val/loss"]))
    assert cli.datamodule.stats["train"].kept == PAIRS


@pytest.mark.parametrize("config", HH, ids=lambda path: path.stem)
def test_hh_config_trains_on_local_transcripts(config: Path, pythia_dir: Path, tmp_path: Path):
    cli, messages = _fit(config, _folder(tmp_path, "hh_rlhf.jsonl"), pythia_dir, tmp_path)
    _check_run(cli, validated=True)  # the folder's `test` split is the configs' validation split
    assert cli.datamodule.stats["validation"].kept == 8
    # GPT-NeoX's <|endoftext|> is its unknown token and the EOS ending every response: no false alarm.
    assert cli.datamodule.stats["train"].unknown_tokens == 0
    assert not [message for message in messages if "unknown token" in message]


def test_hh_config_trains_on_a_single_local_file(pythia_dir: Path, tmp_path: Path):
    """The user's case: one file (a single `train` split, 8 micro-batches), no `test` split to validate on."""
    dataset = write_rows(tmp_path / "hh.jsonl", read_rows("hh_rlhf.jsonl"), PAIRS)
    cli, messages = _fit(ROOT / "configs" / "hh_pythia410m_beta_dpo.yaml", dataset, pythia_dir, tmp_path)
    _check_run(cli, validated=False)
    assert any("has no split 'test'" in message and "val_fraction" in message for message in messages)


def test_every_config_and_layout_is_covered():
    assert {name for name, _ in UF_CASES} == {path.stem for path in UF}
    assert {layout for _, layout in UF_CASES} == set(UF_LAYOUTS)


@pytest.mark.parametrize(("config", "layout"), UF_CASES)
def test_ultrafeedback_config_trains_on_local_files(config: str, layout: str, qwen_dir: Path, tmp_path: Path):
    path = ROOT / "configs" / f"{config}.yaml"
    cli, messages = _fit(path, _folder(tmp_path, UF_LAYOUTS[layout]), qwen_dir, tmp_path)
    _check_run(cli, validated=True)
    notes = [message for message in messages if "has no split" in message]
    assert any("no split 'train_prefs'; training on its split 'train'" in note for note in notes), notes
    assert any("no split 'test_prefs'; validating on its split 'test'" in note for note in notes), notes
    # The first pair, decoded, is the Qwen2.5 rendering of its one user turn and one assistant turn, ended by EOS.
    user, answer = _first_turns(layout)
    first = cli.datamodule.splits["train"][0]
    decode = cli.datamodule.tokenizer.decode
    assert first["index"] == 0
    assert decode(first["prompt_input_ids"]) == (
        f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert decode(first["chosen_input_ids"]) == f"{answer}<|im_end|>\n"


def _first_turns(layout: str) -> tuple[str, str]:
    """The user text and chosen answer of a layout's first fixture row, read by hand."""
    row = read_rows(UF_LAYOUTS[layout])[0]
    if layout == "ultrafeedback_messages":
        return row["prompt"], row["chosen"][-1]["content"]
    if layout == "ultrafeedback_strings":
        return row["prompt"], row["chosen"]
    if layout == "llama_factory_v1":
        return row["chosen_messages"][0]["content"][0]["value"], row["chosen_messages"][-1]["content"][0]["value"]
    return row["conversations"][-1]["value"], row["chosen"]["value"]
