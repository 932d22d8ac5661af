"""Plots of a run's CSV logs: ``python -m betadpo_lightning.commands.plot RUN [--output DIR]`` (or ``betadpo-plot``).

``RUN`` is a run's ``default_root_dir`` (``runs/quickstart``) or one log folder holding ``metrics.csv``
(``runs/quickstart/logs/version_0``). In a run folder, every command writes its own ``logs/version_N``: the plots
join the folders of the run's latest fit, in order, resumes included (a fit resumed with ``--ckpt_path`` continues
the fit before it; a step logged by both keeps the resumed run's value, and what the earlier part logged from the
resumed step on is replaced), and leave out the folders of ``validate`` and ``test`` (their logs hold no ``train/``
metric) and of earlier fits started over. One PNG per quantity goes to ``--output`` (default: ``RUN/plots``): loss,
reward accuracy and reward margins over optimizer steps for training and validation, and for β-DPO the batch β, the
margin statistics M0 and σ and the fraction of pairs kept. A quantity the run did not log is skipped. Needs
matplotlib (``pip install 'betadpo-lightning[plot]'``).
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

from betadpo_lightning.atomic import atomic_write

__all__ = [
    "PLOTS",
    "Plot",
    "RunLogs",
    "find_log_dir",
    "find_run_logs",
    "join_metrics",
    "main",
    "plot_run",
    "read_metrics",
]


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


@dataclass(frozen=True)
class RunLogs:
    """The log folders of one run, oldest first, and those of the run folder that were left out.

    Attributes:
        folders: the folders whose ``metrics.csv`` are joined (one, unless the run was resumed).
        left_out: the other log folders, with the reason (``"validate or test"``, ``"an earlier run"``).
    """

    folders: tuple[Path, ...]
    left_out: tuple[tuple[Path, str], ...] = ()


def find_run_logs(run: Path) -> RunLogs:
    """The log folders to plot: ``run`` itself when it holds ``metrics.csv``, else its latest fit's folders.

    The ``logs/version_N`` (or ``version_N``) folders with a ``metrics.csv`` are taken in version order. A folder
    without any ``train/`` column is a ``validate`` or ``test`` run's and is left out. A fit's folder continues the
    fit before it when it was resumed: its ``config.yaml`` (written by the command line) names a ``ckpt_path``, or,
    without one (SLURM resumes without ``--ckpt_path``), its first logged step comes after the first step of that
    fit. Otherwise it starts a new run, and the folders before it are left out.

    Raises:
        PlotError: when no folder holds a ``metrics.csv`` of a fit.
    """
    if (run / "metrics.csv").is_file():
        return RunLogs((run,))
    versions = [p for pattern in ("logs/version_*", "version_*") for p in run.glob(pattern) if p.is_dir()]
    versions = sorted((p for p in versions if (p / "metrics.csv").is_file()), key=lambda p: (_version(p), _mtime(p)))
    if not versions:
        raise PlotError(
            f"no metrics.csv in {run} nor in {run / 'logs' / 'version_N'}: give a run's log folder (with metrics.csv, "
            "written by the CSV logger) or its default_root_dir"
        )
    fits = [p for p in versions if _has_training(p / "metrics.csv")]
    left_out = [(p, "validate or test") for p in versions if p not in fits]
    if not fits:
        raise PlotError(f"no fit in {run}: its metrics.csv files hold no train/ metric (validate or test runs only)")
    start, first_step = 0, _first_step(fits[0])
    for index, folder in enumerate(fits[1:], 1):
        step = _first_step(folder)
        if not _resumed(folder) and (step is None or first_step is None or step <= first_step):
            left_out += [(p, "an earlier run") for p in fits[start:index]]
            start, first_step = index, step
    return RunLogs(tuple(fits[start:]), tuple(sorted(left_out, key=lambda item: _version(item[0]))))


def find_log_dir(run: Path) -> Path:
    """The newest log folder of the run :func:`find_run_logs` finds (``run`` itself when it holds ``metrics.csv``).

    Raises:
        PlotError: when there is none.
    """
    return find_run_logs(run).folders[-1]


def _version(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _has_training(path: Path) -> bool:
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return any(column.startswith("train/") for column in header)


def _first_step(folder: Path) -> float | None:
    steps = [steps[0] for steps, _ in read_metrics(folder / "metrics.csv").values() if steps]
    return min(steps) if steps else None


def _resumed(folder: Path) -> bool:
    """Whether the command line's ``config.yaml`` of this log folder names a checkpoint the fit resumed from."""
    path = folder / "config.yaml"
    if not path.is_file():
        return False
    try:
        import yaml

        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # an unreadable config says nothing: the steps decide
        return False
    return isinstance(config, dict) and config.get("ckpt_path") not in (None, "")


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


def join_metrics(folders: Sequence[Path]) -> Series:
    """The series of a run logged in several folders (oldest first): :func:`read_metrics` of each, joined.

    A folder takes over from the first training step it logged: the values of earlier folders from that step on are
    dropped (the resumed run replaced them); a step logged twice keeps the later value (a validation that the
    resumed run repeats at the step it resumed from).
    """
    joined: dict[str, dict[float, float]] = {}
    for folder in folders:
        series = read_metrics(folder / "metrics.csv")
        training = [steps[0] for column, (steps, _) in series.items() if steps and column.startswith("train/")]
        starts = training or [steps[0] for steps, _ in series.values() if steps]
        if not starts:
            continue
        first = min(starts)
        for points in joined.values():
            for step in [step for step in points if step >= first]:
                del points[step]
        for column, (steps, values) in series.items():
            joined.setdefault(column, {}).update(zip(steps, values, strict=True))
    result: Series = {}
    for column, points in joined.items():
        ordered = sorted(points.items())
        if ordered:
            result[column] = ([step for step, _ in ordered], [value for _, value in ordered])
    return result


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def plot_run(logs: Path | Sequence[Path], output: Path) -> list[Path]:
    """Draw the :data:`PLOTS` that the logs have data for into ``output``; return the files written.

    Args:
        logs: a folder holding ``metrics.csv``, or the folders of one run, oldest first (:func:`join_metrics`).
        output: the folder of the PNGs.

    Raises:
        PlotError: without matplotlib.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotError("plots need matplotlib: pip install 'betadpo-lightning[plot]'") from error
    series = join_metrics([logs] if isinstance(logs, Path) else logs)
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
        atomic_write(path, lambda file, figure=figure: figure.savefig(file, format="png", dpi=100))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (0: plotted, 1: nothing to plot or matplotlib missing)."""
    parser = argparse.ArgumentParser(
        prog="python -m betadpo_lightning.commands.plot", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run", type=Path, help="a run's default_root_dir, or a log folder with metrics.csv")
    parser.add_argument("--output", type=Path, default=None, help="folder of the PNGs (default: RUN/plots)")
    args = parser.parse_args(argv)
    try:
        logs = find_run_logs(args.run)
        written = plot_run(logs.folders, args.output if args.output is not None else args.run / "plots")
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    files = ", ".join(str(folder / "metrics.csv") for folder in logs.folders)
    if not written:
        print(
            f"error: {files} {'has' if len(logs.folders) == 1 else 'have'} none of the plotted metrics", file=sys.stderr
        )
        return 1
    print(f"{len(written)} plots of {files} in {written[0].parent}:")
    for path in written:
        print(f"  {path.name}")
    for folder, reason in logs.left_out:
        print(f"  (left out {folder}: {reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
