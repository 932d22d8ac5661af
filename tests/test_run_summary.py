"""The end of a run, as a user sees it: a tiny β-DPO fit through the CLI (the quickstart with tiny overrides, in its
own process so that everything it prints is captured) prints the run summary, a step progress bar and none of the
libraries' known noise; the summary's export and plot commands work; the TensorBoard quickstart writes events."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from betadpo_lightning.commands.plot import PLOTS, read_metrics
from betadpo_lightning.commands.run_summary import RunSummary

ROOT = Path(__file__).parents[1]
CLI = ROOT / "cli.py"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TENSORBOARD = ROOT / "configs" / "quickstart_tensorboard.yaml"
TIMEOUT_S = 600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 4
TINY = [
    f"--trainer.max_steps={STEPS}",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--data.synthetic.train_size=64",
    "--data.synthetic.validation_size=8",
    "--data.batch_size=4",
]
DRIVER = """
import json, sys
from betadpo_lightning.commands.cli import main
out, sys.argv[1:] = sys.argv[1], sys.argv[2:]
trainer = main().trainer
metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if v.numel() == 1}
json.dump({"metrics": metrics, "global_step": trainer.global_step}, open(out, "w"))
"""
"""Runs the CLI on its arguments (as ``cli.py`` does) and writes the final metrics that the summary should show."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BETADPO_TRACEBACK"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="120")
    return env


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    """The tiny quickstart fit: its folder, stdout, stderr and final metrics."""
    root = tmp_path_factory.mktemp("quickstart-run")
    report = root / "final.json"
    args = ["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.default_root_dir={root}"]
    args += [f"--data.cache_dir={root / 'cache'}"]
    result = _run([sys.executable, "-c", DRIVER, str(report), *args], cwd=root)
    return root, result.stdout, result.stderr, json.loads(report.read_text())


def _summary(stdout: str) -> list[str]:
    start = stdout.rindex("Run finished at step")
    return stdout[start:].strip().splitlines()


def _field(lines: list[str], name: str) -> str:
    (line,) = [line for line in lines if line.startswith(f"{name} ")]
    return line[len(name) :].strip()


@pytest.mark.slow
def test_summary_shows_the_final_metrics_and_where_things_are(fit_run):
    root, stdout, _, final = fit_run
    assert final["global_step"] == STEPS
    lines = _summary(stdout)
    assert lines[0] == f"Run finished at step {STEPS} (last validation at step {STEPS})."
    values = dict(line.split() for line in lines[1:] if line.startswith("  "))
    assert list(values) == ["val/loss", "val/rewards/accuracies", "val/rewards/margins", "train/beta"]
    for name, text in values.items():
        assert text == f"{final['metrics'][name]:.4g}", name
    log_dir = root / "logs" / "version_0"
    last = root / "checkpoints" / "last.ckpt"
    assert _field(lines, "logs") == str(log_dir)
    assert (log_dir / "metrics.csv").is_file()
    assert _field(lines, "checkpoint") == str(last)
    assert last.is_file()
    export = [
        "python",
        "-m",
        "betadpo_lightning.commands.export",
        "--ckpt_path",
        str(last),
        "--output_dir",
        str(root / "export"),
    ]
    assert _field(lines, "export") == shlex.join(export)
    sample = ["python", "-m", "betadpo_lightning.commands.sample", "--model", str(root / "export")]
    assert _field(lines, "sample") == shlex.join([*sample, "--chat_template", "false", "--prompt", "..."])
    assert _field(lines, "plots") == shlex.join(["python", "-m", "betadpo_lightning.commands.plot", str(root)])


@pytest.mark.slow
def test_progress_piped_to_a_file_is_one_line_per_logging_step(fit_run):
    _, stdout, stderr, _ = fit_run
    output = stdout + stderr
    for step in range(1, STEPS + 1):  # log_every_n_steps=1
        assert stdout.count(f"step {step}/{STEPS} (") == 1, stdout
    assert f"step {STEPS}/{STEPS} (100%) elapsed " in stdout
    assert "step/s" in output or "s/step" in output
    validations = [line for line in stdout.splitlines() if line.startswith("validation at step ")]
    assert [line.split(":")[0] for line in validations] == ["validation at step 2", "validation at step 4"]
    assert "\r" not in stdout  # no bar redrawn
    assert "v_num" not in output
    assert "Epoch 1/-2" not in output
    assert "Epoch 0" not in output


