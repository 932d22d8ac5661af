"""``python -m betadpo_lightning.commands.plot``: which log folder it reads, the PNGs it writes from a Lightning
metrics.csv,
and a clear message for a folder without logs or without matplotlib (the plots of a real run: test_run_summary.py)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from betadpo_lightning.commands.plot import PlotError, find_log_dir, main, plot_run, read_metrics

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
    plots = log_dir / "plots"
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
