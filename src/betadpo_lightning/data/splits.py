"""Where a datamodule's pairs come from: the tokenizer, the source splits, their cached tokenization, their identity.

A :class:`SplitSource` holds every setting that decides the tokenized pairs. ``prepare_data`` and ``setup`` of
:class:`~betadpo_lightning.data.PreferenceDataModule` call it to load the tokenizer and to tokenize the splits
(through the ``datasets`` cache, see :mod:`betadpo_lightning.data.pipeline`); caches computed from the pairs key
themselves with :meth:`SplitSource.identity`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.options import SYNTHETIC
from betadpo_lightning.data.pipeline import (
    SplitRendering,
    TokenizationSpec,
    content_hash,
    kept_pairs,
    split_off_validation,
    split_rendering,
    tokenize_split,
    tokenizer_fingerprint,
)
from betadpo_lightning.data.setup_report import ReportContext, build_report, log_split_reports
from betadpo_lightning.data.sources import DataFiles, load_source, load_tokenizer, pick_split
from betadpo_lightning.data.split_names import match_splits
from betadpo_lightning.data.stats import SplitStats, log_stats
from betadpo_lightning.data.synthetic import SyntheticConfig, split_files, synthetic_dir, write_synthetic_dataset
from betadpo_lightning.data.synthetic.files import TOKENIZER_FOLDER
from betadpo_lightning.data.tokenize import unknown_token_id

__all__ = ["LoadedPairs", "SplitSource", "TokenizedSplits", "load_pairs"]


@dataclass(frozen=True)
class TokenizedSplits:
    """The tokenized splits (every row, with its status) and the malformed source lines skipped per source split.

    Args:
        splits: ``"train"`` and, when configured and present, ``"validation"`` and ``"test"``.
        skipped_lines: Lines of local files that could not be parsed and were skipped, per source split name.
    """

    splits: dict[str, datasets.Dataset]
    skipped_lines: dict[str, int] = field(default_factory=dict)
    raw: dict[str, datasets.Dataset] = field(default_factory=dict)
    """The raw source split behind each split (the training split's for a ``val_fraction`` validation split)."""
    renderings: dict[str, SplitRendering] = field(default_factory=dict)
    """How each split's rows are read and rendered."""


@dataclass(frozen=True)
class SplitSource:
    """The settings that decide a datamodule's tokenized pairs.

    See :class:`~betadpo_lightning.data.PreferenceDataModule` for each one's meaning.

    Args:
        dataset: ``"synthetic"``, a local file or folder, a ``datasets`` builder name or a Hub dataset name.
        dataset_config: The dataset's config (subset) name.
        data_files: Files to read, as ``datasets.load_dataset`` takes them.
        train_split: The source split used for training.
        val_split: The source split used for validation (ignored with ``val_fraction``).
        val_fraction: Share of the training split held out for validation.
        test_split: The source split that ``test`` evaluates.
        tokenizer_name: Hub name or folder of the tokenizer (``None``: the synthetic tokenizer).
        tokenizer_kwargs: Extra arguments of ``AutoTokenizer.from_pretrained``.
        spec: How rows become tokenized pairs.
        cache_dir: Cache folder for ``datasets`` and the synthetic data.
        seed: Seed of the ``val_fraction`` split.
        num_proc: Tokenization processes.
        synthetic: The synthetic dataset's options (``None`` for any other dataset).
    """

    dataset: str
    dataset_config: str | None
    data_files: DataFiles | None
    train_split: str
    val_split: str | None
    val_fraction: float | None
    test_split: str | None
    tokenizer_name: str | None
    tokenizer_kwargs: Mapping[str, object]
    spec: TokenizationSpec
    cache_dir: str | None = None
    seed: int = 0
    num_proc: int | None = None
    synthetic: SyntheticConfig | None = None

    def write_synthetic(self) -> None:
        """Write the synthetic dataset and its tokenizer to the cache folder (nothing for other datasets)."""
        if self.synthetic is not None:
            write_synthetic_dataset(self.synthetic, self.synthetic_root())

    def synthetic_root(self) -> Path:
        """The folder under which the synthetic data is written."""
        return Path(self.cache_dir) if self.cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)

    def synthetic_folder(self) -> Path:
        """The folder of this configuration's synthetic data.

        Raises:
            RuntimeError: If the dataset is not the synthetic one, or its data has not been written yet.
        """
        if self.synthetic is None:
            raise RuntimeError(f"dataset '{self.dataset}' is not the synthetic dataset")
        folder = synthetic_dir(self.synthetic, self.synthetic_root())
        if not folder.is_dir():
            raise RuntimeError(f"synthetic data not found at '{folder}'; call prepare_data() before setup()")
        return folder

    def load_tokenizer(self, warn: bool) -> PreTrainedTokenizerBase:
        """The tokenizer (with a pad token); the synthetic one when no name is given.

        Args:
            warn: Whether to warn about a pad token set to EOS.
        """
        name = self.tokenizer_name
        if name is None:
            name = str(self.synthetic_folder() / TOKENIZER_FOLDER)
        return load_tokenizer(name, self.tokenizer_kwargs, warn=warn)

    def source_split(self, split: str) -> str | None:
        """The source split behind ``"train"``, ``"validation"`` or ``"test"``."""
        return {"train": self.train_split, "validation": self.val_split, "test": self.test_split}[split]

    def tokenized_splits(self, tokenizer: PreTrainedTokenizerBase, warn: bool) -> TokenizedSplits:
        """Load the source and tokenize its splits (read from the ``datasets`` cache when done before).

        Args:
            tokenizer: The tokenizer.
            warn: Whether to warn about a missing validation split.

        Returns:
            The tokenized ``"train"`` split and, when configured, ``"validation"`` and ``"test"``.

        Raises:
            PreferenceDataError: If no training split can be chosen or a row is bad (with ``on_bad_row="error"``);
                a configured split that is missing falls back as :mod:`~betadpo_lightning.data.split_names` says.
        """
        source, skipped = self._source()
        wanted = {"train": self.train_split, "validation": None if self.val_fraction is not None else self.val_split}
        source, skipped = match_splits(source, skipped, self.dataset, {**wanted, "test": self.test_split}, warn)
        train = pick_split(source, self.train_split, self.dataset)
        tokenized = {"train": tokenize_split(train, tokenizer, self.spec, self.train_split, self.num_proc)}
        raws = {"train": train}
        if self.val_fraction is not None:
            tokenized["train"], tokenized["validation"] = split_off_validation(
                tokenized["train"], self.val_fraction, self.seed
            )
            raws["validation"] = train
        elif self.val_split is not None and self.val_split in source:
            raw = source[self.val_split]
            tokenized["validation"] = tokenize_split(raw, tokenizer, self.spec, self.val_split, self.num_proc)
            raws["validation"] = raw
        elif warn and self.val_split is not None and (self.synthetic is None or self.synthetic.validation_size > 0):
            rank_zero_warn(
                f"dataset '{self.dataset}' has no split '{self.val_split}' (available: {sorted(source)}); "
                "training without validation (set val_split or val_fraction)"
            )
        if self.test_split is not None and self.test_split in source:  # else `test` evaluates the validation split
            raw = pick_split(source, self.test_split, self.dataset)
            tokenized["test"] = tokenize_split(raw, tokenizer, self.spec, self.test_split, self.num_proc)
            raws["test"] = raw
        renderings = {split: split_rendering(raw, tokenizer, self.spec) for split, raw in raws.items()}
        return TokenizedSplits(tokenized, skipped, raws, renderings)

    def identity(self, tokenizer: PreTrainedTokenizerBase, splits: Mapping[str, datasets.Dataset]) -> dict[str, object]:
        """What the tokenized pairs depend on, for keys of caches computed from them.

        Args:
            tokenizer: The tokenizer the pairs were made with.
            splits: The kept pairs per split.

        Returns:
            ``tokenizer`` (name, size, content hash), ``data`` (source, splits with row counts and fingerprints)
            and ``truncation`` (the limits).
        """
        return {
            "tokenizer": {
                "name": str(self.tokenizer_name or SYNTHETIC),
                "size": len(tokenizer),
                "hash": tokenizer_fingerprint(tokenizer),
            },
            "data": {
                "dataset": self.dataset,
                "config": self.dataset_config,
                "files": self.data_files,
                "synthetic": None if self.synthetic is None else dataclasses.asdict(self.synthetic),
                "splits": {name: {"rows": len(data), "content": content_hash(data)} for name, data in splits.items()},
            },
            "truncation": dataclasses.asdict(self.spec.limits),
        }

    def _source(self) -> tuple[datasets.DatasetDict, dict[str, int]]:
        if self.synthetic is not None:
            files = split_files(self.synthetic, self.synthetic_folder())
            return load_source("json", data_files=dict(files), cache_dir=self.cache_dir).splits, {}
        loaded = load_source(self.dataset, self.dataset_config, self.data_files, self.cache_dir, self.spec.on_bad_row)
        return loaded.splits, dict(loaded.skipped_lines)


