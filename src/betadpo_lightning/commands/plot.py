"""Plots of a run's CSV logs: ``python -m betadpo_lightning.commands.plot RUN [--output DIR]`` (or ``betadpo-plot``).

``RUN`` is a log folder holding ``metrics.csv`` (``runs/quickstart/logs/version_0``) or a run's
``default_root_dir`` (``runs/quickstart``), whose newest ``logs/version_N`` is used. One PNG per quantity goes to
``--output`` (default ``<log folder>/plots``): loss, reward accuracy and reward margins over optimizer steps for
training and validation, and for β-DPO the batch β, the margin statistics M0 and σ and the fraction of pairs kept.
A quantity the run did not log is skipped. Needs matplotlib (``pip install 'betadpo-lightning[plot]'``).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PLOTS", "Plot", "find_log_dir", "main", "plot_run", "read_metrics"]


@dataclass(frozen=True)
class Plot:
    """One PNG: the columns drawn over ``step``.

    Attributes:
        name: the file name, without ``.png``.
        title: the figure's title.
        columns: the ``metrics.csv`` columns drawn, one line each.
    """

    name: str
    title: str
    columns: tuple[str, ...]


PLOTS: tuple[Plot, ...] = (
    Plot("loss", "Loss", ("train/loss", "val/loss")),
    Plot("reward_accuracy", "Reward accuracy", ("train/rewards/accuracies", "val/rewards/accuracies")),
    Plot("reward_margins", "Reward margins", ("train/rewards/margins", "val/rewards/margins")),
    Plot("beta", "β", ("train/beta",)),
    Plot("beta_m0", "β-DPO: running mean of the margins M0", ("train/beta/m0",)),
    Plot("beta_sigma", "β-DPO: running std of the margins σ", ("train/beta/sigma",)),
    Plot("kept_fraction", "β-DPO: fraction of pairs kept", ("train/beta/kept_fraction",)),
)
"""The plots drawn, in this order."""

Series = dict[str, tuple[list[float], list[float]]]
"""Column name -> (steps, values)."""


class PlotError(Exception):
    """A run folder without logs to plot, or matplotlib missing."""


def find_log_dir(run: Path) -> Path:
    """The folder of ``metrics.csv``: ``run`` itself, or the newest ``logs/version_N`` (or ``version_N``) in it.

    Raises:
        PlotError: when neither holds a ``metrics.csv``.
    """
    if (run / "metrics.csv").is_file():
        return run
    versions = [p for pattern in ("logs/version_*", "version_*") for p in run.glob(pattern) if p.is_dir()]
    versions = [p for p in versions if (p / "metrics.csv").is_file()]
    if not versions:
        raise PlotError(
            f"no metrics.csv in {run} nor in {run / 'logs' / 'version_N'}: give a run's log folder (with metrics.csv, "
            "written by the CSV logger) or its default_root_dir"
        )
    return max(versions, key=lambda p: (_version(p), p.stat().st_mtime))


def _version(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def read_metrics(path: Path) -> Series:
    """Every numeric column of a Lightning ``metrics.csv`` as ``(steps, values)``, rows without a value skipped.

    The steps are optimizer steps, as the run summary and the checkpoint names count them: Lightning writes a row
    logged at ``trainer.global_step`` N with ``step`` N - 1 (validation after step 100 is written at step 99).
    """
    series: Series = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = _float(row.get("step"))
            if step is None:
                continue
            step += 1
            for column, text in row.items():
                value = _float(text)
                if column not in ("step", "epoch") and value is not None:
                    steps, values = series.setdefault(column, ([], []))
                    steps.append(step)
                    values.append(value)
    return series


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def plot_run(log_dir: Path, output: Path) -> list[Path]:
    """Draw the :data:`PLOTS` that ``log_dir/metrics.csv`` has data for into ``output``; return the files written.

    Raises:
        PlotError: without matplotlib.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotError("plots need matplotlib: pip install 'betadpo-lightning[plot]'") from error
    series = read_metrics(log_dir / "metrics.csv")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in PLOTS:
        present = [column for column in plot.columns if column in series]
        if not present:
            continue
        figure = Figure(figsize=(6.4, 4.0), layout="constrained")
        axes = figure.subplots()
        for column in present:
            steps, values = series[column]
            marker = "o" if len(steps) < 30 else None  # sparse validation points stay visible
            axes.plot(steps, values, label=column, marker=marker, markersize=3)
        axes.set_title(plot.title)
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
        axes.legend()
        path = output / f"{plot.name}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (0: plotted, 1: nothing to plot or matplotlib missing)."""
    parser = argparse.ArgumentParser(
        prog="python -m betadpo_lightning.commands.plot", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run", type=Path, help="a log folder with metrics.csv, or a run's default_root_dir")
    parser.add_argument("--output", type=Path, default=None, help="folder of the PNGs (default: <log folder>/plots)")
    args = parser.parse_args(argv)
    try:
        log_dir = find_log_dir(args.run)
        written = plot_run(log_dir, args.output if args.output is not None else log_dir / "plots")
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not written:
        print(f"error: {log_dir / 'metrics.csv'} has none of the plotted metrics", file=sys.stderr)
        return 1
    print(f"{len(written)} plots of {log_dir / 'metrics.csv'} in {written[0].parent}:")
    for path in written:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
