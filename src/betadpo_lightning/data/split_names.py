"""Configured split names matched to the splits a source really has, with a one-line note for every fallback.

Shipped configs name the splits of a Hub dataset (``train_prefs``/``test_prefs`` for UltraFeedback, ``test`` for
HH-RLHF); a local file has one split, ``train``, and a local folder the splits its file names give. The rules:

* **training** (``train_split``): the configured split; else ``train``; else the only split of the source. Anything
  else is an error listing the available splits.
* **validation** (``val_split``, unless ``val_fraction`` holds rows out): the configured split; else the first of
  :data:`EVAL_SPLITS` that the source has, other than the training split. Without one, training runs without
  validation (the caller warns, naming ``val_fraction``): training rows are never held out unless asked for.
* **test** (``test_split``): as validation, trying ``test`` first; without one, ``test`` evaluates the validation
  split.

Every fallback is announced in one warning naming the configured split, the one used and the option that sets it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import datasets
from lightning.pytorch.utilities import rank_zero_warn

from betadpo_lightning.data.errors import PreferenceDataError

__all__ = ["EVAL_SPLITS", "choose_split", "match_splits"]

EVAL_SPLITS = ("validation", "valid", "val", "dev", "eval", "test")
"""Split names tried, in this order, for a validation split the source does not have (``test`` first for tests)."""

Role = Literal["train", "validation", "test"]
_OPTIONS = {"train": "train_split", "validation": "val_split", "test": "test_split"}


def choose_split(available: Sequence[str], wanted: str, role: Role, exclude: str | None = None) -> str | None:
    """The source split to use for ``role`` when ``wanted`` is configured (see the module docstring).

    Args:
        available: The source's split names.
        wanted: The configured split name.
        role: ``"train"``, ``"validation"`` or ``"test"``.
        exclude: A split that must not be chosen as a fallback (the training split, for evaluation).

    Returns:
        The split to use, or ``None`` when an evaluation split has no fallback.

    Raises:
        PreferenceDataError: When no training split can be chosen.

    Examples:
        >>> choose_split(["train"], "train_prefs", "train"), choose_split(["train", "test"], "test_prefs", "validation")
        ('train', 'test')
        >>> choose_split(["train"], "test", "validation", exclude="train") is None
        True
    """
    if wanted in available:
        return wanted
    if role == "train":
        if "train" in available:
            return "train"
        if len(available) == 1:
            return available[0]
        raise PreferenceDataError(
            f"has no split '{wanted}' and no 'train' split to use instead; available splits: {sorted(available)} "
            "(set data.train_split)"
        )
    order = ("test", *EVAL_SPLITS) if role == "test" else EVAL_SPLITS
    return next((name for name in order if name in available and name != exclude), None)


def match_splits(
    splits: datasets.DatasetDict,
    skipped: Mapping[str, int],
    source: str,
    wanted: Mapping[Role, str | None],
    warn: bool = True,
) -> tuple[datasets.DatasetDict, dict[str, int]]:
    """The source's splits with each configured name pointing at the split it falls back to.

    Args:
        splits: The source's splits.
        skipped: Malformed lines skipped per source split.
        source: The dataset's name (for the messages).
        wanted: The configured split name per role (``None``: the role is not used).
        warn: Whether to announce each fallback.

    Returns:
        The splits and the skipped line counts, each with the configured names added as aliases of the splits
        chosen for them; a name with no fallback is absent, as it was.

    Raises:
        PreferenceDataError: Naming the source, when no training split can be chosen.
    """
    available = list(splits)
    aliased, counts = dict(splits), dict(skipped)
    train = wanted.get("train")
    chosen_train = None
    if train is not None:
        try:
            chosen_train = choose_split(available, train, "train")
        except PreferenceDataError as error:
            raise PreferenceDataError(f"dataset '{source}' {error}") from None
    for role, name in wanted.items():
        if name is None or name in splits:
            continue
        chosen = chosen_train if role == "train" else choose_split(available, name, role, exclude=chosen_train)
        if chosen is None:
            if warn and role == "test":
                rank_zero_warn(
                    f"dataset '{source}' has no split '{name}' (available: {sorted(available)}); testing on the "
                    "validation split instead (set data.test_split)"
                )
            continue
        aliased[name] = splits[chosen]
        if chosen in skipped:
            counts[name] = skipped[chosen]
        if warn:
            rank_zero_warn(_note(source, name, chosen, role))
    return datasets.DatasetDict(aliased), counts


def _note(source: str, wanted: str, chosen: str, role: Role) -> str:
    action = {"train": "training on", "validation": "validating on", "test": "testing on"}[role]
    hint = " (or data.val_fraction to hold out training rows)" if role == "validation" else ""
    option = f"data.{_OPTIONS[role]}"
    return f"dataset '{source}' has no split '{wanted}'; {action} its split '{chosen}' (set {option}{hint})"
