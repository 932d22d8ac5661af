"""Console noise of the libraries that says nothing about the run, filtered precisely (real warnings stay).

By default the command lines show what is about the run (the data, the progress, the summary, every warning) and
drop Lightning's routine information lines: ``Seed set to 0``, ``GPU available: ...``, ``TPU available: ...``,
``Initializing distributed: ...``, the model summary table (the run summary prints the parameter counts in one line)
and its product tips. ``BETADPO_VERBOSE=1`` brings them all back (the tips excepted).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

__all__ = ["VERBOSE_ENV", "quiet_known_noise", "verbose_requested"]

VERBOSE_ENV = "BETADPO_VERBOSE"
"""Environment variable: set to ``1`` to see Lightning's routine information lines (seed, devices, model table)."""

_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
"""The loggers of Lightning's ``rank_zero_info`` (the one used depends on which module was imported last)."""

_HANDLER_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "")
"""Loggers whose handlers print Lightning's records (its two packages' own, and the root's when it has some)."""

_LIGHTNING_PACKAGES = ("lightning", "lightning_fabric", "pytorch_lightning")

_KEPT = (
    "Restoring states from the checkpoint path",
    "Restored all states from the checkpoint",
    "Detected KeyboardInterrupt",
    "Received SIGTERM",
    "Handling auto-requeue signal",
    "requeing job",
    "Requeued SLURM job",
)
"""Lightning's information lines that are about the run: the checkpoint it resumes from, the signals that stop it."""


class _AdvertisingFilter(logging.Filter):
    """Drops Lightning's product tips (``💡 Tip: ... litlogger ...``, ``... litmodels ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


class _RoutineFilter(logging.Filter):
    """Drops the information records that Lightning's own code logs (below ``WARNING``), except :data:`_KEPT`.

    A record's ``pathname`` is the file that logged it, also through ``rank_zero_info``: this library's own
    information lines (the data's counts, the reference in use) stay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not _from_lightning(record.pathname):
            return True
        message = str(record.msg)
        return any(kept in message for kept in _KEPT)


def _from_lightning(pathname: str) -> bool:
    roots = [Path(module.__file__).parent for name in _LIGHTNING_PACKAGES if (module := sys.modules.get(name))]
    path = Path(pathname)
    return any(root in path.parents for root in roots if root is not None)


def verbose_requested() -> bool:
    """Whether ``BETADPO_VERBOSE`` asks for Lightning's routine lines (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _add_once(target: logging.Logger | logging.Handler, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in target.filters):
        target.addFilter(kind())


def quiet_known_noise(verbose: bool | None = None) -> None:
    """Filter the console noise of a training run that is not about the run; idempotent.

    * Lightning's product tips (``💡 Tip: For seamless cloud logging ... litlogger``), logged at every ``Trainer``.
    * Unless ``verbose`` (default: :func:`verbose_requested`), Lightning's routine information lines: a filter on the
      handlers that print Lightning's records drops the records below ``WARNING`` that Lightning's own code logged;
      and, when standard error is not a terminal, the progress bars of ``datasets`` (loading, tokenizing, filtering).
    * ``FutureWarning`` s that torch raises for calls inside Lightning, not in this library or its users' code:
      ``isinstance(treespec, LeafSpec)`` (``lightning.pytorch.utilities._pytree``) and
      ``torch.distributed.nn.functional.all_gather`` (``lightning.fabric.utilities.distributed``, once per rank under
      DDP). Each filter is limited to that message from that module: the same deprecation from any other code is
      still shown.

    Args:
        verbose: keep Lightning's routine lines (``None``: as ``BETADPO_VERBOSE`` says).
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        category=FutureWarning,
        module=r"lightning\.fabric\.utilities\.distributed",
    )
    for name in _RANK_ZERO_LOGGERS:
        _add_once(logging.getLogger(name), _AdvertisingFilter)
    if verbose if verbose is not None else verbose_requested():
        for name in _HANDLER_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                for routine in [f for f in handler.filters if isinstance(f, _RoutineFilter)]:
                    handler.removeFilter(routine)
        return
    for name in _HANDLER_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            _add_once(handler, _RoutineFilter)
    if not sys.stderr.isatty():  # piped to a file: datasets' bars would print a line per refresh
        import datasets

        datasets.disable_progress_bars()
