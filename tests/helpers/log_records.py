"""A logging handler that keeps every record's message, for tests of what Lightning and the library log."""

from __future__ import annotations

import logging


class CollectMessages(logging.Handler):
    """Keeps the formatted message of every record it handles, at every level, in :attr:`messages`."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
