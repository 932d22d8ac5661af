"""The commands the run summary prints work as printed for every kind of run: a plain-text run, LoRA adapters on a
``model_config`` policy, and a run rendered with the chat template. Each tiny fit's printed export runs (again, with
``--overwrite``, once an export is there), its sample command runs, and encodes a training prompt exactly as the
training data did."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from betadpo_lightning.commands.cli import main as cli
from betadpo_lightning.commands.export import main as export
from betadpo_lightning.commands.run_summary import RunSummary
from betadpo_lightning.commands.sample import encode_prompt
from betadpo_lightning.commands.sample import main as sample

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TINY = [
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--data.synthetic.train_size=32",
    "--data.synthetic.validation_size=8",
    "--data.batch_size=4",
]
CALLBACKS = "trainer:\n  callbacks:\n    - class_path: betadpo_lightning.callbacks.PreferenceCheckpoint\n"
KINDS = {
    "plain": ([], "false"),
    "lora_on_model_config": (["--model.lora={r: 4, lora_alpha: 8}"], "false"),
    "chat_template": (["--data.synthetic.format=conversational"], "true"),
}


def _field(stdout: str, name: str) -> str:
    lines = stdout[stdout.rindex("Run finished at step") :].splitlines()
    (line,) = [line for line in lines if line.startswith(f"{name} ")]
    return line[len(name) :].strip()


def _module_args(command: str, module: str) -> list[str]:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", module], command
    return words[3:]


def _first_prompt(run) -> tuple[str | list, list[int]]:
    """A validation prompt as the raw data holds it (the text of its user turn) and its token ids in training."""
    data = run.datamodule
    pairs = data.splits["validation"]
    row = next(i for i in range(len(pairs)) if pairs[i]["truncation"] == "none")
    raw = data._split_source().tokenized_splits(data.tokenizer, warn=False).raw["validation"][pairs[row]["index"]]
    prompt = raw["prompt"] if isinstance(raw.get("prompt"), str) else raw["chosen"][0]["content"]
    return prompt, list(pairs[row]["prompt_input_ids"])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_printed_commands_work_as_printed(kind, tmp_path, capsys):
    extra, template = KINDS[kind]
    root, callbacks = tmp_path / "run", tmp_path / "callbacks.yaml"
    callbacks.write_text(CALLBACKS, encoding="utf-8")
    args = ["fit", "--config", str(QUICKSTART), "--config", str(callbacks), *TINY, *extra]
    args.append(f"--trainer.default_root_dir={root}")
    run = cli([*args, f"--data.cache_dir={tmp_path / 'cache'}"])
    stdout = capsys.readouterr().out

    export_command = _field(stdout, "export")
    assert ("--merge_lora" in export_command) == (kind == "lora_on_model_config")
    assert "--overwrite" not in export_command
    assert export(_module_args(export_command, "betadpo_lightning.commands.export")) == 0
    assert (root / "export" / "config.json").is_file()  # a full model: loadable without a base
    # once the export is there, the summary's command replaces it (and only it)
    again = dict(line.split(None, 1) for line in RunSummary().render(run.trainer).splitlines()[1:] if " " in line)
    assert again["export"] == f"{export_command} --overwrite"
    capsys.readouterr()
    assert export(_module_args(again["export"], "betadpo_lightning.commands.export")) == 0

    sample_command = _field(stdout, "sample")
    sample_args = _module_args(sample_command, "betadpo_lightning.commands.sample")
    assert sample_args[sample_args.index("--chat_template") + 1] == template
    assert sample_args[sample_args.index("--model") + 1] == str(root / "export")
    assert sample([*sample_args, "--max_new_tokens", "3"]) == 0
    assert "=== response 1 ===" in capsys.readouterr().out
    # the sample command encodes a prompt as training did
    prompt, ids = _first_prompt(run)
    tokenizer = AutoTokenizer.from_pretrained(str(root / "export"))
    assert encode_prompt(tokenizer, prompt, template == "true") == ids
    assert encode_prompt(tokenizer, prompt, template != "true") != ids  # the other choice would not

    plot_command = _field(stdout, "plots")
    assert _module_args(plot_command, "betadpo_lightning.commands.plot") == [str(root)]
