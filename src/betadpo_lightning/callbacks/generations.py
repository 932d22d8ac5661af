"""SampleGenerations: what the current policy answers to a few fixed held-out prompts, after every validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn
from typing_extensions import override

from betadpo_lightning.atomic import atomic_write_bytes
from betadpo_lightning.models.generation import eos_token_ids, generate_tokens, left_pad, until_eos

__all__ = ["SampleGenerations"]

TABLE_KEY = "val/samples"
"""The key of the samples' table (loggers with tables) and the prefix of their logged mean gold reward."""


class SampleGenerations(Callback):
    """Generate responses to the first ``num_prompts`` prompts of the validation split after every validation.

    The prompts are read once, at the first validation, and stay the same for the whole run. At the end of each
    validation (not in the sanity check) every rank generates the responses to all of them with the current policy
    (in eval mode, without gradient, the prompts left-padded with the tokenizer's pad id), the same number of
    forward passes on every rank, as sharded models (FSDP2) need; rank 0 writes them. The responses are decoded from
    the generated tokens only, up to the first end-of-sequence token, without special tokens.

    Written: one JSON record per prompt and validation, ``{"step", "prompt", "response"}`` (with ``"gold_reward"``
    when the data has one), appended to ``samples.jsonl`` in the first logger's directory (``trainer.log_dir``'s
    choice; ``trainer.default_root_dir`` without a logger); a ``val/samples`` table for a ``WandbLogger``
    (``log_table``) and a markdown table for a ``TensorBoardLogger`` (``add_text``). When the datamodule offers a
    gold reward (``gold_reward_fn``, as :class:`~betadpo_lightning.data.PreferenceDataModule` does on the built-in
    synthetic dataset) each response's gold reward is recorded and their mean logged as ``val/samples/gold_reward``.

    Training is not disturbed: the draws come from a generator of their own (seeded with ``seed`` at every
    validation, so a run's samples are reproducible), the global random streams are restored afterwards, and the
    policy's train/eval modes are restored exactly.

    Args:
        num_prompts: how many prompts, from the start of the validation split.
        max_new_tokens: tokens generated per response.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: nucleus sampling threshold in ``(0, 1]`` (1: none); ignored when greedy.
        seed: seed of the sampling draws.
        batch_size: prompts generated together.
        filename: name of the JSON-lines file.
    """

    def __init__(
        self,
        num_prompts: int = 4,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
        filename: str = "samples.jsonl",
    ) -> None:
        super().__init__()
        if num_prompts < 1 or max_new_tokens < 1 or batch_size < 1:
            raise ValueError(
                f"Expected num_prompts, max_new_tokens and batch_size ≥ 1, got {num_prompts}, {max_new_tokens}, "
                f"{batch_size}."
            )
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"Expected temperature ≥ 0 and top_p in (0, 1], got {temperature} and {top_p}.")
        self.num_prompts, self.max_new_tokens, self.batch_size = num_prompts, max_new_tokens, batch_size
        self.temperature, self.top_p, self.seed, self.filename = float(temperature), float(top_p), seed, filename
        self._prompts: list[list[int]] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "policy"):  # built later, in `configure_model`
            raise MisconfigurationException(
                "SampleGenerations generates with the module's `policy` (a causal LM), which "
                f"{type(pl_module).__name__} does not have."
            )

    # ----------------------------------------------------------------- prompts
    def prompts(self, trainer: pl.Trainer) -> list[list[int]]:
        """The prompts' token ids (read at the first call, then fixed); none without a validation split."""
        if self._prompts is None:
            splits = getattr(trainer.datamodule, "splits", None) or {}
            validation = splits.get("validation")
            if validation is None or len(validation) == 0 or _tokenizer(trainer) is None:
                rank_zero_warn(
                    "SampleGenerations needs a datamodule with a tokenizer and a non-empty validation split (such "
                    "as PreferenceDataModule); it generates nothing in this run."
                )
                self._prompts = []
            else:
                count = min(self.num_prompts, len(validation))
                self._prompts = [[int(t) for t in ids] for ids in validation[:count]["prompt_input_ids"]]
        return self._prompts

    # -------------------------------------------------------------- the hook
    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prompts = self.prompts(trainer)
        if not prompts:
            return
        tokenizer, policy = _tokenizer(trainer), pl_module.policy
        if not isinstance(policy, nn.Module):
            raise MisconfigurationException(f"SampleGenerations: the module's `policy` is {policy!r}, not a model.")
        responses = self.generate(trainer, policy, prompts, pl_module.device)
        step = trainer.global_step
        records: list[dict[str, Any]] = [
            {"step": step, "prompt": tokenizer.decode(prompt, skip_special_tokens=True), "response": response}
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        gold = _gold_reward(trainer)
        if gold is not None:
            for record in records:
                record["gold_reward"] = float(gold(record["response"]))
            mean = sum(record["gold_reward"] for record in records) / len(records)
            # Every rank holds the same responses; the mean over ranks keeps Lightning's epoch logging consistent.
            pl_module.log(f"{TABLE_KEY}/gold_reward", mean, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        if trainer.is_global_zero:
            self._write(trainer, records)

    def generate(
        self, trainer: pl.Trainer, policy: nn.Module, prompts: list[list[int]], device: torch.device
    ) -> list[str]:
        """The decoded responses of ``policy`` to ``prompts`` (token ids), in order; call on every rank.

        The prompts are generated ``batch_size`` at a time, with one generator seeded with ``seed`` for all of them.
        """
        tokenizer = _tokenizer(trainer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = eos_token_ids(policy, tokenizer.eos_token_id)
        # A sharded model (FSDP) needs the same forward passes on every rank: early stops only where none is.
        stop_early = trainer.world_size == 1 or isinstance(trainer.strategy, DDPStrategy)
        modes = {module: module.training for module in policy.modules()}
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        generator = torch.Generator(device=device).manual_seed(self.seed)
        precision = trainer.precision_plugin.forward_context()
        responses: list[str] = []
        try:
            policy.eval()
            with torch.random.fork_rng(devices=rng_devices), torch.no_grad(), precision:
                for start in range(0, len(prompts), self.batch_size):
                    input_ids, mask = left_pad(prompts[start : start + self.batch_size], pad, device)
                    tokens = generate_tokens(
                        policy, input_ids, mask, self.max_new_tokens, self.temperature, self.top_p, generator, eos,
                        stop_early,
                    )  # fmt: skip
                    for row in tokens.tolist():
                        responses.append(tokenizer.decode(until_eos(row, eos), skip_special_tokens=True))
        finally:
            for module, training in modes.items():
                module.training = training
        return responses

    # ----------------------------------------------------------------- output
    def _write(self, trainer: pl.Trainer, records: list[dict[str, Any]]) -> None:
        path = Path(_log_dir(trainer)) / self.filename
        earlier = path.read_bytes() if path.is_file() else b""  # appended by writing the whole file anew
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        atomic_write_bytes(path, earlier + lines.encode("utf-8"))
        columns = list(records[0])
        rows = [[record[column] for column in columns] for record in records]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=TABLE_KEY, columns=columns, data=rows, step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(TABLE_KEY, markdown_table(columns, rows), global_step=trainer.global_step)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    r"""A markdown table (``|`` escaped, line breaks as ``<br>``), as TensorBoard's text plugin renders it.

    Example:
        >>> print(markdown_table(["prompt", "response"], [["a|b", "c"]]))
        | prompt | response |
        |---|---|
        | a\|b | c |
    """

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _tokenizer(trainer: pl.Trainer) -> Any:
    return getattr(trainer.datamodule, "tokenizer", None)


def _gold_reward(trainer: pl.Trainer) -> Callable[[str], float] | None:
    """The datamodule's gold reward of a response text, when it offers one (its ``gold_reward_fn``)."""
    return getattr(trainer.datamodule, "gold_reward_fn", None)


def _log_dir(trainer: pl.Trainer) -> str:
    """``trainer.log_dir`` without its broadcast (only rank 0 writes)."""
    if not trainer.loggers:
        return str(trainer.default_root_dir)
    logger: Logger = trainer.loggers[0]
    directory = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
    return str(directory if directory is not None else trainer.default_root_dir)
