"""Figures of the quality benchmark: gold reward against KL, and β-DPO's controller over training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from quality_lib.report import reference_interval, select, summarise
from quality_lib.settings import Settings

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gold_vs_kl(settings: Settings, runs: Sequence[dict], references: Sequence[dict], path: Path) -> None:
    """One panel per regime: every run as a faint point, each method's chosen runs as a mean with 95% intervals."""
    plt = _pyplot()
    chosen = select(runs, settings)
    table = summarise(chosen, settings)
    ref = reference_interval(references)
    fig, axes = plt.subplots(1, len(settings.regimes), figsize=(5.2 * len(settings.regimes), 4.4), squeeze=False)
    for ax, regime in zip(axes[0], settings.regimes, strict=True):
        for index, method in enumerate(settings.methods):
            color, marker = COLORS[index % len(COLORS)], MARKERS[index % len(MARKERS)]
            group = [r for r in runs if r["regime"] == regime.key and r["method"] == method.key]
            ax.scatter(
                [r["kl"] for r in group], [r["gold"] for r in group], color=color, marker=marker, alpha=0.25, s=18
            )
            entry = table[(regime.key, method.key)]
            gold, kl = entry["gold"], entry["kl"]
            ax.errorbar(
                kl.mean,
                gold.mean,
                xerr=[[kl.mean - kl.low], [kl.high - kl.mean]],
                yerr=[[gold.mean - gold.low], [gold.high - gold.mean]],
                color=color,
                marker=marker,
                markersize=8,
                capsize=3,
                label=method.name,
            )
        ax.errorbar(0.0, ref.mean, yerr=[[ref.mean - ref.low], [ref.high - ref.mean]], color="black", marker="*",
                    markersize=10, capsize=3, label="reference (SFT)")  # fmt: skip
        ax.set_title(regime.name)
        ax.set_xlabel("KL(policy ‖ reference), nats per response")
        ax.set_ylabel("mean gold reward of test samples")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Gold reward against KL (faint: every run and knob value; bold: chosen on validation, 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _nan_free(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def beta_dpo_traces(settings: Settings, runs: Sequence[dict], path: Path) -> None:
    """β/β0, the batch gap mean and std, and the kept fraction over steps for β-DPO's chosen runs, every seed."""
    plt = _pyplot()
    chosen = select(runs, settings)
    variants = [m for m in settings.methods if m.controller == "beta_dpo"]
    rows = (("β / β0", ("beta",)), ("batch gap: mean (solid), std (dashed)", ("beta/gap_mean", "beta/gap_std")),
            ("kept fraction", ("beta/kept_fraction",)))  # fmt: skip
    fig, axes = plt.subplots(len(rows), len(settings.regimes), figsize=(5.2 * len(settings.regimes), 8.4),
                             squeeze=False, sharex=True)  # fmt: skip
    for column, regime in enumerate(settings.regimes):
        for index, method in enumerate(variants):
            color = COLORS[(index + 2) % len(COLORS)]
            for n, seed in enumerate(settings.seeds):
                run = chosen[(seed, regime.key, method.key)]
                trace = run["trace"]
                label = method.name if n == 0 else None
                for row, (_, keys) in enumerate(rows):
                    for key, style in zip(keys, ("-", "--"), strict=False):
                        if key not in trace:
                            continue
                        scale = run["value"] if key == "beta" else 1.0
                        xs, ys = _nan_free(trace["step"], [v / scale for v in trace[key]])
                        axes[row][column].plot(xs, ys, style, color=color, alpha=0.7, lw=1.2,
                                               label=label if style == "-" else None)  # fmt: skip
        axes[0][column].set_title(regime.name)
        for row, (title, _) in enumerate(rows):
            axes[row][column].set_ylabel(title)
            axes[row][column].grid(alpha=0.3)
        axes[-1][column].set_xlabel("optimizer step")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("β-DPO's controller over training (chosen β0 per seed; one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
