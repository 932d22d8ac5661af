"""A mistyped ``--config`` or data path is reported before torch and Lightning load: named, with a close name that
exists, and the exit code the command line gives (2: a command-line file, 1: a data file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from betadpo_lightning.commands.preflight import exit_on_missing_paths, find_missing_path

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_a_missing_config_is_named_with_the_close_names(tmp_path):
    (tmp_path / "quickstart.yaml").write_text("trainer: {}\n")
    missing = find_missing_path(["fit", "--config", str(tmp_path / "quickstrat.yaml")])
    assert missing is not None
    assert (missing.option, missing.exit_code) == ("--config", 2)
    assert missing.message().splitlines() == [
        f"error: --config: no such file '{tmp_path / 'quickstrat.yaml'}'",
        f"  did you mean '{tmp_path / 'quickstart.yaml'}'?",
    ]


@pytest.mark.parametrize("form", [["-c", "{path}"], ["--config={path}"], ["--config", "{path}"]])
def test_every_spelling_of_the_config_option(tmp_path, form):
    argv = ["fit", *(word.format(path=tmp_path / "none.yaml") for word in form)]
    assert find_missing_path(argv).option == "--config"
    argv = ["fit", *(word.format(path=QUICKSTART) for word in form)]
    assert find_missing_path(argv) is None


def test_a_folder_given_as_config(tmp_path):
    missing = find_missing_path(["fit", "--config", str(tmp_path)])
    assert missing.exit_code == 2
    assert "a folder, not a file" in missing.message()


def test_data_paths_of_the_config_and_of_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  dataset: pairs.jsonl\n  tokenizer: gpt2\n")
    assert find_missing_path(["fit", "--config", str(config)]) is None
    missing = find_missing_path(["fit", "--config", str(config), "--data.dataset", "pair.jsonl"])
    assert (missing.option, missing.path, missing.exit_code) == ("data.dataset", "pair.jsonl", 1)
    assert "did you mean 'pairs.jsonl'?" in missing.message()
    assert f"relative paths are looked up in the working directory, {tmp_path}" in missing.message()
    # a later --config overrides an earlier --data.dataset, as the command line reads them
    assert find_missing_path(["fit", "--data.dataset=gone.jsonl", "--config", str(config)]) is None


def test_data_files_of_a_builder_and_chat_template_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text("{}\n")
    base = ["fit", "--data.dataset", "json"]
    assert find_missing_path([*base, "--data.data_files", "{train: train.jsonl}"]) is None
    missing = find_missing_path([*base, "--data.data_files", "{train: train.jsonl, validation: valid.jsonl}"])
    assert (missing.option, missing.path) == ("data.data_files", "valid.jsonl")
    assert find_missing_path([*base, "--data.data_files", "data/*.jsonl"]) is None  # a glob: left to datasets
    # the data_files of a Hub dataset are paths inside its repository, not here
    assert find_missing_path(["fit", "--data.dataset", "org/name", "--data.data_files", "train.parquet"]) is None
    assert find_missing_path(["fit", "--data.chat_template", "chatml.jinja"]).option == "data.chat_template"
    for value in ("auto", "true", "false", "{{ messages[0]['content'] }}"):
        assert find_missing_path(["fit", "--data.chat_template", value]) is None


def test_hub_names_and_inline_configs_are_left_to_the_command_line():
    assert find_missing_path(["fit", "--data.dataset", "Anthropic/hh-rlhf"]) is None
    assert find_missing_path(["fit", "--config", "{trainer: {max_steps: 3}}"]) is None
    assert find_missing_path(["fit", "--data.dataset", "synthetic"]) is None


def test_a_config_under_the_subcommand_key(tmp_path):
    config = tmp_path / "all.yaml"
    config.write_text("fit:\n  data:\n    dataset: ./gone.csv\n")
    assert find_missing_path(["--config", str(config), "fit"]).path == "./gone.csv"


def test_exit_on_missing_paths(tmp_path, capsys):
    exit_on_missing_paths(["fit", "--config", str(QUICKSTART)])  # nothing missing: returns
    with pytest.raises(SystemExit) as exit_info:
        exit_on_missing_paths(["fit", "--config", str(tmp_path / "none.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --config: no such file")


def test_cli_py_reports_before_loading_torch_and_lightning(tmp_path):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['cli.py', 'fit', '--config', {str(tmp_path / 'none.yaml')!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'cli.py')!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert result.stderr.startswith("error: --config: no such file")
