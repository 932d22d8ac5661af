"""One live run per run folder, and no fresh fit over the checkpoints of an earlier run.

A run folder (``trainer.default_root_dir``) holds the logs (``logs/version_N/``) and the checkpoints
(``checkpoints/``) of the runs of a config. Two runs writing into it at once would both write
``logs/version_0/metrics.csv`` and overwrite each other's checkpoints; a fresh fit would write its ``last.ckpt`` over
the earlier run's, beside that run's ``step=N.ckpt`` files. :func:`guard_run_folder`, around each command of the
command line:

* takes the folder's ``run.lock`` (:mod:`~betadpo_lightning.commands.run_lock`) on global rank 0, and refuses to run
  while another live run holds it, naming the folder and the holder; a stale lock (its process is gone) is taken
  over with a note. The other ranks of rank 0's node wait until the lock is held (those of other nodes go on: their
  run folder may be on another filesystem). A remote run folder (``s3://...``) is not locked;
* refuses a ``fit`` without ``--ckpt_path`` when a checkpoint folder of the run already holds checkpoints, offering
  ``--ckpt_path last`` to resume that run or ``--overwrite_run true`` to start over, which moves the earlier
  checkpoints to a sibling folder ``checkpoints.replaced-<date>-<time>`` (nothing is deleted).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from betadpo_lightning.callbacks import PreferenceCheckpoint
from betadpo_lightning.commands.cli_errors import CLIError
from betadpo_lightning.commands.run_lock import RunFolderBusy, RunLock

__all__ = ["OVERWRITE_RUN", "WAIT_FOR_LOCK_S", "add_run_folder_arguments", "checkpoint_folders", "guard_run_folder"]

OVERWRITE_RUN = "overwrite_run"
"""The option that starts a fit over in a run folder that holds checkpoints."""

WAIT_FOR_LOCK_S = 300.0
"""How long the other ranks of rank 0's node wait for rank 0 to take the lock."""


def add_run_folder_arguments(parser: Any) -> None:
    """Add ``--overwrite_run`` to a subcommand's parser (a ``LightningArgumentParser``)."""
    parser.add_argument(
        f"--{OVERWRITE_RUN}",
        type=bool,
        default=False,
        help="fit only: start over in a run folder that holds checkpoints of an earlier run; they are moved to "
        "a sibling folder checkpoints.replaced-<date>-<time> (nothing is deleted). Without it such a fit is refused.",
    )


@contextlib.contextmanager
def guard_run_folder(trainer: Trainer, command: str, config: Mapping[str, Any]) -> Iterator[None]:
    """Hold the run folder's lock while ``command`` runs; refuse a fresh fit over an earlier run's checkpoints.

    Args:
        trainer: the command's Trainer (its ``default_root_dir``, ranks and checkpoint callbacks).
        command: ``fit``, ``validate`` or ``test``.
        config: the command's options (``ckpt_path``, ``overwrite_run``).

    Raises:
        CLIError: another live run holds the folder; a fresh fit into a folder with checkpoints; ``--overwrite_run``
            with ``--ckpt_path`` or with another command than ``fit``.
    """
    overwrite, ckpt_path = bool(config.get(OVERWRITE_RUN)), config.get("ckpt_path")
    _check_options(command, overwrite, ckpt_path)
    if "://" in str(trainer.default_root_dir):  # a remote folder (s3://...): no lock file there
        yield
        return
    if trainer.global_rank != 0:
        _wait_for_rank_zero(trainer)
        yield
        return
    lock = RunLock(trainer.default_root_dir, command)
    try:
        stale = lock.acquire()
    except RunFolderBusy as busy:
        raise CLIError(str(busy)) from busy
    try:
        if stale is not None:
            _note(f"took over {lock.path} from {stale.describe()}, which is no longer running")
        if command == "fit" and ckpt_path is None:
            _start_fresh(trainer, overwrite)
        yield
    finally:
        lock.release()


def _check_options(command: str, overwrite: bool, ckpt_path: Any) -> None:
    if overwrite and command != "fit":
        raise CLIError(f"--{OVERWRITE_RUN} is an option of fit, not of {command}", exit_code=2)
    if overwrite and ckpt_path is not None:
        raise CLIError(
            f"--{OVERWRITE_RUN} true with --ckpt_path {ckpt_path}: --ckpt_path resumes a run, --{OVERWRITE_RUN} "
            "starts over; give one of them",
            exit_code=2,
        )


def _wait_for_rank_zero(trainer: Trainer) -> None:
    if trainer.node_rank != 0:  # another node: its run folder may be on another filesystem
        return
    lock = RunLock(trainer.default_root_dir, "")
    if lock.wait_for_holder(WAIT_FOR_LOCK_S) is None:
        raise CLIError(
            f"rank {trainer.global_rank}: no live run holds {lock.path} after {WAIT_FOR_LOCK_S:g} s "
            "(global rank 0 takes it when the command starts)"
        )


def checkpoint_folders(trainer: Trainer) -> list[Path]:
    """The local folders that the Trainer's checkpoint callbacks write to, as far as they are known before ``fit``.

    A :class:`~betadpo_lightning.callbacks.PreferenceCheckpoint` without ``dirpath`` writes to
    ``<default_root_dir>/checkpoints``, as does a ``ModelCheckpoint`` without ``dirpath`` when there is no logger (with
    one, it writes into the new log version's folder, which holds nothing yet). Remote folders (``s3://...``) are left
    out.
    """
    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        dirpath = callback.dirpath
        if dirpath is None and (isinstance(callback, PreferenceCheckpoint) or not trainer.loggers):
            dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        if dirpath is not None and "://" not in str(dirpath) and Path(dirpath) not in folders:
            folders.append(Path(dirpath))
    return folders


def _checkpoints_in(folder: Path) -> list[str]:
    """The names of the checkpoints in ``folder`` (files, or folders of sharded checkpoints, named ``*.ckpt``)."""
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".ckpt"))


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown} and {len(names) - 3} more"


def _start_fresh(trainer: Trainer, overwrite: bool) -> None:
    """Refuse a fresh fit over earlier checkpoints, or (``overwrite``) move those checkpoints aside first."""
    earlier = {folder: names for folder in checkpoint_folders(trainer) if (names := _checkpoints_in(folder))}
    if not earlier:
        return
    if not overwrite:
        folder, names = next(iter(earlier.items()))
        raise CLIError(
            f"{folder} holds checkpoints of an earlier run ({_listed(names)}): resume it with --ckpt_path last, or "
            f"start over with --{OVERWRITE_RUN} true (moves them to {folder.name}.replaced-<date>-<time> beside it)"
        )
    for folder in earlier:
        aside = _move_aside(folder)
        _note(f"--{OVERWRITE_RUN}: moved the earlier run's checkpoints from {folder} to {aside}")


def _move_aside(folder: Path) -> Path:
    """Rename ``folder`` to ``<name>.replaced-<date>-<time>`` (``-2``, ``-3``, ... if taken); returns the new path."""
    stem = f"{folder.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}"
    aside, number = folder.with_name(stem), 1
    while aside.exists():
        number += 1
        aside = folder.with_name(f"{stem}-{number}")
    os.rename(folder, aside)
    return aside


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)
