"""A Lightning logger that keeps in memory what Lightning writes, by step."""

from __future__ import annotations

from lightning.pytorch.loggers import Logger


class MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.written.append((step, {k: float(v) for k, v in metrics.items()}))

    def rows_with(self, key: str) -> dict[int, dict[str, float]]:
        """The written rows holding ``key``, by step (a later row of the same step updates it)."""
        rows: dict[int, dict[str, float]] = {}
        for step, metrics in self.written:
            if key in metrics:
                rows.setdefault(step, {}).update(metrics)
        return rows
