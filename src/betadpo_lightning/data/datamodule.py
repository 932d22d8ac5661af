"""``PreferenceDataModule``: preference datasets in, exactly tokenized pairs out."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import datasets
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from betadpo_lightning.data.batching import BatchPlan, check_token_budget
from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.fingerprint import DataFingerprint
from betadpo_lightning.data.formats import ColumnNames, FormatOption
from betadpo_lightning.data.options import SYNTHETIC, check_options, check_positive
from betadpo_lightning.data.pipeline import SplitRendering, TokenizationSpec, kept_pairs
from betadpo_lightning.data.queries import PairDataQueries
from betadpo_lightning.data.render import ChatTemplateMode, ChatTemplateOption, check_template_kwargs
from betadpo_lightning.data.sources import DataFiles
from betadpo_lightning.data.splits import SplitSource, load_pairs
from betadpo_lightning.data.stats import SplitStats
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.data.templates import parse_chat_template
from betadpo_lightning.data.tokenize import BadRowPolicy
from betadpo_lightning.data.truncation import TruncationLimits

TokenizerKwargs = dict[str, str | int | float | bool | None]


class PreferenceDataModule(PairDataQueries, LightningDataModule):
    """Loads a preference dataset, tokenizes it once into exact prompt/response pairs and serves pair batches.

    ``prepare_data`` (once per node) loads the source and tokenizes it through ``datasets.map``, whose Arrow cache is
    keyed by a fingerprint of the data, tokenizer and settings; ``setup`` (on every process) reads the same cached
    data, computes :attr:`stats` and logs them. Batches follow the contract of
    :func:`~betadpo_lightning.data.collate.collate_preference_pairs`, or of
    :func:`~betadpo_lightning.data.packing.pack_preference_pairs` with ``packing=True``
    (:class:`~betadpo_lightning.data.batching.BatchPlan` serves them).

    Args:
        dataset: ``"synthetic"`` for the built-in dataset; a local ``.json``/``.jsonl``/``.parquet``/``.csv`` file
            (its rows form the ``"train"`` split); a local folder of such files named by split (e.g.
            ``train.jsonl``); a ``datasets`` builder name (``"json"``, ``"parquet"``, ``"csv"``) used with
            ``data_files``; or a dataset name on the Hugging Face Hub.
        dataset_config: Config (subset) name of the dataset, if it has several.
        data_files: Files to read, as ``datasets.load_dataset`` takes them (a path, a list, or split → paths).
        train_split: Name of the training split. A configured split the source lacks falls back with a warning
            (to ``train``, or ``validation``/``test`` for evaluation; see :mod:`betadpo_lightning.data.split_names`).
        val_split: Name of the validation split; without it (or a fallback), no validation, with a warning. Not used
            when ``val_fraction`` is set.
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
        chat_template: Render rows with the tokenizer's chat template: ``"auto"`` for conversational rows only,
            ``True`` also for standard string rows (prompt as a user turn, responses as assistant turns), ``False``
            never; or a template file (``*.jinja``) or the template text (with ``{%``/``{{``) that replaces the
            tokenizer's own (see :mod:`betadpo_lightning.data.templates`).
        chat_template_kwargs: Extra variables for the chat template, e.g. ``{"enable_thinking": False}`` for Qwen3
            (see :mod:`betadpo_lightning.data.boundary`).
        max_length: Most tokens of prompt + response per row (``None``: no limit).
        max_prompt_length: Most prompt tokens, cut from the left (``None``: only ``max_length`` applies).
        min_response_length: Response tokens the prompt is cut further to make room for.
        on_bad_row: ``"error"`` raises on a malformed row, naming its index and field; ``"skip"`` drops it and
            counts it in :attr:`stats`.
        batch_size: Preference pairs per training micro-batch and device (a padded batch holds ``2 * batch_size``
            rows); the β-DPO paper's fixed pair count. Not used with ``max_tokens``.
        eval_batch_size: Pairs per validation batch and device (defaults to ``batch_size``). Not used with
            ``max_tokens``.
        num_workers: Worker processes of each data loader.
        num_proc: Processes for tokenization, at most the CPUs available (``None``: one per 10,000 rows, so a
            small split is tokenized in this process; see :mod:`betadpo_lightning.data.processes`).
        pad_to_multiple_of: Pad each batch's length (a packed batch: its row) up to a multiple of this, if set.
        packing: Collate pairs as prefix-shared ``[prompt, chosen, rejected]`` segments of one row
            (:func:`~betadpo_lightning.data.packing.pack_preference_pairs`; each prompt goes through the model
            once) instead of padded chosen and rejected rows.
        packed_row_tokens: With ``packing``, start a new row of the batch when the next pair would make the current
            row longer than this (``None``: ``max_length``, or one row when there is no ``max_length``). Attention
            over a row costs its length squared with a dense mask (SDPA, eager), so rows near ``max_length`` cost
            about what the padded rows did; with FlexAttention one long row is cheapest.
        max_tokens: Form micro-batches by a budget of trunk tokens per device instead of ``batch_size`` pairs:
            ``p + c + r`` per pair packed, ``2 · T`` per pair padded to the batch's longest row ``T``. Pairs of
            similar length are grouped, every pair is used once per epoch, every rank gets the same number of
            micro-batches of similar cost, and a resumed run continues at the exact micro-batch
            (:mod:`betadpo_lightning.data.token_batches`). Must hold the longest pair ``max_length`` allows,
            ``2 * max_length`` tokens (padded: ``max_length`` rounded up to ``pad_to_multiple_of``); without
            ``max_length`` a longer pair raises when the loaders are built, naming its row.
        cache_dir: Cache folder for ``datasets`` and the synthetic data (the ``datasets`` cache when ``None``).
        seed: Seed of the training shuffle and of the ``val_fraction`` split.
        synthetic: Options of the synthetic dataset (its defaults when ``None``); only for ``dataset="synthetic"``.
        allow_changed_data: Resume a fit on data (pair counts or token ids of a split) that differ from those the
            checkpoint was trained on, with a warning saying what changed; refused by default
            (:mod:`betadpo_lightning.data.fingerprint`).
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
        packing: bool = False,
        packed_row_tokens: int | None = None,
        max_tokens: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        synthetic: SyntheticConfig | None = None,
        allow_changed_data: bool = False,
    ) -> None:
        super().__init__()
        template = parse_chat_template(chat_template)  # a template file is read (and checked) here
        check_options(dataset, tokenizer, synthetic, val_fraction, format, template.mode, on_bad_row)
        check_positive(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_proc=num_proc,
            pad_to_multiple_of=pad_to_multiple_of,
            max_tokens=max_tokens,
            packed_row_tokens=packed_row_tokens,
        )
        if num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {num_workers}")
        if not isinstance(packing, bool):
            raise ValueError(f"packing must be true or false, got {packing!r}")
        check_token_budget(max_tokens, max_length, packing, pad_to_multiple_of)
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.data_files: DataFiles | None = data_files
        self.train_split = train_split
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.test_split = test_split
        self.tokenizer_name = tokenizer
        self.tokenizer_kwargs = template.tokenizer_kwargs(tokenizer_kwargs)  # with the template given, if any
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing
        self.packed_row_tokens = packed_row_tokens if packed_row_tokens is not None else max_length
        self.max_tokens = max_tokens
        self.cache_dir = cache_dir
        self.seed = seed
        self.synthetic = (synthetic or SyntheticConfig()) if dataset == SYNTHETIC else None
        # Recorded in checkpoints (`datamodule_hyper_parameters`): the export finds the run's tokenizer there.
        self.save_hyperparameters(ignore=["synthetic"])
        self.hparams["synthetic"] = None if self.synthetic is None else dataclasses.asdict(self.synthetic)
        if template.text is not None:  # the template itself, not a path that may be gone when the run is exported
            self.hparams.update(chat_template=template.text, tokenizer_kwargs=self.tokenizer_kwargs)
        self.spec = TokenizationSpec(
            names=ColumnNames(prompt_column, chosen_column, rejected_column),
            format=format,
            chat_template=_raw_synthetic(template.mode, self.synthetic),
            limits=TruncationLimits(max_length, max_prompt_length, min_response_length),
            on_bad_row=on_bad_row,
            chat_template_kwargs=check_template_kwargs(chat_template_kwargs),
        )
        self.tokenizer: PreTrainedTokenizerBase | None = None
        """The tokenizer, with a pad token; set by :meth:`setup`."""
        self.chat_template_origin = template.origin
        """Where a template given as ``chat_template`` came from (``"file 'chatml.jinja'"``), for the log."""
        self.renderings: dict[str, SplitRendering] = {}
        """How each split's rows are read and rendered (format, chat template or not); set by :meth:`setup`."""
        self.stats: dict[str, SplitStats] = {}
        """Kept/dropped/skipped/truncated row counts per split (``"train"``, ``"validation"``); set by :meth:`setup`."""
        self.splits: dict[str, datasets.Dataset] = {}
        """The kept pairs per split; set by :meth:`setup`."""
        self.fingerprint = DataFingerprint(allow_changed_data)
        """The splits' fingerprint, kept in checkpoints and checked when a fit resumes."""

    @override
    def prepare_data(self) -> None:
        """Write the synthetic data if needed, then load, tokenize and filter the splits into the ``datasets`` cache."""
        source = self._split_source()
        source.write_synthetic()
        for data in source.tokenized_splits(source.load_tokenizer(warn=False), warn=False).splits.values():
            kept_pairs(data)

    @override
    def setup(self, stage: str) -> None:
        """Load the tokenizer and the cached tokenized splits; compute and log :attr:`stats`.

        Args:
            stage: The trainer stage (``"fit"``, ``"validate"``, ...); all stages load the same splits.
        """
        if self.splits:
            return
        loaded = load_pairs(self._split_source(), self.chat_template_origin)
        self.stats, self.splits, self.tokenizer = loaded.stats, loaded.splits, loaded.tokenizer
        self.renderings = loaded.renderings

    @override
    def state_dict(self) -> dict[str, Any]:
        """The fingerprint of the pairs (per split: count and content hash), which Lightning keeps in checkpoints."""
        return self.fingerprint.state_dict(self.splits)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to resume a fit on other data than the checkpoint's (see ``allow_changed_data``)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn == "fit":  # evaluating a checkpoint on other data is fine
            self.fingerprint.check(state_dict, self.splits, trainer.ckpt_path if trainer is not None else None)

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of this rank, in an order fixed by ``seed`` and the epoch; resumable mid-epoch.

        Each rank gets its share of one permutation (a :class:`~torch.utils.data.DistributedSampler`, which Lightning
        keeps as it is); the loader's position is saved in checkpoints, so a resumed run continues with the next
        batch. The last, smaller batch is kept. With ``max_tokens``, micro-batches by the token budget instead
        (:class:`~betadpo_lightning.data.token_batches.TokenBudgetSampler`), resumable the same way.
        """
        data = self._split("train")
        pad = self._tokenizer_ready().pad_token_id
        return self._batch_plan().train_loader(data, pad, **self._replicas())  # type: ignore[arg-type]

    @override
    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches in dataset order, or an empty list when there is no validation split.

        Each rank gets its share; the samples that pad the ranks to equal counts are flagged (``is_padding``) and
        count in no metric, so the validation values do not depend on the number of ranks. With ``max_tokens``, the
        pairs are sorted by length and cut by the budget
        (:class:`~betadpo_lightning.data.token_batches.EvalTokenSampler`), still each pair once.
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
        pad = self._tokenizer_ready().pad_token_id
        data = self.splits[split]
        return self._batch_plan().eval_loader(data, pad, **self._replicas(), split=split)  # type: ignore[arg-type]

    def _replicas(self) -> dict[str, int]:
        """The data-parallel replicas of the Trainer's strategy (one process outside a Trainer).

        Under model parallelism not every rank is a replica: the strategy knows which are.
        """
        trainer = self.trainer
        kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) if trainer is not None else None
        return (
            {"num_replicas": kwargs["num_replicas"], "rank": kwargs["rank"]}
            if kwargs
            else {"num_replicas": 1, "rank": 0}
        )

    def _collate(self) -> Callable[[list[Any]], Any]:
        return self._batch_plan().collate_fn(self._tokenizer_ready().pad_token_id)

    def _batch_plan(self) -> BatchPlan:
        """The batching settings (from the attributes, so later changes take effect)."""
        return BatchPlan(
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
            packing=self.packing,
            packed_row_tokens=self.packed_row_tokens,
            max_tokens=self.max_tokens,
            pad_to_multiple_of=self.pad_to_multiple_of,
            num_workers=self.num_workers,
            seed=self.seed,
        )

    def _split_source(self) -> SplitSource:
        """The settings that decide the tokenized pairs (from the attributes, so later changes take effect)."""
        return SplitSource(
            dataset=self.dataset,
            dataset_config=self.dataset_config,
            data_files=self.data_files,
            train_split=self.train_split,
            val_split=self.val_split,
            val_fraction=self.val_fraction,
            test_split=self.test_split,
            tokenizer_name=self.tokenizer_name,
            tokenizer_kwargs=self.tokenizer_kwargs,
            spec=self.spec,
            cache_dir=self.cache_dir,
            seed=self.seed,
            num_proc=self.num_proc,
            synthetic=self.synthetic,
        )

    def _load_tokenizer(self, warn: bool) -> PreTrainedTokenizerBase:
        return self._split_source().load_tokenizer(warn)


def _raw_synthetic(mode: ChatTemplateMode, synthetic: SyntheticConfig | None) -> ChatTemplateMode:
    """``False`` for ``"auto"`` on the synthetic standard rows: raw text by design (their gold reward reads it)."""
    standard = synthetic is not None and synthetic.format == "standard"
    return False if standard and mode == "auto" else mode