@pytest.mark.slow
def test_no_known_noise_in_the_output(fit_run):
    _, stdout, stderr, _ = fit_run
    output = stdout + stderr
    assert "💡 Tip" not in output
    assert "litlogger" not in output
    assert "isinstance(treespec, LeafSpec)" not in output
    for routine in ("GPU available", "TPU available", "Seed set", "Trainable params", "┏"):  # BETADPO_VERBOSE=1
        assert routine not in output, routine
    assert "PreferenceModule: 82.2 K trainable parameters, 82.2 K frozen" in stdout  # the model in one line
    assert "preference data 'train': 64/64 pairs kept" in output  # the library's own information stays


@pytest.mark.slow
def test_export_command_of_the_summary_runs(fit_run):
    root, stdout, _, _ = fit_run
    command = shlex.split(_field(_summary(stdout), "export"))
    assert command[0] == "python"
    _run([sys.executable, *command[1:]], cwd=root)
    assert (root / "export" / "config.json").is_file()
    assert (root / "export" / "tokenizer_config.json").is_file()


@pytest.mark.slow
def test_plot_command_of_the_summary_writes_the_pngs(fit_run):
    root, stdout, _, final = fit_run
    command = shlex.split(_field(_summary(stdout), "plots"))
    result = _run([sys.executable, *command[1:]], cwd=root)
    plots = root / "plots"
    names = [plot.name for plot in PLOTS]  # a β-DPO run logs them all
    assert sorted(p.stem for p in plots.glob("*.png")) == sorted(names)
    for name in names:
        data = (plots / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 1000, name
        assert f"  {name}.png" in result.stdout
    assert f"{len(names)} plots of {root / 'logs' / 'version_0' / 'metrics.csv'} in {plots}" in result.stdout
    # the x axis counts optimizer steps as the summary does: the last validation is at the last step
    series = read_metrics(root / "logs" / "version_0" / "metrics.csv")
    steps, values = series["val/loss"]
    assert steps == [2.0, 4.0]
    assert values[-1] == pytest.approx(final["metrics"]["val/loss"], rel=1e-6)
    assert series["train/loss"][0] == [float(step) for step in range(1, STEPS + 1)]


@pytest.mark.slow
def test_plot_command_takes_the_run_folder(fit_run, tmp_path):
    root, _, _, _ = fit_run
    _run(
        [sys.executable, "-m", "betadpo_lightning.commands.plot", str(root), "--output", str(tmp_path / "pngs")],
        cwd=tmp_path,
    )
    assert len(list((tmp_path / "pngs").glob("*.png"))) == len(PLOTS)


@pytest.mark.slow
def test_tensorboard_quickstart_writes_events_and_csv(tmp_path):
    """The config as shipped (its relative folders land in the working directory), with tiny overrides."""
    args = [sys.executable, str(CLI), "fit", "--config", str(TENSORBOARD), *TINY, "--trainer.enable_progress_bar=false"]
    args += [f"--data.cache_dir={tmp_path / 'cache'}"]
    result = _run(args, cwd=tmp_path)
    run = tmp_path / "runs" / "quickstart_tensorboard"
    events = list((run / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert events[0].stat().st_size > 0
    assert (run / "logs" / "version_0" / "metrics.csv").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    lines = _summary(result.stdout)
    assert lines[0] == f"Run finished at step {STEPS} (last validation at step {STEPS})."
    assert {_line.split()[-1] for _line in lines if _line.startswith("logs ")} == {
        str(Path("runs/quickstart_tensorboard/logs/version_0")),
        str(Path("runs/quickstart_tensorboard/tensorboard/version_0")),
    }
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert "val/loss" in scalars
    assert "train/beta" in scalars


def test_summary_without_a_checkpoint_says_so(tmp_path):
    """A Trainer without a checkpoint callback: the summary says none was written and offers no export command."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    text = RunSummary().render(trainer)
    lines = text.splitlines()
    assert lines[0] == "Run finished at step 0."
    assert lines[1].startswith("checkpoint  none written")
    assert "export" not in text
    assert "plots" not in text
