"""The quality benchmark's pipeline end to end in its ``--quick`` mode (outputs, not the verdict)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from quality_lib.settings import METHODS, REGIMES  # noqa: E402
from quality_lib.stats import mean_interval, t_quantile  # noqa: E402

INTERVAL = re.compile(r"^(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]$")


def _table_rows(markdown: str) -> list[list[str]]:
    """Cells of the first table (the one with a cell per metric after the knob column)."""
    rows, started = [], False
    for line in markdown.splitlines():
        if line.startswith("| regime | method | knob chosen"):
            started = True
            continue
        if started and line.startswith("|---"):
            continue
        if started and not line.startswith("|"):
            break
        if started:
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_t_quantile_matches_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.95, 10) == pytest.approx(1.8125, abs=1e-4)
    interval = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert interval.low < interval.mean == 2.5 < interval.high


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_benchmark_writes_every_method_and_regime(tmp_path: Path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(BENCHMARKS / "quality.py"), "--quick", "--out", str(out)]
    command += ["--work", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=540, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "preference runs" in done.stdout
    assert "done in" in done.stdout

    for name in ("quality_table.md", "quality.json", "quality_gold_vs_kl.png", "quality_beta_dpo.png"):
        assert (out / name).stat().st_size > 0, name

    rows = _table_rows((out / "quality_table.md").read_text(encoding="utf-8"))
    expected = {(regime.name, method.name) for regime in REGIMES for method in METHODS}
    assert {(row[0], row[1]) for row in rows} == expected
    assert len(rows) == len(expected)
    for row in rows:
        for cell in row[3:]:
            match = INTERVAL.match(cell)
            assert match, f"not an interval: {cell!r} in {row}"
            centre, low, high = map(float, match.groups())
            assert all(math.isfinite(v) for v in (centre, low, high))
            assert low <= centre <= high, row

    record = json.loads((out / "quality.json").read_text(encoding="utf-8"))
    seeds = len(record["settings"]["seeds"])
    assert seeds >= 2
    assert len(record["runs"]) == seeds * len(REGIMES) * sum(len(m.values) for m in METHODS)
    for run in record["runs"]:
        for key in ("val_gold", "gold", "win_rate", "kl", "accuracy"):
            assert math.isfinite(run[key]), (key, run)
        assert 0.0 <= run["win_rate"] <= 1.0
        assert 0.0 <= run["accuracy"] <= 1.0
    beta_dpo = [run for run in record["runs"] if run["method"].startswith("beta_dpo")]
    assert all(run["trace"]["step"] and run["trace"]["beta/kept_fraction"] for run in beta_dpo)
