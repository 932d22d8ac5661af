"""quiet_known_noise: Lightning's product tips and Lightning's pytree FutureWarning are filtered, and nothing else."""

from __future__ import annotations

import logging
import warnings

import pytest

from betadpo_lightning.commands import console
from betadpo_lightning.commands.console import quiet_known_noise

LIGHTNING_PYTREE = "lightning.pytorch.utilities._pytree"
PYTREE_MESSAGE = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_messages():
    """What Lightning logs (its loggers do not propagate to the root logger), without the filters installed so far."""
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for name in console._RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        for kept in [f for f in logger.filters if isinstance(f, console._AdvertisingFilter)]:
            logger.removeFilter(kept)
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)
    quiet_known_noise()


def _trainer(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    return pl.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), enable_progress_bar=False)


def test_lightning_tips_are_filtered_and_its_information_kept(lightning_messages, tmp_path):
    _trainer(tmp_path)
    assert any(message.startswith("💡 Tip:") for message in lightning_messages)  # what there is to filter
    lightning_messages.clear()
    quiet_known_noise()
    quiet_known_noise()  # idempotent
    _trainer(tmp_path)
    assert not any("💡 Tip" in message for message in lightning_messages)
    assert any(message.startswith("GPU available") for message in lightning_messages)
    for name in console._RANK_ZERO_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, console._AdvertisingFilter) for f in filters) == 1


def test_only_lightnings_pytree_warning_is_filtered():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        for module in (LIGHTNING_PYTREE, "somebody.else"):
            warnings.warn_explicit(PYTREE_MESSAGE, FutureWarning, "x.py", 1, module=module)
        warnings.warn_explicit(
            "another deprecation", FutureWarning, "x.py", 2, module="lightning.pytorch.utilities._pytree"
        )
    assert [(str(w.message), w.lineno) for w in caught] == [(PYTREE_MESSAGE, 1), ("another deprecation", 2)]


def test_lightnings_own_pytree_call_is_quiet():
    import torch
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        _tree_flatten({"a": torch.zeros(1), "b": [1, 2]})
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
