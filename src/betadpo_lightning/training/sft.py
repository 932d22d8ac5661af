"""Supervised warm start: a policy trained by maximum likelihood on the chosen responses of preference pairs.

DPO and its variants start from a supervised fine-tuned (SFT) model, which is also their reference. ``SFTModule``
trains that model from the same :class:`~betadpo_lightning.data.PreferenceDataModule` batches as the preference
methods, using only their chosen rows, and writes it as a ``transformers`` model directory that
``PreferenceModule(model_name_or_path=DIR)`` (and ``cli.py`` with ``--model.model_name_or_path DIR``) starts from.

Usage::

    python -m betadpo_lightning.training.sft fit --config configs/synthetic_sft.yaml

The command line is :mod:`betadpo_lightning.commands.sft_cli` (sections ``trainer``, ``model``, ``data``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from betadpo_lightning.atomic import atomic_directory
from betadpo_lightning.data.packed_views import chosen_segments
from betadpo_lightning.data.packing import is_packed
from betadpo_lightning.distributed import barrier
from betadpo_lightning.models.building import DType, LoraOptions
from betadpo_lightning.models.model_directory import foreign_entries
from betadpo_lightning.models.reference import NoReference
from betadpo_lightning.models.scoring import response_targets, score_rows
from betadpo_lightning.models.sharding import close_process_group_at_exit
from betadpo_lightning.models.support import ModelSupport
from betadpo_lightning.training.metrics import exact_mean
from betadpo_lightning.training.optimization import configure_policy_optimization
from betadpo_lightning.training.policy_and_reference import PolicyAndReference

__all__ = ["SFTModule", "chosen_rows", "response_token_count"]

_SHARDED_STRATEGIES = ("FSDPStrategy", "ModelParallelStrategy", "DeepSpeedStrategy")


def chosen_rows(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The chosen half of a preference batch: rows ``[:B]`` if padded, the ``[prompt, chosen]`` segments if packed.

    Args:
        batch: a preference batch (see :mod:`betadpo_lightning.data.collate` and :mod:`betadpo_lightning.data.packing`);
            ``pair_index`` ``(B,)`` gives ``B``.

    Returns:
        Padded: ``input_ids``, ``attention_mask`` and ``labels``, ``(B, T)`` each. Packed: the packed batch of
        :func:`~betadpo_lightning.data.packed_views.chosen_segments` (``target_row`` in ``[0, B)``).
    """
    if is_packed(batch):
        return chosen_segments(batch)
    pairs = int(batch["pair_index"].shape[0])
    return {key: batch[key][:pairs] for key in ("input_ids", "attention_mask", "labels")}


