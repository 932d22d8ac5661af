"""``python -m betadpo_lightning.commands.plot``: which log folder it reads, the PNGs it writes from a Lightning
metrics.csv,
and a clear message for a folder without logs or without matplotlib (the plots of a real run: test_run_summary.py)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from betadpo_lightning.commands.plot import (
    PlotError,
    find_log_dir,
    find_run_logs,
    join_metrics,
    main,
    plot_run,
    read_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["epoch", "step", "train/loss", "train/beta", "val/loss", "val/rewards/accuracies"]


def _write_metrics(folder: Path, rows: list[dict]) -> Path:
    """A metrics.csv as Lightning's CSVLogger writes it: one row per logging call, empty cells for the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _dpo_rows() -> list[dict]:
    """Training logged after optimizer steps 1..4, validation after step 2 and 4 (Lightning writes step - 1)."""
    rows = [{"epoch": 0, "step": s, "train/loss": 0.69 - 0.01 * s, "train/beta": 0.1} for s in range(4)]
    rows.insert(2, {"epoch": 0, "step": 1, "val/loss": 0.68, "val/rewards/accuracies": 0.6})
    rows.append({"epoch": 0, "step": 3, "val/loss": 0.66, "val/rewards/accuracies": "nan"})
    return rows


def test_read_metrics_counts_optimizer_steps_and_skips_empty_and_nan(tmp_path):
    series = read_metrics(_write_metrics(tmp_path, _dpo_rows()))
    assert series["train/loss"][0] == [1.0, 2.0, 3.0, 4.0]
    assert series["val/loss"] == ([2.0, 4.0], [0.68, 0.66])
    assert series["val/rewards/accuracies"] == ([2.0], [0.6])
    assert "epoch" not in series
    assert "step" not in series


def test_find_log_dir_takes_the_folder_or_the_newest_version_of_a_run(tmp_path):
    for version in (0, 2, 10):
        _write_metrics(tmp_path / "logs" / f"version_{version}", _dpo_rows())
    (tmp_path / "logs" / "version_11").mkdir()  # no metrics.csv (a run that failed at once)
    assert find_log_dir(tmp_path) == tmp_path / "logs" / "version_10"
    assert find_log_dir(tmp_path / "logs") == tmp_path / "logs" / "version_10"
    assert find_log_dir(tmp_path / "logs" / "version_2") == tmp_path / "logs" / "version_2"


def test_plots_of_a_dpo_run(tmp_path, capsys):
    log_dir = tmp_path / "logs" / "version_0"
    _write_metrics(log_dir, _dpo_rows())
    assert main([str(tmp_path)]) == 0
    plots = tmp_path / "plots"  # a run folder's plots go beside its logs
    # a run without the β-DPO callback's statistics: those plots are skipped
    assert sorted(p.name for p in plots.iterdir()) == ["beta.png", "loss.png", "reward_accuracy.png"]
    for path in plots.iterdir():
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 1000
    out = capsys.readouterr().out
    assert out.startswith(f"3 plots of {log_dir / 'metrics.csv'} in {plots}:")


def test_output_folder(tmp_path):
    _write_metrics(tmp_path / "run", _dpo_rows())
    written = plot_run(tmp_path / "run", tmp_path / "out" / "pngs")
    assert [p.parent for p in written] == [tmp_path / "out" / "pngs"] * 3


def test_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no metrics.csv in {tmp_path} nor in {tmp_path / 'logs' / 'version_N'}")
    assert "default_root_dir" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(PlotError):
        find_log_dir(tmp_path / "does-not-exist")


def test_metrics_without_plotted_columns_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,lr-AdamW\n0,0,0.001\n", encoding="utf-8")
    assert main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {path} has none of the plotted metrics"
    assert not (tmp_path / "plots").exists() or not any((tmp_path / "plots").iterdir())


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, capsys, monkeypatch):
    _write_metrics(tmp_path, _dpo_rows())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: plots need matplotlib: pip install 'betadpo-lightning[plot]'"
    assert not (tmp_path / "plots").exists()


def test_a_log_folder_gets_its_plots_inside(tmp_path, capsys):
    _write_metrics(tmp_path / "logs" / "version_0", _dpo_rows())
    assert main([str(tmp_path / "logs" / "version_0")]) == 0
    assert (tmp_path / "logs" / "version_0" / "plots" / "loss.png").is_file()


def _rows(steps, loss, val_steps=(), val_loss=0.5) -> list[dict]:
    """Training rows after each optimizer step of ``steps`` and validation rows after ``val_steps`` (as written)."""
    rows = [{"epoch": 0, "step": s - 1, "train/loss": loss(s), "train/beta": 0.1} for s in steps]
    rows += [{"epoch": 0, "step": s - 1, "val/loss": val_loss} for s in val_steps]
    return sorted(rows, key=lambda row: row["step"])


def _evaluation_rows(stage: str) -> list[dict]:
    return [{"epoch": 0, "step": 5, f"{stage}/loss": 9.0}]


def _config(folder: Path, ckpt_path: str | None) -> None:
    text = "ckpt_path: null\n" if ckpt_path is None else f"ckpt_path: {ckpt_path}\n"
    (folder / "config.yaml").write_text("seed_everything: 0\n" + text, encoding="utf-8")


