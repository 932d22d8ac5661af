"""Console noise of the libraries that says nothing about the run, filtered precisely (real warnings stay)."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_known_noise"]

_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
"""The loggers of Lightning's ``rank_zero_info`` (the one used depends on which module was imported last)."""


class _AdvertisingFilter(logging.Filter):
    """Drops Lightning's product tips (``💡 Tip: ... litlogger ...``, ``... litmodels ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_known_noise() -> None:
    """Filter the console noise of a training run that is not about the run; idempotent.

    * Lightning's product tips (``💡 Tip: For seamless cloud logging ... litlogger``), logged at every ``Trainer``.
    * ``torch``'s ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is deprecated, triggered by Lightning's
      own code (``lightning.pytorch.utilities._pytree``), not by this library or its users; the filter is limited
      to that message from that module, so the same deprecation from any other code is still shown.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _AdvertisingFilter) for f in logger.filters):
            logger.addFilter(_AdvertisingFilter())
