"""How many processes tokenize a split: never more than the rows and the CPUs make worth it.

Each extra process of ``datasets.map(num_proc=N)`` costs a start and a copy of the tokenizer (about a second on a
small machine), so a few hundred rows tokenize faster in one process than in eight, and more processes than CPUs
only compete for them. By default (``data.num_proc: null``) :func:`tokenization_processes` gives one process per
:data:`ROWS_PER_PROCESS` rows, at most the CPUs this process may run on; a ``data.num_proc`` that is set is used as
given, but never above the CPUs.
"""

from __future__ import annotations

import os

__all__ = ["ROWS_PER_PROCESS", "available_cpus", "tokenization_processes"]

ROWS_PER_PROCESS = 10_000
"""Rows that make one more tokenization process worth its start."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform tells it, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def tokenization_processes(rows: int, requested: int | None = None, cpus: int | None = None) -> int | None:
    """The ``num_proc`` to tokenize ``rows`` rows with: ``None`` (this process) or a number of processes above 1.

    Args:
        rows: rows of the split.
        requested: ``data.num_proc`` (``None``: decided from the rows and the CPUs).
        cpus: the CPUs to count on (``None``: :func:`available_cpus`).

    Returns:
        ``None`` for one process, else the number of processes.

    Examples:
        >>> tokenization_processes(308, cpus=2) is None  # a few hundred rows: one process
        True
        >>> tokenization_processes(160_800, cpus=2), tokenization_processes(160_800, cpus=64)
        (2, 16)
        >>> tokenization_processes(160_800, requested=4, cpus=64), tokenization_processes(308, requested=8, cpus=2)
        (4, 2)
    """
    cpus = available_cpus() if cpus is None else cpus
    wanted = rows // ROWS_PER_PROCESS if requested is None else requested
    processes = min(cpus, wanted, rows)
    return processes if processes > 1 else None
