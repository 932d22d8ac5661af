"""One short message per user mistake on the command line: it names the option (or file, or hub name and its role),
says what to do, ends with exit code 2 (command line) or 1, and shows no usage dump and no traceback unless
BETADPO_TRACEBACK=1 asks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from betadpo_lightning.commands.cli import main

ROOT = Path(__file__).parents[1]
CLI = ROOT / "cli.py"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
MISSING_HUB_NAME = "nobody/nothing-here"
MAX_LINES = 6
SUBPROCESS_TIMEOUT_S = 300


def _fail(capsys, args: list[str], tmp_path: Path | None = None) -> tuple[int, str]:
    """Run the CLI in this process on ``args`` (quickstart config, no logger); the exit code and the error output
    from its ``error:`` line on."""
    args = ["fit", "--config", str(QUICKSTART), *args, "--trainer.logger=false"]
    if tmp_path is not None:
        args += [f"--trainer.default_root_dir={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert "error: " in err, err
    return exit_info.value.code, err[err.index("error: ") :]


def _assert_short(message: str) -> None:
    lines = [line for line in message.splitlines() if line.strip()]
    assert len(lines) <= MAX_LINES, message
    assert "usage:" not in message
    assert "Traceback" not in message
    assert lines[-1] == "(set BETADPO_TRACEBACK=1 to see the full traceback)"


def _local_model_args(model_dir: Path | str, dataset: Path) -> list[str]:
    """The quickstart with a model given by path or name instead of a config, on a local preference file."""
    return [
        "--model.model_config=null",
        f"--model.model_name_or_path={model_dir}",
        "--data.synthetic=null",
        f"--data.dataset={dataset}",
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _run_cli(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environment = {k: v for k, v in os.environ.items() if k != "BETADPO_TRACEBACK"}
    environment.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env})
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(CLI), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    return result, time.monotonic() - start


# --- Options: unknown, renamed, wrong type, refused value -----------------------------------------------------------


def test_unknown_option_suggests_the_closest(capsys):
    code, message = _fail(capsys, ["--model.bta", "0.1"])
    assert code == 2
    assert message.startswith("error: unknown option --model.bta\n")
    assert "did you mean --model.beta" in message
    _assert_short(message)


def test_unknown_option_of_a_subclass_lists_its_parameters(capsys):
    code, message = _fail(capsys, ["--dynamic_beta.controller.init_args.rh", "0.1"])
    assert code == 2
    assert "unknown option dynamic_beta.controller.rh" in message
    assert "did you mean dynamic_beta.controller.rho?" in message
    assert "alpha, rho, momentum" in message
    _assert_short(message)


def test_unknown_key_in_a_config_file(capsys, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_stps: 3\n", encoding="utf-8")
    code, message = _fail(capsys, ["--config", str(config)])
    assert code == 2
    assert message.startswith("error: unknown option trainer.max_stps\n")
    assert "did you mean trainer.max_steps" in message
    _assert_short(message)


def test_unknown_key_of_a_subclass_in_a_config_file(capsys, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("dynamic_beta:\n  controller:\n    init_args:\n      rh: 0.2\n", encoding="utf-8")
    code, message = _fail(capsys, ["--config", str(config)])
    assert code == 2
    assert "unknown option dynamic_beta.controller.rh" in message
    assert "did you mean dynamic_beta.controller.rho?" in message
    _assert_short(message)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.beta", "abc"], "error: model.beta: expected a float, got 'abc'"),
        (["--trainer.max_steps", "abc"], "error: trainer.max_steps: expected an int, got 'abc'"),
    ],
)
def test_value_of_the_wrong_type_names_the_option_and_the_type(capsys, args, expected):
    code, message = _fail(capsys, args)
    assert code == 2
    assert message.startswith(expected)
    _assert_short(message)


def test_an_unknown_loss_name_names_the_option_and_the_known_names(capsys):
    code, message = _fail(capsys, ["--model.loss", "sigmod"])
    assert code == 1  # refused by the loss registry when the model is built, not by the parser
    assert message.startswith("error: model.loss: Unknown loss 'sigmod': expected one of [")
    assert "'simpo'" in message
    _assert_short(message)


def test_an_old_loss_option_names_the_new_one(capsys):
    code, message = _fail(capsys, ["--model.loss_type", "ipo"])
    assert code == 2
    assert "--model.loss_type: the loss is model.loss" in message
    _assert_short(message)


def test_wrong_type_in_a_config_file(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  beta: abc\n", encoding="utf-8")
    code, message = _fail(capsys, ["--config", str(config)])
    assert code == 2
    assert message.startswith("error: model.beta: expected a float, got 'abc'")
    _assert_short(message)


@pytest.mark.parametrize(
    "option", ["--dynamic_beta.controller.init_args.rho", "--dynamic_beta.controller.rho"], ids=["full", "short"]
)
def test_value_refused_by_the_controller_names_the_option_and_the_constraint(capsys, option):
    code, message = _fail(capsys, [option, "1.5"])
    assert code == 1
    first = message.splitlines()[0]
    assert first.startswith("error: dynamic_beta.controller.init_args.rho: ")
    assert "[0, 1)" in first
    assert "1.5" in first
    _assert_short(message)


def test_refused_beta0_names_model_beta_not_the_link_target(capsys):
    code, message = _fail(capsys, ["--model.beta", "-1"])
    assert code == 1
    first, *hints = message.splitlines()
    assert first.startswith("error: model.beta: ")
    assert "> 0" in first
    assert "-1" in first
    assert "(model.beta is passed on to dynamic_beta.controller.init_args.beta)" in hints[0]
    _assert_short(message)


def test_value_refused_by_the_data_module_names_the_option(capsys):
    code, message = _fail(capsys, ["--data.batch_size", "0"])
    assert code == 1
    assert message.startswith("error: data.batch_size: ")
    _assert_short(message)


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--optimizer", "torch.optim.SGD"], "--optimizer: the optimizer is model.optimizer"),
        (["--optimizer.lr", "0.1"], "--optimizer.lr: the optimizer is model.optimizer"),
        (["--lr_scheduler", "torch.optim.lr_scheduler.ConstantLR"], "the scheduler is model.scheduler"),
    ],
)
def test_lightning_optimizer_options_point_to_the_model_section(capsys, args, hint):
    code, message = _fail(capsys, args)
    assert code == 2
    assert message.startswith(f"error: unknown option {args[0]}\n")
    assert hint in message
    _assert_short(message)


def test_predict_is_not_a_subcommand(capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(QUICKSTART)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "invalid choice: 'predict'" in message
    assert "'fit', 'validate', 'test'" in message
    _assert_short(message)


def test_missing_config_file_is_named(capsys, tmp_path):
    missing = tmp_path / "nothere.yaml"
    code, message = _fail(capsys, ["--config", str(missing)])
    assert code == 2
    assert str(missing) in message
    _assert_short(message)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_config_on_a_cpu_machine_suggests_the_cpu(capsys, accelerator):
    code, message = _fail(capsys, [f"--trainer.accelerator={accelerator}"])
    assert code == 1
    lines = message.splitlines()
    assert lines[0].startswith("error: trainer")
    assert "No supported gpu backend" in lines[0] or "CUDA" in lines[0]
    assert "add --trainer.accelerator cpu" in lines[1]
    _assert_short(message)


# --- Data, models, checkpoints --------------------------------------------------------------------------------------


def test_missing_column_names_the_column_options(capsys, tmp_path, tiny_model_dir):
    data = _write_jsonl(tmp_path / "pairs.jsonl", [{"question": "a?", "good": "b", "bad": "c"}] * 4)
    code, message = _fail(capsys, _local_model_args(tiny_model_dir, data), tmp_path)
    assert code == 1
    first = message.splitlines()[0]
    assert first.startswith("error: bad preference data: missing column 'chosen'")
    assert "'bad', 'good', 'question'" in first
    assert "data.prompt_column, data.chosen_column and data.rejected_column" in message
    _assert_short(message)


def test_bad_row_suggests_on_bad_row_skip(capsys, tmp_path, tiny_model_dir, fixtures_dir):
    code, message = _fail(capsys, _local_model_args(tiny_model_dir, fixtures_dir / "bad_rows.jsonl"), tmp_path)
    assert code == 1
    assert message.startswith("error: bad preference data: split 'train', file ")
    assert "data.on_bad_row: skip" in message
    assert "--data.on_bad_row skip" in message
    _assert_short(message)


def test_policy_not_in_the_cache_offline_is_named_with_its_role_at_once(
    capsys, tmp_path, bpe_tokenizer_dir, fixtures_dir
):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    args = [
        *_local_model_args(MISSING_HUB_NAME, fixtures_dir / "standard.jsonl"),
        f"--data.tokenizer={bpe_tokenizer_dir}",
    ]
    start = time.monotonic()
    code, message = _fail(capsys, args, tmp_path)
    assert time.monotonic() - start < 60  # no download retries (seconds, on a loaded machine)
    assert code == 1
    assert message.startswith(f"error: cannot load the policy '{MISSING_HUB_NAME}': ")
    assert "HF_HUB_OFFLINE=1" in message
    assert "The policy is set by model.model_name_or_path." in message
    _assert_short(message)


def test_tokenizer_not_in_the_cache_offline_is_named_with_its_role(capsys, tmp_path, tiny_model_dir, fixtures_dir):
    args = [*_local_model_args(tiny_model_dir, fixtures_dir / "standard.jsonl"), f"--data.tokenizer={MISSING_HUB_NAME}"]
    code, message = _fail(capsys, args, tmp_path)
    assert code == 1
    assert message.startswith(f"error: cannot load the tokenizer '{MISSING_HUB_NAME}': ")
    assert "data.tokenizer" in message
    _assert_short(message)


def test_ckpt_path_last_without_a_checkpoint_names_the_folder(capsys, tmp_path):
    code, message = _fail(capsys, ["--ckpt_path", "last"], tmp_path)
    assert code == 1
    assert message.startswith(f"error: --ckpt_path last: no last checkpoint in {tmp_path / 'checkpoints'}\n")
    assert "Train without --ckpt_path" in message
    assert not (tmp_path / "checkpoints").exists()  # nothing trained from scratch
    _assert_short(message)


def test_traceback_on_request(capsys, monkeypatch):
    monkeypatch.setenv("BETADPO_TRACEBACK", "1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--dynamic_beta.controller.rho", "1.5", "--trainer.logger=false"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.index("Traceback (most recent call last)") < err.index("error: dynamic_beta.controller.init_args.rho")
    assert "ValueError" in err
    assert "BETADPO_TRACEBACK=1 to see" not in err


def test_errors_that_are_not_user_mistakes_keep_their_traceback(monkeypatch):
    """A bug is not turned into a short message: its traceback is what a report needs."""

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("betadpo_lightning.commands.cli.BetaDPOCLI.before_instantiate_classes", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit", "--config", str(QUICKSTART), "--trainer.logger=false"])


# --- As a process: exit codes and everything printed ---------------------------------------------------------------


@pytest.mark.slow
def test_unknown_option_as_a_process(tmp_path):
    result, _ = _run_cli(["fit", "--config", str(QUICKSTART), "--model.bta", "0.1"], tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: unknown option --model.bta", result.stderr
    assert "did you mean --model.beta" in lines[1]
    assert len(lines) <= MAX_LINES, result.stderr
    assert "usage:" not in result.stderr


@pytest.mark.slow
def test_traceback_on_request_as_a_process(tmp_path):
    args = ["fit", "--config", str(QUICKSTART), "--model.beta", "-1", "--trainer.logger=false"]
    result, _ = _run_cli(args, tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "(set BETADPO_TRACEBACK=1 to see the full traceback)" in result.stderr
    result, _ = _run_cli(args, tmp_path, BETADPO_TRACEBACK="1")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "error: model.beta: " in result.stderr


@pytest.mark.slow
def test_hub_name_offline_as_a_process_returns_in_seconds(tmp_path):
    args = ["fit", "--config", str(QUICKSTART), f"--data.tokenizer={MISSING_HUB_NAME}", "--trainer.logger=false"]
    args += [f"--trainer.default_root_dir={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}"]
    result, elapsed = _run_cli(args, tmp_path)
    assert result.returncode == 1
    error = result.stderr[result.stderr.index("error: ") :]
    assert error.startswith(f"error: cannot load the tokenizer '{MISSING_HUB_NAME}': it is not in the local")
    assert len(error.strip().splitlines()) <= MAX_LINES
    assert "Traceback" not in result.stderr
    assert elapsed < 120  # the interpreter's start included, on a loaded machine; retries would take minutes
