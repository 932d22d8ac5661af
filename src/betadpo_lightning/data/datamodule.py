"""``PreferenceDataModule``: preference datasets in, exactly tokenized pairs out."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from betadpo_lightning.data.collate import collate_preference_pairs
from betadpo_lightning.data.dataloaders import eval_loader, resumable_train_loader
from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.formats import ColumnNames, FormatOption
from betadpo_lightning.data.options import SYNTHETIC, check_options, check_positive
from betadpo_lightning.data.pipeline import (
    TokenizationSpec,
    content_hash,
    kept_pairs,
    split_off_validation,
    tokenize_split,
    tokenizer_fingerprint,
)
from betadpo_lightning.data.render import ChatTemplateOption, check_template_kwargs
from betadpo_lightning.data.sources import DataFiles, load_source, load_tokenizer, pick_split
from betadpo_lightning.data.stats import SplitStats, log_stats
from betadpo_lightning.data.synthetic import SyntheticConfig, split_files, synthetic_dir, write_synthetic_dataset
from betadpo_lightning.data.synthetic.files import TOKENIZER_FOLDER
from betadpo_lightning.data.synthetic.vocab import gold_reward
from betadpo_lightning.data.tokenize import BadRowPolicy
from betadpo_lightning.data.truncation import TruncationLimits
from betadpo_lightning.data.vocab_check import first_token_at_least, largest_token_id

TokenizerKwargs = dict[str, str | int | float | bool | None]


class PreferenceDataModule(LightningDataModule):
    """Loads a preference dataset, tokenizes it once into exact prompt/response pairs and serves pair batches.

    ``prepare_data`` (once per node) loads the source and tokenizes it through ``datasets.map``, whose Arrow cache is
    keyed by a fingerprint of the data, tokenizer and settings; ``setup`` (on every process) reads the same cached
    data, computes :attr:`stats` and logs them. Batches follow the contract of
    :func:`~betadpo_lightning.data.collate.collate_preference_pairs`.

    Args:
        dataset: ``"synthetic"`` for the built-in dataset; a local ``.json``/``.jsonl``/``.parquet``/``.csv`` file
            (its rows form the ``"train"`` split); a local folder of such files named by split (e.g.
            ``train.jsonl``); a ``datasets`` builder name (``"json"``, ``"parquet"``, ``"csv"``) used with
            ``data_files``; or a dataset name on the Hugging Face Hub.
        dataset_config: Config (subset) name of the dataset, if it has several.
        data_files: Files to read, as ``datasets.load_dataset`` takes them (a path, a list, or split → paths).
        train_split: Name of the training split.
        val_split: Name of the validation split; a missing one means no validation, with a warning. Not used when
            ``val_fraction`` is set.
        val_fraction: Share of the training split held out for validation (drawn with ``seed``), in ``(0, 1)``.
        test_split: Name of the split that ``test`` evaluates (``cli.py test``); ``None`` tests on the validation
            split.
        prompt_column: Column holding the prompt (a string or a message list).
        chosen_column: Column holding the preferred response (a string or a message list).
        rejected_column: Column holding the dispreferred response (a string or a message list).
        format: ``"auto"`` to detect from the columns, or ``"standard"``, ``"conversational"`` or ``"implicit"``
            (see :mod:`betadpo_lightning.data.formats`).
        tokenizer: Hub name or local folder of the tokenizer; defaults to the synthetic tokenizer when
            ``dataset="synthetic"`` and is required otherwise.
        tokenizer_kwargs: Extra arguments of ``AutoTokenizer.from_pretrained`` (e.g. ``{"revision": "main"}``).
        chat_template: Render rows with the tokenizer's chat template: ``"auto"`` for message lists only, ``True``
            also for standard string rows (prompt as a user turn, responses as assistant turns), ``False`` never.
        chat_template_kwargs: Extra variables for the chat template, e.g. ``{"enable_thinking": False}`` for Qwen3
            (see :mod:`betadpo_lightning.data.boundary`).
        max_length: Most tokens of prompt + response per row (``None``: no limit).
        max_prompt_length: Most prompt tokens, cut from the left (``None``: only ``max_length`` applies).
        min_response_length: Response tokens the prompt is cut further to make room for.
        on_bad_row: ``"error"`` raises on a malformed row, naming its index and field; ``"skip"`` drops it and
            counts it in :attr:`stats`.
        batch_size: Preference pairs per training batch and device (a batch holds ``2 * batch_size`` rows).
        eval_batch_size: Pairs per validation batch and device (defaults to ``batch_size``).
        num_workers: Worker processes of each data loader.
        num_proc: Processes for tokenization (``None``: in the main process).
        pad_to_multiple_of: Pad each batch's length up to a multiple of this, if set.
        cache_dir: Cache folder for ``datasets`` and the synthetic data (the ``datasets`` cache when ``None``).
        seed: Seed of the training shuffle and of the ``val_fraction`` split.
        synthetic: Options of the synthetic dataset (its defaults when ``None``); only for ``dataset="synthetic"``.
    """

    def __init__(
        self,
        dataset: str = SYNTHETIC,
        dataset_config: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        val_fraction: float | None = None,
        test_split: str | None = None,
        prompt_column: str = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        format: FormatOption = "auto",
        tokenizer: str | None = None,
        tokenizer_kwargs: TokenizerKwargs | None = None,
        chat_template: ChatTemplateOption = "auto",
        chat_template_kwargs: dict[str, Any] | None = None,
        max_length: int | None = 1024,
        max_prompt_length: int | None = 512,
        min_response_length: int = 1,
        on_bad_row: BadRowPolicy = "error",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int | None = None,
        pad_to_multiple_of: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        synthetic: SyntheticConfig | None = None,
    ) -> None:
        super().__init__()
        check_options(dataset, tokenizer, synthetic, val_fraction, format, chat_template, on_bad_row)
        check_positive(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_proc=num_proc,
            pad_to_multiple_of=pad_to_multiple_of,
        )
        if num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {num_workers}")
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.data_files: DataFiles | None = data_files
        self.train_split = train_split
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.test_split = test_split
        self.tokenizer_name = tokenizer
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.pad_to_multiple_of = pad_to_multiple_of
        self.cache_dir = cache_dir
        self.seed = seed
        self.synthetic = (synthetic or SyntheticConfig()) if dataset == SYNTHETIC else None
        # Recorded in checkpoints (`datamodule_hyper_parameters`): the export finds the run's tokenizer there.
        self.save_hyperparameters(ignore=["synthetic"])
        self.hparams["synthetic"] = None if self.synthetic is None else dataclasses.asdict(self.synthetic)
        self.spec = TokenizationSpec(
            names=ColumnNames(prompt_column, chosen_column, rejected_column),
            format=format,
            chat_template=chat_template,
            limits=TruncationLimits(max_length, max_prompt_length, min_response_length),
            on_bad_row=on_bad_row,
            chat_template_kwargs=check_template_kwargs(chat_template_kwargs),
        )
        self.tokenizer: PreTrainedTokenizerBase | None = None
        """The tokenizer, with a pad token; set by :meth:`setup`."""
        self.stats: dict[str, SplitStats] = {}
        """Kept/dropped/skipped/truncated row counts per split (``"train"``, ``"validation"``); set by :meth:`setup`."""
        self.splits: dict[str, datasets.Dataset] = {}
        """The kept pairs per split; set by :meth:`setup`."""
        self._skipped_lines: dict[str, int] = {}  # malformed lines skipped per source split

    @override
    def prepare_data(self) -> None:
        """Write the synthetic data if needed, then load, tokenize and filter the splits into the ``datasets`` cache."""
        if self.synthetic is not None:
            write_synthetic_dataset(self.synthetic, self._synthetic_root())
        for data in self._tokenized_splits(self._load_tokenizer(warn=False), warn=False).values():
            kept_pairs(data)

    @override
    def setup(self, stage: str) -> None:
        """Load the tokenizer and the cached tokenized splits; compute and log :attr:`stats`.

        Args:
            stage: The trainer stage (``"fit"``, ``"validate"``, ...); all stages load the same splits.
        """
        if self.splits:
            return
        tokenizer = self._load_tokenizer(warn=True)
        tokenized = self._tokenized_splits(tokenizer, warn=True)
        stats = {
            split: SplitStats.from_tokenized(data, tokenizer.unk_token_id).with_malformed_lines(
                self._skipped_lines.get(str(self._source_split(split)), 0)
            )
            for split, data in tokenized.items()
        }
        for split, counts in stats.items():
            log_stats(split, counts)
        if stats["train"].kept == 0:
            raise PreferenceDataError(f"no training pair is left after tokenization: {stats['train'].summary('train')}")
        self.stats = stats
        self.splits = {split: kept_pairs(data) for split, data in tokenized.items()}
        self.tokenizer = tokenizer

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of this rank, in an order fixed by ``seed`` and the epoch; resumable mid-epoch.

        Each rank gets its share of one permutation (a :class:`~torch.utils.data.DistributedSampler`, which Lightning
        keeps as it is); the loader's position is saved in checkpoints, so a resumed run continues with the next
        batch. The last, smaller batch is kept.
        """
        # The data-parallel replicas (under model parallelism not every rank is one): the strategy knows them.
        replicas = self._replicas()
        return resumable_train_loader(
            self._split("train"),  # type: ignore[arg-type]
            batch_size=self.batch_size,
            collate_fn=self._collate(),
            seed=self.seed,
            num_replicas=replicas["num_replicas"],
            rank=replicas["rank"],
            num_workers=self.num_workers,
        )

    @override
    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches in dataset order, or an empty list when there is no validation split.

        Each rank gets its share; the samples that pad the ranks to equal counts are flagged (``is_padding``) and
        count in no metric, so the validation values do not depend on the number of ranks.
        """
        if "validation" not in self.splits:
            self._split("train")  # raises if setup has not run
            return []
        return self._eval_loader("validation")

    @override
    def test_dataloader(self) -> DataLoader:
        """The ``test_split``'s batches (the validation split's without one), served like validation batches.

        Raises:
            PreferenceDataError: when there is neither a test nor a validation split.
        """
        split = "test" if "test" in self.splits else "validation"
        if split not in self.splits:
            self._split("train")  # raises if setup has not run
            raise PreferenceDataError(
                f"nothing to test on: dataset '{self.dataset}' has no test split configured and no validation split; "
                "set data.test_split, data.val_split or data.val_fraction"
            )
        return self._eval_loader(split)

    def _eval_loader(self, split: str) -> DataLoader:
        replicas = self._replicas()
        return eval_loader(
            self.splits[split],  # type: ignore[arg-type]
            self.eval_batch_size,
            self._collate(),
            num_replicas=replicas["num_replicas"],
            rank=replicas["rank"],
            num_workers=self.num_workers,
        )

    def _replicas(self) -> dict[str, int]:
        """The data-parallel replicas of the Trainer's strategy (one process outside a Trainer)."""
        trainer = self.trainer
        kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) if trainer is not None else None
        return (
            {"num_replicas": kwargs["num_replicas"], "rank": kwargs["rank"]}
            if kwargs
            else {"num_replicas": 1, "rank": 0}
        )

    # ------------------------------------------------------------ what models, caches and callbacks ask
    @property
    def gold_reward_fn(self) -> Callable[[str], float] | None:
        """The data's known reward of a response text, or ``None`` for data without one.

        The built-in synthetic dataset's :func:`~betadpo_lightning.data.synthetic.gold_reward`; callbacks such as
        :class:`~betadpo_lightning.callbacks.generations.SampleGenerations` score their samples with it.
        """
        return gold_reward if self.synthetic is not None else None

    def token_id_beyond(self, vocab_size: int) -> str | None:
        """The first token id of the data (the padding id included) that ``vocab_size`` embedding rows cannot embed.

        Args:
            vocab_size: the number of rows of a model's input embedding.

        Returns:
            Which id and where (split, row, part), or ``None`` when every id fits.
        """
        pad = self._tokenizer_ready().pad_token_id
        if pad is not None and pad >= vocab_size:
            return f"the padding token id {pad}"
        largest = largest_token_id(self.splits)
        if largest is None or largest < vocab_size:
            return None
        found = first_token_at_least(self.splits, vocab_size)
        return found.describe() if found is not None else f"token id {largest}"

    def cache_identity(self) -> dict[str, object]:
        """What the tokenized pairs depend on, for keys of caches computed from them (after :meth:`setup`).

        Returns:
            ``tokenizer`` (name, size, content hash), ``data`` (source, splits with row counts and fingerprints)
            and ``truncation`` (the limits).
        """
        tokenizer = self.tokenizer
        if tokenizer is None or not self.splits:
            raise RuntimeError("PreferenceDataModule: call prepare_data() and setup() first")
        return {
            "tokenizer": {
                "name": str(self.tokenizer_name or "synthetic"),
                "size": len(tokenizer),
                "hash": tokenizer_fingerprint(tokenizer),
            },
            "data": {
                "dataset": self.dataset,
                "config": self.dataset_config,
                "files": self.data_files,
                "synthetic": None if self.synthetic is None else dataclasses.asdict(self.synthetic),
                "splits": {
                    name: {"rows": len(data), "content": content_hash(data)} for name, data in self.splits.items()
                },
            },
            "truncation": dataclasses.asdict(self.spec.limits),
        }

    def collate(self, samples: list[dict]) -> dict[str, Tensor]:
        """Collate samples of :attr:`splits` into a batch (the loaders' collate function)."""
        return self._collate()(samples)

    def attach_columns(self, split: str, columns: dict[str, list[float]]) -> None:
        """Add per-pair columns (e.g. precomputed ``reference_chosen_logps``) to a split; batches then carry them.

        Raises:
            ValueError: naming the column whose length differs from the split's.
        """
        data = self._split(split)
        for name, values in columns.items():
            if len(values) != len(data):
                raise ValueError(f"column {name!r} has {len(values)} values for the {len(data)} pairs of '{split}'")
            if name in data.column_names:
                data = data.remove_columns(name)
            data = data.add_column(name, values)
        self.splits[split] = data

    def _tokenizer_ready(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise RuntimeError("PreferenceDataModule: call prepare_data() and setup() before asking for data loaders")
        return self.tokenizer

    def _collate(self) -> functools.partial:
        return functools.partial(
            collate_preference_pairs,
            pad_token_id=self._tokenizer_ready().pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    def _split(self, name: str) -> datasets.Dataset:
        if not self.splits:
            raise RuntimeError("PreferenceDataModule: call prepare_data() and setup() before asking for data loaders")
        return self.splits[name]

    def _synthetic_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)

    def _synthetic_folder(self) -> Path:
        if self.synthetic is None:
            raise RuntimeError(f"dataset '{self.dataset}' is not the synthetic dataset")
        folder = synthetic_dir(self.synthetic, self._synthetic_root())
        if not folder.is_dir():
            raise RuntimeError(f"synthetic data not found at '{folder}'; call prepare_data() before setup()")
        return folder

    def _load_tokenizer(self, warn: bool) -> PreTrainedTokenizerBase:
        name = self.tokenizer_name
        if name is None:
            name = str(self._synthetic_folder() / TOKENIZER_FOLDER)
        return load_tokenizer(name, self.tokenizer_kwargs, warn=warn)

    def _source(self) -> datasets.DatasetDict:
        if self.synthetic is not None:
            files = split_files(self.synthetic, self._synthetic_folder())
            return load_source("json", data_files=dict(files), cache_dir=self.cache_dir).splits
        loaded = load_source(self.dataset, self.dataset_config, self.data_files, self.cache_dir, self.spec.on_bad_row)
        self._skipped_lines = loaded.skipped_lines
        return loaded.splits

    def _source_split(self, split: str) -> str | None:
        """The source split behind ``"train"``, ``"validation"`` or ``"test"``."""
        return {"train": self.train_split, "validation": self.val_split, "test": self.test_split}[split]

    def _tokenized_splits(self, tokenizer: PreTrainedTokenizerBase, warn: bool) -> dict[str, datasets.Dataset]:
        source = self._source()
        train = pick_split(source, self.train_split, self.dataset)
        tokenized = {"train": tokenize_split(train, tokenizer, self.spec, self.train_split, self.num_proc)}
        if self.val_fraction is not None:
            tokenized["train"], tokenized["validation"] = split_off_validation(
                tokenized["train"], self.val_fraction, self.seed
            )
        elif self.val_split is not None and self.val_split in source:
            raw = source[self.val_split]
            tokenized["validation"] = tokenize_split(raw, tokenizer, self.spec, self.val_split, self.num_proc)
        elif warn and self.val_split is not None and (self.synthetic is None or self.synthetic.validation_size > 0):
            rank_zero_warn(
                f"dataset '{self.dataset}' has no split '{self.val_split}' (available: {sorted(source)}); "
                "training without validation (set val_split or val_fraction)"
            )
        if self.test_split is not None:
            raw = pick_split(source, self.test_split, self.dataset)
            tokenized["test"] = tokenize_split(raw, tokenizer, self.spec, self.test_split, self.num_proc)
        return tokenized
