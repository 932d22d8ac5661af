"""``run.lock``: the file that says which live process is writing into a run folder.

The lock is a small JSON file naming its holder (pid, host, start time, command), created with
``O_CREAT | O_EXCL`` (of two processes creating it at once, exactly one succeeds) and removed by its holder when the
command ends. A lock whose holder is gone is *stale*: on the same host, when no process has its pid, or the process
with that pid started after the lock was written (the pid was reused, as in a restarted container). A stale lock is
taken over; a lock held by a live process, or by a process on another host (which cannot be checked from here), is
not.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["LOCK_NAME", "LockHolder", "RunFolderBusy", "RunLock"]

LOCK_NAME = "run.lock"
"""The lock's file name in the run folder."""

_PID_REUSE_SLACK_S = 2.0  # process start times from /proc are known to about a second
_HALF_WRITTEN_S = 5.0  # an unreadable lock younger than this may still be being written


@dataclass(frozen=True)
class LockHolder:
    """The process that holds a lock.

    Args:
        pid: its process id.
        host: the host it runs on (``socket.gethostname()``).
        time: when it took the lock (seconds since the epoch).
        command: the command it runs (``fit``, ``validate``, ...).
    """

    pid: int
    host: str
    time: float
    command: str

    @classmethod
    def this_process(cls, command: str) -> LockHolder:
        """The holder that this process would be."""
        return cls(pid=os.getpid(), host=socket.gethostname(), time=time.time(), command=command)

    def describe(self) -> str:
        """``pid 1234 on host gpu01, fit started 2025-06-01 12:00:00``."""
        started = datetime.fromtimestamp(self.time).strftime("%Y-%m-%d %H:%M:%S")
        return f"pid {self.pid} on host {self.host}, {self.command} started {started}"

    def is_stale(self) -> bool:
        """Whether the holder is known to be gone (only a holder on this host can be checked)."""
        if self.host != socket.gethostname():
            return False
        if not _alive(self.pid):
            return True
        started = _process_start_time(self.pid)
        return started is not None and started > self.time + _PID_REUSE_SLACK_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # a process of another user
        return True
    return True


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc``; ``None`` where that is not known."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of proc_pid_stat(5), `starttime`; fields[0] is field 3
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class RunLock:
    """The lock of one run folder, for one command of this process.

    Args:
        folder: the run folder (created if missing).
        command: the command, recorded in the lock.
    """

    def __init__(self, folder: str | os.PathLike, command: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.holder: LockHolder | None = None
        """This process, once it holds the lock."""

    def read(self) -> LockHolder | None:
        """The current holder, or ``None`` when there is no lock or it cannot be read (half written, damaged)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return LockHolder(int(data["pid"]), str(data["host"]), float(data["time"]), str(data["command"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def acquire(self) -> LockHolder | None:
        """Take the lock, taking over a stale one.

        Returns:
            The holder of the stale lock taken over, if any (``None``: there was no lock).

        Raises:
            RunFolderBusy: when a live process (or one on another host) holds the lock.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        taken_over = None
        for _ in range(5):
            me = LockHolder.this_process(self.command)
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._settled_holder()
                if holder is not None and not holder.is_stale():
                    raise RunFolderBusy(self, holder) from None
                self._remove_if_still(holder)
                taken_over = holder or taken_over
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(json.dumps(asdict(me)))
            self.holder = me
            return taken_over
        raise RunFolderBusy(self, self.read())

    def release(self) -> None:
        """Remove the lock if this process still holds it (a process that took it over keeps its own)."""
        if self.holder is not None and self.read() == self.holder:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.holder = None

    def wait_for_holder(self, timeout_s: float, poll_s: float = 0.2) -> LockHolder | None:
        """Wait until a live process holds the lock (as another rank of the same run does).

        Args:
            timeout_s: how long to wait.
            poll_s: how often to look.

        Returns:
            The holder, or ``None`` when none came in time.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            holder = self.read()
            if holder is not None and not holder.is_stale():
                return holder
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)

    def _settled_holder(self) -> LockHolder | None:
        """The holder of an existing lock; ``None`` for one that stays unreadable (its writer died half-way)."""
        deadline = time.monotonic() + _HALF_WRITTEN_S
        while True:
            holder = self.read()
            if holder is not None or time.monotonic() >= deadline or not self._young():
                return holder
            time.sleep(0.1)

    def _young(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime < _HALF_WRITTEN_S
        except OSError:
            return False

    def _remove_if_still(self, holder: LockHolder | None) -> None:
        """Remove the stale lock of ``holder``, unless another process replaced it meanwhile."""
        if self.read() == holder:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class RunFolderBusy(RuntimeError):
    """Another run holds the lock of a run folder.

    Args:
        lock: the lock.
        holder: its holder (``None``: unknown).
    """

    def __init__(self, lock: RunLock, holder: LockHolder | None) -> None:
        who = holder.describe() if holder is not None else "a process that could not be identified"
        remedy = "wait for it to end or choose another --trainer.default_root_dir"
        if holder is not None and holder.host != socket.gethostname():
            remedy += f"; if it has ended, delete {lock.path}"
        super().__init__(f"run folder {lock.folder} is in use by another run ({who}): {remedy}")
        self.lock, self.holder = lock, holder