def _write_test_metrics(folder: Path, stage: str) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(f"epoch,step,{stage}/loss,{stage}/pairs\n0,5,9.0,16\n", encoding="utf-8")


def test_a_resumed_run_is_joined_and_test_folders_are_left_out(tmp_path, capsys):
    """Fit to step 6 (validation at 3 and 6), a test, then a resume from step 3 to step 8: the plots show steps 1..3
    of the first part and 4..8 of the resumed one; the first part's steps 4..6 (replaced) and the test are gone."""
    logs = tmp_path / "logs"
    _write_metrics(logs / "version_0", _rows(range(1, 7), lambda s: 1.0, val_steps=(3, 6), val_loss=0.7))
    _config(logs / "version_0", None)
    _write_test_metrics(logs / "version_1", "test")
    _config(logs / "version_1", "last")
    _write_test_metrics(logs / "version_2", "val")  # a `validate`
    _write_metrics(logs / "version_3", _rows(range(4, 9), lambda s: 2.0, val_steps=(6,), val_loss=0.4))
    _config(logs / "version_3", "runs/x/checkpoints/step=3.ckpt")
    found = find_run_logs(tmp_path)
    assert found.folders == (logs / "version_0", logs / "version_3")
    assert [(p.name, why) for p, why in found.left_out] == [
        ("version_1", "validate or test"),
        ("version_2", "validate or test"),
    ]
    series = join_metrics(found.folders)
    assert series["train/loss"] == ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [1.0] * 3 + [2.0] * 5)
    assert series["val/loss"] == ([3.0, 6.0], [0.7, 0.4])
    assert "test/loss" not in series
    assert find_log_dir(tmp_path) == logs / "version_3"
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 plots of {logs / 'version_0' / 'metrics.csv'}, {logs / 'version_3' / 'metrics.csv'} in ")
    assert f"(left out {logs / 'version_1'}: validate or test)" in out


def test_a_step_logged_twice_keeps_the_later_value(tmp_path):
    """A resume that repeats the validation of the step it resumed from: the later value wins."""
    _write_metrics(tmp_path / "version_0", _rows(range(1, 5), lambda s: 1.0, val_steps=(2, 4), val_loss=0.7))
    _write_metrics(tmp_path / "version_1", _rows(range(3, 6), lambda s: 2.0, val_steps=(2,), val_loss=0.1))
    _config(tmp_path / "version_1", "last")
    series = join_metrics(find_run_logs(tmp_path).folders)
    assert series["val/loss"] == ([2.0], [0.1])  # val@4 of the first part is after the resume: replaced, not kept
    assert series["train/loss"] == ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 2.0, 2.0, 2.0])


def test_a_fit_started_over_leaves_the_earlier_run_out(tmp_path):
    """A fresh fit (no ckpt_path) in the same run folder starts a new run; a SLURM resume (no ckpt_path in its
    config, but it starts after the run's first step) continues it."""
    _write_metrics(tmp_path / "logs" / "version_0", _rows(range(1, 7), lambda s: 1.0))
    _config(tmp_path / "logs" / "version_0", None)
    _write_metrics(tmp_path / "logs" / "version_1", _rows(range(1, 4), lambda s: 2.0))
    _config(tmp_path / "logs" / "version_1", None)
    _write_metrics(tmp_path / "logs" / "version_2", _rows(range(3, 6), lambda s: 3.0))  # no config.yaml
    found = find_run_logs(tmp_path)
    assert [p.name for p in found.folders] == ["version_1", "version_2"]
    assert [(p.name, why) for p, why in found.left_out] == [("version_0", "an earlier run")]
    assert join_metrics(found.folders)["train/loss"] == ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 3.0, 3.0, 3.0])


def test_a_run_folder_with_only_test_logs_is_a_clear_error(tmp_path, capsys):
    _write_test_metrics(tmp_path / "logs" / "version_0", "test")
    assert main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: no fit in {tmp_path}: ")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_real_run_resumed_after_a_test_is_plotted_whole(tmp_path, capsys):
    """``fit`` to step 2, ``test``, ``fit --ckpt_path last`` to step 4 through the command line: the run folder's
    plots join the two fits and leave the test out."""
    from betadpo_lightning.commands.cli import main as cli

    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    base = ["--config", str(config), "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1"]
    base += ["--data.synthetic.train_size=32", "--data.synthetic.validation_size=8", "--data.batch_size=4"]
    base += [f"--trainer.default_root_dir={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}"]
    base += ["--trainer.enable_progress_bar=false"]
    cli(["fit", *base, "--trainer.max_steps=2"])
    cli(["test", *base, "--ckpt_path=last"])
    cli(["fit", *base, "--trainer.max_steps=4", "--ckpt_path=last"])
    logs = tmp_path / "logs"
    found = find_run_logs(tmp_path)
    assert found.folders == (logs / "version_0", logs / "version_2")
    assert found.left_out == ((logs / "version_1", "validate or test"),)
    series = join_metrics(found.folders)
    assert series["train/loss"][0] == [1.0, 2.0, 3.0, 4.0]
    assert series["val/loss"][0] == [2.0, 4.0]
    capsys.readouterr()
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "loss.png").is_file()
