"""The console scripts declared in pyproject.toml: each target imports, returns an exit code, and behaves as the
script that pip generates for it (``sys.exit(target())``) does."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SFT = ROOT / "configs" / "synthetic_sft.yaml"
EXPECTED = {"betadpo", "betadpo-sft", "betadpo-export", "betadpo-sample", "betadpo-plot"}
TIMEOUT_S = 300


def _scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["scripts"]


def _target(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _run_script(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """What the generated ``name`` script does: import the target, ``sys.exit`` with what it returns."""
    module, _, function = _scripts()[name].partition(":")
    code = f"import sys; from {module} import {function}; sys.argv[0] = {name!r}; sys.exit({function}())"
    env = {k: v for k, v in os.environ.items() if k != "BETADPO_TRACEBACK"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_the_scripts_are_declared():
    assert set(_scripts()) >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_script_resolves_to_a_function_returning_an_exit_code(name):
    target = _target(_scripts()[name])
    assert callable(target)
    # the generated script passes the return value to sys.exit: anything but an int (or None) is printed and exits 1
    assert typing.get_type_hints(target)["return"] is int, f"{name} -> {_scripts()[name]} does not return an int"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_script_shows_its_help(name, tmp_path):
    result = _run_script(name, ["fit", "--help"] if name in ("betadpo", "betadpo-sft") else ["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout.lower()


@pytest.mark.slow
def test_betadpo_script_exits_zero_after_a_successful_command(tmp_path):
    args = ["validate", "--config", str(QUICKSTART), "--data.synthetic.train_size=16"]
    args += ["--data.synthetic.validation_size=8", "--data.batch_size=4", "--trainer.logger=false"]
    args += ["--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    args += [f"--data.cache_dir={tmp_path / 'cache'}"]
    result = _run_script("betadpo", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BetaDPOCLI object" not in result.stderr
    assert "val/loss" in result.stdout


@pytest.mark.slow
def test_betadpo_sft_script_exits_zero_after_a_successful_command(tmp_path):
    args = ["validate", "--config", str(SFT), "--data.synthetic.train_size=16"]
    args += ["--data.synthetic.validation_size=8", "--data.batch_size=4", "--trainer.logger=false"]
    args += ["--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    args += [f"--data.cache_dir={tmp_path / 'cache'}", f"--model.output_dir={tmp_path / 'model'}"]
    result = _run_script("betadpo-sft", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SFTCLI object" not in result.stderr


@pytest.mark.slow
def test_betadpo_script_exit_code_of_a_mistake(tmp_path):
    result = _run_script("betadpo", ["fit", "--config", str(QUICKSTART), "--model.bta", "0.1"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown option --model.bta\n")


@pytest.mark.slow
def test_betadpo_plot_script_exit_code_without_logs(tmp_path):
    result = _run_script("betadpo-plot", [str(tmp_path)], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: no metrics.csv in {tmp_path}")
