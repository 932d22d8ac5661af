"""One live run per run folder: ``run.lock`` (pid, host, start time; O_EXCL; stale locks taken over), a second live
run refused naming the folder and the holder, a fresh fit over an earlier run's checkpoints refused unless
``--overwrite_run true`` moves them aside, and no abbreviated options."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from betadpo_lightning.callbacks import PreferenceCheckpoint
from betadpo_lightning.commands import run_folder
from betadpo_lightning.commands.cli import main
from betadpo_lightning.commands.cli_errors import CLIError
from betadpo_lightning.commands.run_folder import checkpoint_folders, guard_run_folder
from betadpo_lightning.commands.run_lock import LOCK_NAME, LockHolder, RunFolderBusy, RunLock

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SRC = ROOT / "src"
SUBPROCESS_TIMEOUT_S = 60


def _sleeper() -> subprocess.Popen:
    """A live process of this host that is not this one."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    return process.pid


def _write_lock(folder: Path, pid: int, host: str | None = None, started: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "time": started or time.time(), "command": "fit"}
    path = folder / LOCK_NAME
    path.write_text(json.dumps(holder), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------ the lock


def test_the_lock_names_this_process_and_goes_when_released(tmp_path):
    lock = RunLock(tmp_path / "run", "fit")
    before = time.time()
    assert lock.acquire() is None  # nothing taken over
    data = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert (data["pid"], data["host"], data["command"]) == (os.getpid(), socket.gethostname(), "fit")
    assert before <= data["time"] <= time.time()
    assert lock.read() == lock.holder
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_live_holder_keeps_the_lock(tmp_path):
    sleeper = _sleeper()
    try:
        _write_lock(tmp_path, sleeper.pid)
        with pytest.raises(RunFolderBusy) as busy:
            RunLock(tmp_path, "fit").acquire()
        message = str(busy.value)
        assert str(tmp_path) in message
        assert f"pid {sleeper.pid} on host {socket.gethostname()}" in message
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == sleeper.pid  # left as it was
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_holder_is_taken_over_and_named(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, dead)
    lock = RunLock(tmp_path, "fit")
    stale = lock.acquire()
    assert stale is not None
    assert stale.pid == dead
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    """The pid of the lock belongs to a process that started after the lock was written: another process."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("process start times come from /proc")
    sleeper = _sleeper()
    try:
        _write_lock(tmp_path, sleeper.pid, started=time.time() - 3600)
        assert LockHolder(sleeper.pid, socket.gethostname(), time.time() - 3600, "fit").is_stale()
        assert not LockHolder(sleeper.pid, socket.gethostname(), time.time(), "fit").is_stale()
        lock = RunLock(tmp_path, "fit")
        assert lock.acquire().pid == sleeper.pid
        lock.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holder_on_another_host_is_not_guessed_about(tmp_path):
    path = _write_lock(tmp_path, _dead_pid(), host="elsewhere.example")
    with pytest.raises(RunFolderBusy, match=rf"host elsewhere\.example.*if it has ended, delete {path}"):
        RunLock(tmp_path, "fit").acquire()


def test_release_leaves_a_lock_that_another_process_took_over(tmp_path):
    lock = RunLock(tmp_path, "fit")
    lock.acquire()
    other = _write_lock(tmp_path, os.getppid())
    lock.release()
    assert other.exists()


def test_of_processes_racing_for_the_lock_exactly_one_gets_it(tmp_path):
    """Four processes try at the same moment: O_EXCL lets one create the file, the others see it held."""
    start = time.time() + 3
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(SRC)!r})
        from betadpo_lightning.commands.run_lock import RunFolderBusy, RunLock
        lock = RunLock({str(tmp_path)!r}, "fit")
        time.sleep(max(0.0, {start} - time.time()))
        try:
            lock.acquire()
        except RunFolderBusy:
            print("busy")
        else:
            print("held")
            time.sleep(3)
            lock.release()
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = sorted(p.communicate(timeout=SUBPROCESS_TIMEOUT_S)[0].strip() for p in processes)
    assert outputs == ["busy", "busy", "busy", "held"]
    assert not (tmp_path / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------- the guard, without training


def _trainer(root: Path) -> Trainer:
    return Trainer(default_root_dir=str(root), callbacks=[PreferenceCheckpoint()], logger=False, max_steps=1)


def test_the_guard_holds_the_lock_while_the_command_runs_and_releases_it_after_an_error(tmp_path):
    trainer = _trainer(tmp_path)
    assert checkpoint_folders(trainer) == [tmp_path / "checkpoints"]
    with guard_run_folder(trainer, "fit", {"ckpt_path": None}):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        second = guard_run_folder(_trainer(tmp_path), "fit", {"ckpt_path": None})
        with pytest.raises(CLIError, match=f"run folder {tmp_path} is in use by another run"), second:
            pass  # pragma: no cover
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError, match="inside"), guard_run_folder(trainer, "validate", {}):
        raise RuntimeError("inside")
    assert not (tmp_path / LOCK_NAME).exists()


def test_overwrite_run_goes_with_a_fresh_fit_only(tmp_path):
    both = guard_run_folder(_trainer(tmp_path), "fit", {"ckpt_path": "last", "overwrite_run": True})
    with pytest.raises(CLIError, match=r"--overwrite_run true with --ckpt_path last: .* give one of them"), both:
        pass  # pragma: no cover
    testing = guard_run_folder(_trainer(tmp_path), "test", {"overwrite_run": True})
    with pytest.raises(CLIError, match="--overwrite_run is an option of fit, not of test"), testing:
        pass  # pragma: no cover
    assert not (tmp_path / LOCK_NAME).exists()


def test_other_ranks_of_rank_zeros_node_wait_for_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "WAIT_FOR_LOCK_S", 0.5)
    rank_one = SimpleNamespace(global_rank=1, node_rank=0, default_root_dir=str(tmp_path))
    started = time.monotonic()
    waiting = guard_run_folder(rank_one, "fit", {})  # type: ignore[arg-type]
    with pytest.raises(CLIError, match=rf"rank 1: no live run holds {tmp_path / LOCK_NAME} after 0\.5 s"), waiting:
        pass  # pragma: no cover
    assert time.monotonic() - started >= 0.5
    holder = RunLock(tmp_path, "fit")
    holder.acquire()  # rank 0 (here: this process) holds it
    with guard_run_folder(rank_one, "fit", {}):  # type: ignore[arg-type]
        assert (tmp_path / LOCK_NAME).exists()  # neither taken nor refused by rank 1
    other_node = SimpleNamespace(global_rank=4, node_rank=1, default_root_dir=str(tmp_path / "elsewhere"))
    with guard_run_folder(other_node, "fit", {}):  # type: ignore[arg-type]
        pass  # another node does not wait: its folder may be another filesystem's
    holder.release()


# ------------------------------------------------------------------------------------------ the command line


def _config(folder: Path) -> Path:
    """The quickstart with a checkpoint at every step and no sample generations."""
    settings = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    settings["trainer"]["callbacks"] = [
        {"class_path": "betadpo_lightning.callbacks.PreferenceCheckpoint", "init_args": {"every_n_train_steps": 1}}
    ]
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def _args(root: Path, *extra: str) -> list[str]:
    args = ["fit", "--config", str(_config(root.parent)), f"--trainer.default_root_dir={root}"]
    args += [f"--data.cache_dir={root.parent / 'cache'}", "--data.synthetic.train_size=32"]
    args += ["--data.synthetic.validation_size=8", "--data.batch_size=4", "--trainer.val_check_interval=2"]
    args += ["--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
    return [*args, "--trainer.enable_model_summary=false", *extra]


def _refused(capsys, args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    return exit_info.value.code, err[err.index("error: ") :]


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_fresh_fit_over_earlier_checkpoints_is_refused_unless_overwrite_run(capsys, tmp_path):
    run = tmp_path / "run"
    main(_args(run, "--trainer.max_steps=2"))
    checkpoints = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    assert set(before) == {"last.ckpt", "step=1.ckpt", "step=2.ckpt"}

    code, message = _refused(capsys, _args(run, "--trainer.max_steps=3"))  # a forgotten --ckpt_path last
    assert code == 1
    first = message.splitlines()[0]
    assert first.startswith(f"error: {checkpoints} holds checkpoints of an earlier run (last.ckpt, step=1.ckpt, ")
    assert "resume it with --ckpt_path last, or start over with --overwrite_run true" in first
    assert "moves them to checkpoints.replaced-<date>-<time> beside it" in first
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before  # untouched
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["version_0"]  # nothing written
    assert not (run / LOCK_NAME).exists()

    main(_args(run, "--trainer.max_steps=3", "--overwrite_run=true"))
    (aside,) = run.glob("checkpoints.replaced-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before  # moved, not deleted
    assert f"note: --overwrite_run: moved the earlier run's checkpoints from {checkpoints} to {aside}" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]
    assert _step(checkpoints / "last.ckpt") == 3
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["version_0", "version_1"]
    assert not (run / LOCK_NAME).exists()
    saved = sorted(run.rglob("config.yaml"), key=lambda path: path.stat().st_mtime)[-1]  # this run's: resumes it
    assert yaml.safe_load(saved.read_text())["overwrite_run"] is False  # so it must not start over again


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_second_live_run_into_the_folder_is_refused_and_a_dead_ones_lock_taken_over(capsys, tmp_path):
    run = tmp_path / "run"
    sleeper = _sleeper()
    try:
        _write_lock(run, sleeper.pid)
        code, message = _refused(capsys, _args(run, "--trainer.max_steps=1"))
        assert code == 1
        assert message.splitlines()[0] == (
            f"error: run folder {run} is in use by another run ({RunLock(run, '').read().describe()}): "
            "wait for it to end or choose another --trainer.default_root_dir"
        )
        assert not (run / "logs").exists()
        assert not (run / "checkpoints").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = _dead_pid()
    _write_lock(run, dead)
    main(_args(run, "--trainer.max_steps=1"))
    assert f"note: took over {run / LOCK_NAME} from pid {dead} on host" in capsys.readouterr().err
    assert _step(run / "checkpoints" / "last.ckpt") == 1
    assert not (run / LOCK_NAME).exists()


def test_options_are_not_abbreviated(capsys, tmp_path):
    """``--trainer.max_step 20`` was taken for ``--trainer.max_steps 20``."""
    code, message = _refused(capsys, [*_args(tmp_path / "run"), "--trainer.max_step", "20"])
    assert code == 2
    assert message.splitlines()[:2] == [
        "error: unknown option --trainer.max_step",
        "  did you mean --trainer.max_steps or --trainer.max_time or --trainer.min_steps?",
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in launched processes")
def test_a_two_rank_fit_shares_the_lock_of_rank_zero(tmp_path):
    """Lightning's launcher starts rank 1 as a second ``cli.py`` process while rank 0 holds the lock: rank 1 waits for
    it instead of taking it or refusing to run, and the lock is gone after the fit."""
    run = tmp_path / "run"
    args = _args(run, "--trainer.max_steps=2", "--trainer.strategy=ddp", "--trainer.devices=2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("BETADPO_TRACEBACK", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "in use by another run" not in result.stderr
    assert _step(run / "checkpoints" / "last.ckpt") == 2
    assert not (run / LOCK_NAME).exists()


def test_the_sft_command_line_has_the_same_guards(capsys, tmp_path):
    """The SFT command line shares the ban on abbreviated options and the run-folder lock (both live in RunCLI)."""
    from betadpo_lightning.commands import sft_cli

    root = Path(__file__).parents[1]
    args = ["fit", "--config", str(root / "configs" / "synthetic_sft.yaml"), f"--trainer.default_root_dir={tmp_path}"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        sft_cli.main([*args, "--trainer.max_step", "20"])
    assert exit_info.value.code == 2
    assert "unknown option --trainer.max_step" in capsys.readouterr().err
    sleeper = _sleeper()
    try:
        _write_lock(tmp_path, sleeper.pid)
        with pytest.raises(SystemExit) as exit_info:
            sft_cli.main([*args, f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.max_steps=1"])
        assert exit_info.value.code == 1
        assert f"error: run folder {tmp_path} is in use by another run" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
