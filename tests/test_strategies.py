"""The same tiny β-DPO run under DDP and under FSDP2 (ModelParallelStrategy) on two CPU ranks agrees.

Both strategies re-launch the script for rank 1, so each run is a launched script, not a pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups"),
]

SCRIPT = Path(__file__).parent / "scripts" / "fit_two_ranks.py"


def _run(kind: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{kind}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), kind, str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_fsdp2_matches_ddp(tmp_path):
    ddp, fsdp2 = _run("ddp", tmp_path), _run("fsdp2", tmp_path)
    assert ddp["checked"] == fsdp2["checked"] == 3  # β and controller state agreed across ranks at every step
    assert ddp["losses"][0] == pytest.approx(0.6931471805599453, abs=1e-6)
    assert fsdp2["losses"] == pytest.approx(ddp["losses"], rel=1e-5, abs=1e-6)
    assert fsdp2["betas"] == pytest.approx(ddp["betas"], rel=1e-5)
    assert len(set(ddp["betas"])) > 1  # β moved
    # Under FSDP2 the frozen copy is built sharded: each rank holds about half of it; under DDP a whole copy.
    assert fsdp2["reference_sharded"]
    assert fsdp2["reference_local_fraction"] < 0.6
    assert not ddp["reference_sharded"]
    assert ddp["reference_local_fraction"] == 1.0


def test_packed_batches_train_like_padded_ones_under_ddp_and_fsdp2(tmp_path):
    """The same pairs as prefix-shared packed segments instead of padded rows: equal losses, β and final weights to
    float32 tolerance on two ranks, under DDP and under FSDP2."""
    for kind in ("ddp", "fsdp2"):
        padded, packed = _run(kind, tmp_path), _run(f"{kind}_packed", tmp_path)
        assert packed["checked"] == 3
        assert packed["losses"] == pytest.approx(padded["losses"], rel=1e-5, abs=1e-6)
        assert packed["betas"] == pytest.approx(padded["betas"], rel=1e-5)
        assert packed["weights"] == pytest.approx(padded["weights"], rel=1e-4, abs=1e-6)


def _launch(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    script = Path(__file__).parent / "scripts" / "resume_two_ranks.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(out), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_resume_on_two_ranks_continues_exactly(tmp_path, strategy):
    """4 steps uninterrupted against 2 steps, a checkpoint, and a resume to 4 on two ranks: the same pairs, losses,
    β and final weights, bit for bit (the resume point is mid-epoch). Under FSDP2 the checkpoint is sharded: each
    rank writes and reads its shards of the policy and of the optimizer state."""
    full = _launch(tmp_path, "full", "4", "--strategy", strategy)
    first = _launch(tmp_path, "first", "2", "--strategy", strategy, "--save-dir", str(tmp_path / "ckpt"))
    (checkpoint,) = (tmp_path / "ckpt").glob("*step=2*.ckpt")
    assert checkpoint.is_dir() == (strategy == "fsdp2")  # sharded: a folder of per-rank files
    second = _launch(tmp_path, "second", "4", "--strategy", strategy, "--resume", str(checkpoint))
    assert first["pairs"] + second["pairs"] == full["pairs"]
    assert first["losses"] + second["losses"] == full["losses"]
    assert first["betas"] + second["betas"] == full["betas"]
    assert second["params"] == full["params"]
    assert second["controller_steps"] == full["controller_steps"] == 4
    assert len(set(full["betas"])) > 1