@dataclass(frozen=True)
class LoadedPairs:
    """What ``setup`` keeps: the tokenizer, the kept pairs per split and their counts.

    Args:
        tokenizer: The tokenizer, with a pad token.
        splits: The kept pairs per split.
        stats: Kept/dropped/skipped/truncated row counts per split.
    """

    tokenizer: PreTrainedTokenizerBase
    splits: dict[str, datasets.Dataset]
    stats: dict[str, SplitStats]
    renderings: dict[str, SplitRendering] = field(default_factory=dict)
    """How each split's rows were read and rendered (the format, and whether with the chat template)."""


def load_pairs(source: SplitSource, template_origin: str | None = None) -> LoadedPairs:
    """Load the tokenizer and the tokenized splits (cached by ``prepare_data``), count them and log each split's block.

    Args:
        source: the settings of the splits.
        template_origin: where a template given in ``data.chat_template`` came from (for the log), if any.

    Raises:
        PreferenceDataError: If no training pair is left after tokenization.
    """
    tokenizer = source.load_tokenizer(warn=True)
    tokenized = source.tokenized_splits(tokenizer, warn=True)
    stats = {
        split: SplitStats.from_tokenized(data, unknown_token_id(tokenizer)).with_malformed_lines(
            tokenized.skipped_lines.get(str(source.source_split(split)), 0)
        )
        for split, data in tokenized.splits.items()
    }
    _log_reports(source, tokenizer, tokenized, stats, template_origin)
    if stats["train"].kept == 0:
        raise PreferenceDataError(f"no training pair is left after tokenization: {stats['train'].summary('train')}")
    splits = {split: kept_pairs(data) for split, data in tokenized.splits.items()}
    return LoadedPairs(tokenizer, splits, stats, tokenized.renderings)


def _log_reports(
    source: SplitSource,
    tokenizer: PreTrainedTokenizerBase,
    tokenized: TokenizedSplits,
    stats: dict[str, SplitStats],
    template_origin: str | None,
) -> None:
    """Each split's block (:mod:`~betadpo_lightning.data.setup_report`), or its counts where it lacks the raw rows."""
    if not all(split in tokenized.raw and split in tokenized.renderings for split in stats):
        for split, counts in stats.items():
            log_stats(split, counts)
        return
    held_out = source.val_fraction is not None
    names = {"train": source.train_split, "validation": source.train_split if held_out else source.val_split}
    names["test"] = source.test_split
    context = ReportContext(
        dataset=source.dataset,
        spec=source.spec,
        tokenizer=tokenizer,
        origin=template_origin,
        synthetic=source.synthetic is not None,
        source_names={split: str(name) for split, name in names.items() if name is not None},
    )
    reports = [
        build_report(split, tokenized.raw[split], tokenized.splits[split], counts, tokenized.renderings[split], context)
        for split, counts in stats.items()
    ]
    log_split_reports(reports)
