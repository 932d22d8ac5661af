"""Ctrl-C and SIGTERM end a fit after an optimizer step with a resumable last.ckpt and exit status 130 / 143; a
second Ctrl-C aborts at once; on two ranks a signal to either one stops both at the same step, within seconds."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback, PreferenceCheckpoint
from betadpo_lightning.callbacks.stop_signals import SignalStop
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.training.module import PreferenceModule
from helpers.recorder import Recorder
from helpers.signals import SignalAt
from helpers.tiny import TINY_LLAMA, RandomPairsData
from helpers.trainers import quiet_trainer

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _fit(folder: Path, max_steps: int, *callbacks: pl.Callback, ckpt_path: str | None = None) -> PreferenceModule:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    controller = DynamicBetaCallback(BetaDPOController(rho=0.25, seed=4))
    checkpoint = PreferenceCheckpoint(dirpath=str(folder))
    trainer = quiet_trainer(
        folder, max_steps, [controller, checkpoint, *callbacks], enable_checkpointing=True, limit_val_batches=0
    )
    trainer.fit(module, datamodule=RandomPairsData(size=20, batch_size=3), ckpt_path=ckpt_path)
    return module


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_and_the_resume_equals_an_uninterrupted_run(tmp_path, signum, code):
    """Stopped after step 3 (mid-epoch: 10 pairs a rank, batches of 3), last.ckpt holds step 3, the handlers are
    given back, and resuming it to step 6 gives the uninterrupted run's weights bit for bit."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    full = _fit(tmp_path / "full", 6)
    with pytest.raises(SignalStop) as stop:
        _fit(tmp_path / "stopped", 6, SignalAt(step=3, signum=int(signum)))
    assert stop.value.code == code
    assert stop.value.step == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    last = tmp_path / "stopped" / "last.ckpt"
    assert _step(last) == 3
    resumed = _fit(tmp_path / "stopped", 6, ckpt_path=str(last))
    for (name, a), b in zip(full.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _cli(run: Path, *extra: str) -> list[str]:
    args = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    args += [f"--trainer.default_root_dir={run}", f"--data.cache_dir={run.parent / 'cache'}"]
    args += ["--data.synthetic.train_size=64", "--data.synthetic.validation_size=8", "--trainer.val_check_interval=4"]
    return [*args, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(TESTS)}


def test_the_quickstart_stopped_by_sigterm_resumes_with_ckpt_path_last(tmp_path):
    """SIGTERM from outside, once step 3 is passed: exit status 143 within seconds, last.ckpt at the step it stopped
    after; `--ckpt_path last` then continues from there to max_steps."""
    run, marker = tmp_path / "run", tmp_path / "ready"
    helper = ["--trainer.callbacks+=helpers.signals.SignalAt", "--trainer.callbacks.step=3"]
    command = _cli(run, "--trainer.max_steps=100000", *helper, f"--trainer.callbacks.marker={marker}")
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{marker}.0").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Path(f"{marker}.0").exists(), f"no step 3 in 120 s (exit status {proc.poll()})"
        os.kill(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert time.monotonic() - sent < 30
    last = run / "checkpoints" / "last.ckpt"
    stopped = _step(last)
    assert stopped >= 3
    assert f"Stopped by SIGTERM after step {stopped}; {last} written: continue with --ckpt_path last." in err
    done = subprocess.run(
        _cli(run, f"--trainer.max_steps={stopped + 2}", "--ckpt_path=last"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in done.stderr
    assert _step(last) == stopped + 2


def test_a_second_ctrl_c_aborts_at_once_without_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    helper = ["--trainer.callbacks+=helpers.signals.SignalAt", "--trainer.callbacks.step=3"]
    command = _cli(run, "--trainer.max_steps=100000", *helper, "--trainer.callbacks.times=2")
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "press Ctrl-C again to abort without a checkpoint" in proc.stderr
    assert "Detected KeyboardInterrupt" in proc.stderr
    assert not (run / "checkpoints" / "last.ckpt").exists()


@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("launcher", "rank"), [("lightning", 1), ("torchrun", 0)])
def test_sigterm_to_one_rank_stops_both_at_the_same_step(tmp_path, launcher, rank):
    """SIGTERM to one rank only: both ranks stop after the same optimizer step, exit with status 143 (torchrun then
    reports the failure) within seconds instead of waiting in a collective, and last.ckpt holds that step."""
    script = TESTS / "scripts" / "stop_two_ranks.py"
    if launcher == "lightning":
        command = [sys.executable, str(script), str(tmp_path)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        command += [str(script), str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        marker = tmp_path / f"ready.{rank}"
        deadline = time.monotonic() + 150
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"no step 2 in 150 s (exit status {proc.poll()})"
        os.kill(json.loads(marker.read_text())["pid"], signal.SIGTERM)
        sent = time.monotonic()
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert time.monotonic() - sent < 60, output[-3000:]
    assert proc.returncode == (143 if launcher == "lightning" else 1), output[-3000:]
    ends = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [end["code"] for end in ends] == [143, 143], output[-3000:]
    assert ends[0]["step"] == ends[1]["step"] >= 2
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == ends[0]["step"]


def test_slurm_requeue_signal_requeues_at_the_step_and_the_requeued_run_resumes(tmp_path, monkeypatch):
    """Under SLURM (srun's variables, Lightning's SLURMEnvironment with auto_requeue), SIGUSR1 after step 3 runs
    Lightning's requeue at the step boundary: hpc_ckpt_1.ckpt at step 3 in default_root_dir and `scontrol requeue
    <job>` (a stand-in records the call), then last.ckpt and exit status 138. The same fit started again without
    ckpt_path resumes from hpc_ckpt_1.ckpt, as a requeued job does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.log"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    slurm |= {"SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    with pytest.raises(SignalStop) as stop:
        _fit(run, 6, SignalAt(step=3, signum=int(signal.SIGUSR1)))
    assert stop.value.code == 128 + signal.SIGUSR1
    assert calls.read_text().split() == ["requeue", "4242"]
    assert _step(run / "hpc_ckpt_1.ckpt") == _step(run / "last.ckpt") == 3
    recorder = Recorder()
    _fit(run, 5, recorder)  # no ckpt_path: Lightning finds the HPC checkpoint under SLURM
    assert len(recorder.losses) == 2  # steps 4 and 5 only
    assert _step(run / "last.ckpt") == 5
