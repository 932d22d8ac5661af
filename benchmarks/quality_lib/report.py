"""From the runs to the verdict: knob selection on validation, means with 95% t-intervals, the markdown table."""

from __future__ import annotations

from collections.abc import Sequence

from quality_lib.settings import Method, Settings
from quality_lib.stats import Interval, mean_interval

METRICS = (
    ("gold", "test gold reward", 2),
    ("win_rate", "win rate vs reference", 3),
    ("kl", "KL(π‖π_ref) (nats)", 2),
    ("accuracy", "held-out pref. accuracy", 3),
)
BASELINE = "dpo"


def select(runs: Sequence[dict], settings: Settings) -> dict[tuple[int, str, str], dict]:
    """For each seed, regime and method, the run whose knob value gave the highest validation gold reward.

    Ties go to the earlier value of the sweep. Only the validation prompts decide; the test numbers of the chosen
    run are what the tables report.

    Returns:
        ``(seed, regime, method) → run``.
    """
    chosen: dict[tuple[int, str, str], dict] = {}
    order = {(m.key, v): i for m in settings.methods for i, v in enumerate(m.values)}
    for run in sorted(runs, key=lambda r: order[(r["method"], r["value"])]):
        key = (run["seed"], run["regime"], run["method"])
        if key not in chosen or run["val_gold"] > chosen[key]["val_gold"]:
            chosen[key] = run
    return chosen


def summarise(chosen: dict[tuple[int, str, str], dict], settings: Settings) -> dict[tuple[str, str], dict]:
    """Per regime and method: an :class:`Interval` over seeds for every metric, and the knob values chosen."""
    table = {}
    for regime in settings.regimes:
        for method in settings.methods:
            runs = [chosen[(seed, regime.key, method.key)] for seed in settings.seeds]
            entry: dict = {name: mean_interval([r[name] for r in runs]) for name, _, _ in METRICS}
            entry["chosen"] = [r["value"] for r in runs]
            table[(regime.key, method.key)] = entry
    return table


def frontier_slopes(runs: Sequence[dict], settings: Settings) -> dict[str, float]:
    """Per regime: the slope of DPO's gold reward in KL between its two extreme β values (means over seeds).

    DPO's knob trades gold reward for KL; a method that lands further along that trade-off gains gold reward by
    spending KL. ``Δ gold − slope · Δ KL`` removes that part of a difference from DPO (a linear approximation of
    DPO's frontier, meaningful where DPO's β values differ clearly in KL).
    """
    baseline = next(m for m in settings.methods if m.key == BASELINE)
    low, high = min(baseline.values), max(baseline.values)
    slopes = {}
    for regime in settings.regimes:
        points = {}
        for value in (low, high):
            group = [r for r in runs if (r["regime"], r["method"], r["value"]) == (regime.key, BASELINE, value)]
            points[value] = (sum(r["kl"] for r in group) / len(group), sum(r["gold"] for r in group) / len(group))
        d_kl = points[low][0] - points[high][0]
        slopes[regime.key] = (points[low][1] - points[high][1]) / d_kl if abs(d_kl) > 1e-9 else 0.0
    return slopes


def differences(
    chosen: dict[tuple[int, str, str], dict], settings: Settings, slopes: dict[str, float]
) -> dict[tuple[str, str], dict]:
    """Per regime and method: paired (same seed, same data, same reference) differences from DPO, with intervals.

    ``gold_adjusted`` is the gold-reward difference less what DPO's own frontier gives for the KL difference
    (see :func:`frontier_slopes`).
    """
    out = {}
    for regime in settings.regimes:
        slope = slopes[regime.key]
        for method in settings.methods:
            if method.key == BASELINE:
                continue
            pairs = [
                (chosen[(seed, regime.key, method.key)], chosen[(seed, regime.key, BASELINE)])
                for seed in settings.seeds
            ]
            entry = {name: mean_interval([run[name] - base[name] for run, base in pairs]) for name, _, _ in METRICS}
            entry["gold_adjusted"] = mean_interval(
                [(run["gold"] - base["gold"]) - slope * (run["kl"] - base["kl"]) for run, base in pairs]
            )
            out[(regime.key, method.key)] = entry
    return out


def reference_interval(references: Sequence[dict]) -> Interval:
    """Mean test gold reward of the SFT reference's samples, over seeds."""
    return mean_interval([sum(r["test_rewards"]) / len(r["test_rewards"]) for r in references])


