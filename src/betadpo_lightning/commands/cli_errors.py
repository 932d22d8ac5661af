"""Short messages for the command line's user errors, and the full traceback only on request (``BETADPO_TRACEBACK=1``).

:func:`explain` turns an error that a user can fix (a bad option value, bad data, a model that cannot be found, a
checkpoint that does not exist) into a :class:`CLIError` of a few lines naming the option or file and the fix;
:func:`report` prints it. Other errors are left alone: their traceback is what a bug report needs.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only

from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.models.cache_integrity import DamagedCacheError
from betadpo_lightning.models.hub import HubUnavailableError
from betadpo_lightning.models.policy_checkpoint import CheckpointError

__all__ = ["TRACEBACK_ENV", "CLIError", "MissingCheckpointError", "explain", "report"]

TRACEBACK_ENV = "BETADPO_TRACEBACK"
"""Environment variable: set to ``1`` to print the full traceback of an explained error as well."""

HUB_OPTIONS = {
    "policy": "model.model_name_or_path",
    "reference model": "model.reference.init_args.name_or_path",
    "tokenizer": "data.tokenizer (the model's by default)",
    "dataset": "data.dataset",
}
"""The option that names what :class:`HubUnavailableError` could not load, by role."""

COLUMN_OPTIONS = "data.prompt_column, data.chosen_column and data.rejected_column"

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FloatingPointError, FileNotFoundError)
"""Errors whose message is written for users (the library's checks): shown short, wherever they are raised."""

NO_ACCELERATOR = ("No supported gpu backend found", "can not run on your system since the accelerator is not available")
"""Lightning's messages for a ``trainer.accelerator`` this machine does not have (``gpu``, ``cuda``, ``mps``, ...)."""

CPU_HINT = (
    "No GPU is usable here: to run on the CPU, add --trainer.accelerator cpu (and --trainer.precision 32-true: the "
    "GPU configs' bf16-mixed is slow on most CPUs)."
)
"""The hint added to :data:`NO_ACCELERATOR` messages."""


class CLIError(Exception):
    """A user error explained: a message naming the option or file, and what to do.

    Args:
        message: the error, naming the option or file (first line of the output).
        hints: further lines: how to fix it.
        exit_code: the process's exit status (2 for command-line errors, as ``argparse`` uses).
    """

    def __init__(self, message: str, hints: Sequence[str] = (), exit_code: int = 1) -> None:
        super().__init__(message)
        self.message, self.hints, self.exit_code = message, tuple(hints), exit_code


class MissingCheckpointError(FileNotFoundError):
    """``--ckpt_path last`` with no ``last.ckpt`` to resume from.

    Args:
        folders: the checkpoint folders searched.
    """

    def __init__(self, folders: Sequence[str]) -> None:
        where = ", ".join(str(Path(folder)) for folder in folders) or "(no checkpoint callback, so no folder)"
        super().__init__(f"--ckpt_path last: no last checkpoint in {where}")
        self.folders = tuple(folders)


def _where(error: BaseException) -> str | None:
    """``file:line (function)`` of the innermost frame that raised ``error``."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return None
    frame = frames[-1]
    return f"{_short_path(frame.filename)}:{frame.lineno} ({frame.name})"


def _short_path(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("betadpo_lightning", "site-packages"):
        if anchor in parts:
            index = parts.index(anchor)
            return str(Path(*parts[index + (anchor == "site-packages") :]))
    return filename


def _hub(error: HubUnavailableError) -> CLIError:
    option = HUB_OPTIONS.get(error.role)
    hints = [error.fix] + ([f"The {error.role} is set by {option}."] if option else [])
    return CLIError(f"cannot load the {error.role} '{error.name}': {error.reason}", hints)


def _data(error: PreferenceDataError) -> CLIError:
    hints = []
    if error.reason == "missing_column":
        hints.append(f"Map the columns of your data with {COLUMN_OPTIONS} (or set data.format).")
    elif error.row is not None:
        hints.append("To skip and count such rows instead, set data.on_bad_row: skip (--data.on_bad_row skip).")
    return CLIError(f"bad preference data: {error}", hints)


def explain(error: BaseException) -> CLIError | None:
    """The short explanation of ``error``, or ``None`` for an error that is not a user's mistake.

    A configured accelerator that the machine does not have gets the hint to run on the CPU (:data:`CPU_HINT`).

    Args:
        error: the exception that ended the command.

    Returns:
        The :class:`CLIError` to print, or ``None`` (leave the traceback to Python).
    """
    explained = _explain(error)
    missing = explained is not None and any(text in explained.message for text in NO_ACCELERATOR)
    if missing and explained is not None and CPU_HINT not in explained.hints:
        return CLIError(explained.message, [CPU_HINT, *explained.hints], explained.exit_code)
    return explained


def _explain(error: BaseException) -> CLIError | None:
    if isinstance(error, CLIError):
        return error
    if isinstance(error, HubUnavailableError):
        return _hub(error)
    if isinstance(error, PreferenceDataError):
        return _data(error)
    if isinstance(error, CheckpointError | DamagedCacheError):  # the message names the file and what to do
        return CLIError(str(error))
    if isinstance(error, MissingCheckpointError):
        return CLIError(
            str(error),
            ["Train without --ckpt_path to start a new run, or give the path of a checkpoint to resume from."],
        )
    if isinstance(error, (*USER_ERRORS, MisconfigurationException)) or type(error).__name__ == "StaleCacheError":
        where = _where(error)
        return CLIError(str(error), [f"(raised in {where})"] if where else [])
    return None


def _rank_prefix() -> str:
    rank = getattr(rank_zero_only, "rank", 0)
    return f"[rank {rank}] " if rank else ""


def traceback_requested() -> bool:
    """Whether ``BETADPO_TRACEBACK`` asks for full tracebacks (``1``, ``true``, ``yes``)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def report(error: BaseException, explained: CLIError, stream: TextIO | None = None) -> int:
    """Print ``explained`` (and, with ``BETADPO_TRACEBACK=1``, ``error``'s traceback first); return the exit code.

    Args:
        error: the original exception.
        explained: its explanation (:func:`explain`).
        stream: where to print (standard error by default).

    Returns:
        The exit code to end the process with.
    """
    stream = stream if stream is not None else sys.stderr
    prefix = _rank_prefix()
    if traceback_requested():
        traceback.print_exception(error, file=stream)
    lines = [f"{prefix}error: {explained.message}", *(f"{prefix}  {hint}" for hint in explained.hints)]
    if not traceback_requested():
        lines.append(f"{prefix}(set {TRACEBACK_ENV}=1 to see the full traceback)")
    print("\n".join(lines), file=stream, flush=True)
    return explained.exit_code
