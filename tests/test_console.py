"""quiet_known_noise: Lightning's product tips, its routine information lines (unless BETADPO_VERBOSE=1) and the
FutureWarnings torch raises inside Lightning are filtered, and nothing else: this library's information and every
warning stay."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest

from betadpo_lightning.commands import console
from betadpo_lightning.commands.console import quiet_known_noise
from helpers.log_records import CollectMessages

LIGHTNING_PYTREE = "lightning.pytorch.utilities._pytree"
PYTREE_MESSAGE = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."


@pytest.fixture
def lightning_messages():
    """What Lightning logs (its loggers do not propagate to the root logger), without the filters installed so far."""
    handler = CollectMessages()
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


def test_lightning_tips_are_filtered_and_its_information_kept_when_verbose(lightning_messages, tmp_path):
    _trainer(tmp_path)
    assert any(message.startswith("💡 Tip:") for message in lightning_messages)  # what there is to filter
    lightning_messages.clear()
    quiet_known_noise(verbose=True)
    quiet_known_noise(verbose=True)  # idempotent
    _trainer(tmp_path)
    assert not any("💡 Tip" in message for message in lightning_messages)
    assert any(message.startswith("GPU available") for message in lightning_messages)
    for name in console._RANK_ZERO_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, console._AdvertisingFilter) for f in filters) == 1


def test_lightnings_routine_lines_are_quiet_and_ours_stay(lightning_messages, tmp_path, monkeypatch):
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    quiet_known_noise()
    quiet_known_noise()  # idempotent
    pl.seed_everything(3)
    _trainer(tmp_path)
    rank_zero_info("preference data 'train': 3/3 pairs kept")  # this library's information, through Lightning's
    with pytest.warns(UserWarning, match="a real warning"):
        rank_zero_warn("a real warning")
    assert lightning_messages == ["preference data 'train': 3/3 pairs kept"]
    handlers = [h for name in ("lightning.pytorch", "lightning.fabric") for h in logging.getLogger(name).handlers]
    assert all(sum(isinstance(f, console._RoutineFilter) for f in h.filters) == 1 for h in handlers)
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    quiet_known_noise()  # BETADPO_VERBOSE=1 brings the routine lines back
    _trainer(tmp_path)
    assert any(message.startswith("GPU available") for message in lightning_messages)


def test_lightnings_all_gather_deprecation_is_filtered_only_from_lightning():
    message = "torch.distributed.nn.functional.all_gather is deprecated, use torch.distributed.x instead."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        for module in ("lightning.fabric.utilities.distributed", "somebody.else"):
            warnings.warn_explicit(message, FutureWarning, "x.py", 1, module=module)
    assert [str(w.message) for w in caught] == [message]


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


def test_datasets_progress_bars_are_off_when_piped_unless_verbose(monkeypatch):
    import datasets

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    try:
        datasets.enable_progress_bars()
        quiet_known_noise(verbose=True)
        assert datasets.is_progress_bar_enabled()
        quiet_known_noise(verbose=False)
        assert not datasets.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bars()