def response_token_count(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Number of predicted response tokens per row (labels are unshifted: position 0 is never predicted).

    Args:
        labels: ``(N, T)``, ``ignore_index`` on prompt and padding.
        ignore_index: the label of positions without loss.

    Returns:
        ``(N,)`` long.
    """
    return (labels[:, 1:] != ignore_index).sum(-1)


class SFTModule(PolicyAndReference):
    """A causal LM trained with the negative log-likelihood of the chosen responses (prompt tokens masked).

    Each ``(2B, T)`` preference batch contributes its chosen rows ``[:B]``; the loss is the NLL summed over their
    response tokens divided by the number of those tokens (the mean per response token of the batch, on each rank).
    ``train/loss`` is logged every logging step, ``val/loss`` is the same mean over every response token of the
    validation chosen responses (the pairs a distributed sampler repeats are left out). The policy is built by the
    same code as :class:`~betadpo_lightning.training.module.PreferenceModule`'s, with the same options; there is no
    reference.

    At the end of ``fit`` (rank 0), when ``output_dir`` is set, the policy is written there with ``save_pretrained``
    beside the datamodule's tokenizer, so ``PreferenceModule(model_name_or_path=output_dir)`` and
    ``AutoModelForCausalLM.from_pretrained(output_dir)`` load it (a LoRA policy is written with its adapters merged).
    The config keeps the model's own dropout values whatever ``dropout`` was in training. :meth:`save_pretrained`
    writes the same directory on demand (e.g. after loading a checkpoint).

    Args:
        model_name_or_path: hub name or local directory of the initial policy.
        model_config: instead of a checkpoint, a ``transformers`` config dict with ``model_type`` for a randomly
            initialised model; ``vocab_size`` and special token ids default to the datamodule's tokenizer.
        dtype: dtype the policy is loaded in (``None``: float32).
        attn_implementation: ``transformers`` attention kernel.
        trust_remote_code: allow custom model code from the hub.
        gradient_checkpointing: recompute the policy's activations in the backward pass.
        dropout: keep the model's dropout in training; by default every dropout is disabled.
        lora: ``peft.LoraConfig`` arguments to train LoRA adapters instead of the full policy (``None``: full).
        head: ``auto`` projects only the positions that predict a response token (see
            :mod:`~betadpo_lightning.models.scoring`) for the models it supports; ``full`` computes the full logits.
        optimizer: optimizer factory over the trainable parameters (``None``: AdamW, lr 1e-6, no decay).
        scheduler: LR scheduler factory, stepped every optimizer step (``None``: linear warmup over the first 10% of
            the steps, then constant).
        output_dir: where to write the trained policy and tokenizer at the end of ``fit`` (``None``: nowhere). It is
            replaced if it exists. Needs the full policy in every process (one device or DDP, not a sharded
            strategy).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        dtype: DType | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        dropout: bool = False,
        lora: LoraOptions | None = None,
        head: Literal["auto", "full"] = "auto",
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if (model_name_or_path is None) == (model_config is None):
            raise ValueError("Give exactly one of `model_name_or_path` and `model_config`.")
        if head not in ("auto", "full"):
            raise ValueError(f"Expected `head` in ('auto', 'full'), got {head!r}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.hparams["quantization"] = None  # read by the shared policy builder; SFT trains unquantised weights
        self.reference_provider = NoReference()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_nll = exact_mean()  # NLL summed over tokens, counted per token
        self._support = ModelSupport("SFTModule", head=head == "auto")
        self._init_models()

    @override
    def setup(self, stage: str) -> None:
        close_process_group_at_exit()
        strategy = type(self.trainer.strategy).__name__
        if self.hparams.output_dir is not None and strategy in _SHARDED_STRATEGIES:
            raise MisconfigurationException(
                f"SFTModule(output_dir=...) writes the whole policy from rank 0, but {strategy} shards it; train "
                "with one device or DDP, or leave `output_dir` unset and export a checkpoint."
            )

    # -------------------------------------------------------------------- step
    def response_nll(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Summed NLL of the chosen responses of a preference batch and their token count.

        Args:
            batch: a padded ``(2B, T)`` or packed preference batch; evaluation batches may flag repeated pairs in
                ``is_padding``.

        Returns:
            ``(nll_sum, tokens)``: 0-d float (with gradients when enabled) and 0-d long, over rows ``[:B]``
            whose pair is not padding.
        """
        assert self.policy is not None, "`configure_model()` must run first"
        pairs = int(batch["pair_index"].shape[0])
        # a packed batch stays packed where the policy takes it (then only its chosen segments run)
        rows = chosen_rows(self._support.layout(batch, self.policy))
        head = self._support.head(self.policy)
        # Every row runs (a batch of padding pairs alone would leave the model nothing to run, and a sharded model
        # needs the same forward on every rank); the padding pairs are then left out of the sums.
        logps = score_rows(self.policy, rows, head=head, num_rows=pairs).logps  # (B,) summed over response tokens
        tokens = response_targets(rows, pairs).counts()  # (B,)
        padding = batch.get("is_padding")
        if padding is not None:
            logps = torch.where(padding, torch.zeros_like(logps), logps)
            tokens = torch.where(padding, torch.zeros_like(tokens), tokens)
        return -logps.sum(), tokens.sum()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        nll, tokens = self.response_nll(batch)
        loss = nll / tokens.clamp(min=1)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=int(tokens))
        return loss

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        nll, tokens = self.response_nll(batch)
        self.val_nll.update((nll.detach() / tokens.clamp(min=1)).reshape(1), weight=tokens.reshape(1).double())
        self.log("val/loss", self.val_nll, on_step=False, on_epoch=True, prog_bar=True)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        return configure_policy_optimization(self, self.optimizer_factory, self.scheduler_factory)

    # ------------------------------------------------------------------ output
    @override
    def on_fit_end(self) -> None:
        output_dir = self.hparams.output_dir
        if output_dir is not None and self.trainer.is_global_zero:
            tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
            self.save_pretrained(output_dir, tokenizer)
        if output_dir is not None:
            barrier(self.trainer.strategy, "sft_output_dir")

    def save_pretrained(self, output_dir: str | Path, tokenizer: Any = None) -> Path:
        """Write the policy (LoRA adapters merged) and the tokenizer as a ``transformers`` model directory.

        The directory is written whole, beside the destination, and then replaces it (an earlier model directory
        survives any failure).

        Args:
            output_dir: the directory; created, or replaced when it holds an earlier model directory.
            tokenizer: the tokenizer to write beside the model (``None``: the model alone, with a warning).

        Returns:
            The directory.

        Raises:
            ValueError: when ``output_dir`` holds files that a model directory does not, naming them.
        """
        assert self.policy is not None, "`configure_model()` must run first"
        path = Path(output_dir)
        others = foreign_entries(path)
        if others:
            raise ValueError(
                f"SFTModule: output_dir {path} holds files that a model directory does not: {', '.join(others[:5])}; "
                "move them away or choose another output_dir"
            )
        policy: nn.Module = copy.deepcopy(self.policy)
        if hasattr(policy, "merge_and_unload"):  # a peft model: one plain model with the adapters folded in
            policy = policy.merge_and_unload()
        self._restore_dropout(policy)
        with atomic_directory(path) as staging:
            policy.save_pretrained(str(staging))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(staging))
        if tokenizer is None:
            rank_zero_warn(f"SFTModule: no tokenizer to write beside the model in {path}; save one there yourself.")
        rank_zero_info(f"SFTModule: wrote the policy to {path}")
        return path

    def _restore_dropout(self, policy: nn.Module) -> None:
        """Put the dropout values of the model's own config back (training may have disabled them)."""
        from transformers import AutoConfig

        hp = self.hparams
        if hp.model_config is not None:
            original = AutoConfig.for_model(**hp.model_config)
        else:
            original = AutoConfig.from_pretrained(hp.model_name_or_path, trust_remote_code=hp.trust_remote_code)
        config = policy.config
        for name, value in vars(original).items():
            if "dropout" in name and isinstance(value, float) and hasattr(config, name):
                setattr(config, name, value)


if __name__ == "__main__":
    # `python -m betadpo_lightning.training.sft` runs the command line, which lives a layer above (commands/, which
    # imports this module): run it by name rather than import it, so the training layer never imports commands/.
    import runpy

    runpy.run_module("betadpo_lightning.commands.sft_cli", run_name="__main__")
