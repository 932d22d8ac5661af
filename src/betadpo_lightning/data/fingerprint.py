"""The fingerprint of the pairs a run trains on, kept in its checkpoints: a resumed fit refuses other data.

Per split (``train``, ``validation``) the number of pairs and a hash of their content in order — the token ids of
prompt, chosen and rejected and the source row of each pair (:func:`~betadpo_lightning.data.pipeline.content_hash`)
— so a change of the files, of their rows or labels, of the tokenizer or of the truncation is seen wherever the
files lie. (``datasets``' own ``Dataset._fingerprint`` of a local file depends on its path and modification time,
not its content.) :class:`PreferenceDataModule` returns it from ``state_dict`` (Lightning stores that in every
checkpoint) and checks it in ``load_state_dict`` when a fit resumes; evaluating a checkpoint on other data
(``validate``, ``test``) is not checked. The hash is computed once per split, at the first checkpoint or resume
(about a second per 30 million tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from lightning.pytorch.utilities import rank_zero_warn

from betadpo_lightning.data.pipeline import content_hash

__all__ = ["ALLOW_OPTION", "CHECKED_SPLITS", "ChangedDataError", "DataFingerprint", "fingerprint_changes"]

CHECKED_SPLITS = ("train", "validation")
"""The splits compared on resume (a test split is only evaluated, never resumed)."""

ALLOW_OPTION = "data.allow_changed_data"
"""The option that lets a fit resume on changed data."""

_KEY = "fingerprint"


class ChangedDataError(ValueError):
    """A fit resumes from a checkpoint of a run that trained on other data."""


def _pairs(count: int | None) -> str:
    return "none" if count is None else f"{count} pair{'s' if count != 1 else ''}"


def fingerprint_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, split by split.

    Args:
        saved: the checkpoint's fingerprint (split → ``{"rows", "content"}``).
        current: the fingerprint of the data now.

    Returns:
        One phrase per changed split, e.g. ``"train: 200 pairs in the checkpoint, 120 now"`` or ``"train: 200 pairs
        in both, with other content (token ids or order)"``; empty when nothing changed.
    """
    changes = []
    for split in [name for name in CHECKED_SPLITS if name in saved or name in current]:
        before, now = saved.get(split), current.get(split)
        rows_before = None if before is None else int(before["rows"])
        rows_now = None if now is None else int(now["rows"])
        if rows_before != rows_now:
            changes.append(f"{split}: {_pairs(rows_before)} in the checkpoint, {_pairs(rows_now)} now")
        elif before is not None and now is not None and before["content"] != now["content"]:
            changes.append(f"{split}: {_pairs(rows_now)} in both, with other content (token ids or order)")
    return changes


class DataFingerprint:
    """The fingerprint of a datamodule's splits, computed once per split, and the check on resume.

    Args:
        allow_changed: resume on changed data anyway (with a warning that says what changed).
    """

    def __init__(self, allow_changed: bool = False) -> None:
        self.allow_changed = allow_changed
        self._cache: dict[str, tuple[datasets.Dataset, dict[str, Any]]] = {}

    def of(self, splits: Mapping[str, datasets.Dataset]) -> dict[str, dict[str, Any]]:
        """Split → ``{"rows": pairs, "content": hash}`` for the checked splits among ``splits``."""
        result = {}
        for name in CHECKED_SPLITS:
            data = splits.get(name)
            if data is None:
                continue
            cached = self._cache.get(name)
            if cached is None or cached[0] is not data:  # a split replaced (e.g. columns attached): hash it again
                cached = (data, {"rows": len(data), "content": content_hash(data)})
                self._cache[name] = cached
            result[name] = cached[1]
        return result

    def state_dict(self, splits: Mapping[str, datasets.Dataset]) -> dict[str, Any]:
        """What a checkpoint keeps: the fingerprint of ``splits`` (nothing before ``setup``)."""
        return {_KEY: self.of(splits)} if splits else {}

    def check(self, state: Mapping[str, Any], splits: Mapping[str, datasets.Dataset], checkpoint: str | None) -> None:
        """Compare a checkpoint's fingerprint with ``splits``; refuse a difference unless it is allowed.

        Args:
            state: what :meth:`state_dict` returned when the checkpoint was saved.
            splits: the data now.
            checkpoint: the checkpoint's path, for the message.

        Raises:
            ChangedDataError: naming each changed split (pair counts before and now), unless ``allow_changed``.
        """
        saved = state.get(_KEY)
        if not isinstance(saved, Mapping) or not splits:  # a checkpoint from before fingerprints, or no data yet
            return
        changes = fingerprint_changes(saved, self.of(splits))
        if not changes:
            return
        where = f"checkpoint {checkpoint}" if checkpoint else "the checkpoint"
        what = "; ".join(changes)
        if self.allow_changed:
            rank_zero_warn(f"resuming {where} on changed data ({ALLOW_OPTION} is true): {what}")
            return
        raise ChangedDataError(
            f"the data differ from those {where} was trained on: {what}; resume on the same data, or pass "
            f"--{ALLOW_OPTION} true to continue on these on purpose"
        )