def _chosen_text(method: Method, values: Sequence[float]) -> str:
    counts = {value: values.count(value) for value in method.values}
    return ", ".join(f"{method.knob_label(v)}×{n}" for v, n in counts.items() if n)


def markdown(settings: Settings, runs: Sequence[dict], references: Sequence[dict], info: dict) -> str:
    """The generated results page: settings, the table of every method × regime, paired differences from DPO."""
    chosen = select(runs, settings)
    slopes = frontier_slopes(runs, settings)
    table, diffs = summarise(chosen, settings), differences(chosen, settings, slopes)
    ref = reference_interval(references)
    seeds = len(settings.seeds)
    lines = [
        "# Quality benchmark: every method on the synthetic task with a gold reward",
        "",
        f"Generated by `benchmarks/quality.py{' --quick' if info.get('quick') else ''}`: {info['machine']}; "
        f"{info['workers']} worker processes × 1 thread; wall time {info['wall_seconds'] / 60:.1f} min "
        f"({len(runs)} preference runs, {len(references)} SFT runs).",
        "",
        f"Seeds: {seeds} ({', '.join(map(str, settings.seeds))}); SFT {settings.sft_steps} steps (lr "
        f"{settings.sft_lr:g}); each method {settings.steps} steps of {settings.batch_size} pairs (AdamW lr "
        f"{settings.lr:g}, {settings.warmup_steps} warm-up steps); test: {settings.test_pairs} prompts (one sample "
        f"each, temperature 1, at most {settings.max_new_tokens} tokens) and {settings.test_pairs} gold-ordered "
        f"pairs; knob chosen per seed by the mean gold reward of samples on {settings.val_prompts} validation "
        "prompts.",
        "",
        "Means over seeds with 95% Student-t intervals `mean [low, high]`. Reference (SFT) test gold reward: "
        f"{ref.text()}.",
        "",
        "| regime | method | knob chosen (seeds) | " + " | ".join(title for _, title, _ in METRICS) + " |",
        "|---|---|---|" + "---:|" * len(METRICS),
    ]
    for regime in settings.regimes:
        for method in settings.methods:
            entry = table[(regime.key, method.key)]
            cells = [entry[name].text(digits) for name, _, digits in METRICS]
            lines.append(
                f"| {regime.name} | {method.name} | {_chosen_text(method, entry['chosen'])} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        "Paired differences from DPO (same seed, data and reference; method − DPO), means over seeds with 95% "
        "t-intervals. *Δ gold at equal KL* subtracts from Δ gold what DPO's own β trade-off gives for the Δ KL "
        "(slope of DPO's mean gold reward in KL between its two β: "
        + ", ".join(f"{r.name} {slopes[r.key]:.2f}" for r in settings.regimes)
        + " per nat):",
        "",
        "| regime | method | " + " | ".join(f"Δ {title}" for _, title, _ in METRICS) + " | Δ gold at equal KL |",
        "|---|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for (regime_key, method_key), entry in diffs.items():
        regime = next(r for r in settings.regimes if r.key == regime_key)
        method = next(m for m in settings.methods if m.key == method_key)
        cells = [entry[name].text(digits) for name, _, digits in METRICS] + [entry["gold_adjusted"].text()]
        lines.append(f"| {regime.name} | {method.name} | " + " | ".join(cells) + " |")
    lines += ["", "Every knob value (means over seeds; how often validation chose it):", ""]
    lines += _all_runs(settings, runs, chosen)
    return "\n".join(lines) + "\n"


def _all_runs(settings: Settings, runs: Sequence[dict], chosen: dict) -> list[str]:
    lines = [
        "| regime | method | knob | val gold (mean over seeds) | test gold | KL | accuracy |",
        "|---|---|---|" + "---:|" * 4,
    ]
    for regime in settings.regimes:
        for method in settings.methods:
            for value in method.values:
                group = [r for r in runs if (r["regime"], r["method"], r["value"]) == (regime.key, method.key, value)]
                picked = sum(chosen[(r["seed"], regime.key, method.key)] is r for r in group)
                label = method.knob_label(value) + (f" (chosen {picked}/{len(group)})" if picked else "")
                stats = [sum(r[k] for r in group) / len(group) for k in ("val_gold", "gold", "kl", "accuracy")]
                lines.append(
                    f"| {regime.name} | {method.name} | {label} | "
                    + " | ".join(f"{s:.3f}" if i == 3 else f"{s:.2f}" for i, s in enumerate(stats))
                    + " |"
                )
    return lines
