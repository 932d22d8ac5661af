"""Sharding the policy and the reference with FSDP2 (``fully_shard``) under Lightning's ``ModelParallelStrategy``."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["decoder_layer_classes", "fully_shard_causal_lm", "shard_for_strategy"]


def decoder_layer_classes(model: nn.Module) -> set[str]:
    """Class names of the transformer blocks: ``transformers``' ``_no_split_modules`` (e.g. ``LlamaDecoderLayer``).

    Raises:
        ValueError: if the model declares none, so the unit of sharding is unknown.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(
            f"{type(model).__name__} does not declare `_no_split_modules`, so its decoder layers are unknown; "
            "FSDP2 sharding needs them."
        )
    return names


def fully_shard_causal_lm(model: nn.Module, mesh: Any, reshard_after_forward: bool = True) -> nn.Module:
    """Apply ``fully_shard`` to every decoder layer, then to the whole model (FSDP2's recommended granularity).

    Args:
        model: a ``transformers`` causal LM.
        mesh: the data-parallel device mesh (``LightningModule.device_mesh["data_parallel"]``).
        reshard_after_forward: free the gathered weights after each layer's forward (saves memory; the frozen
            reference never needs them again in the backward).

    Returns:
        The same model, sharded in place.
    """
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layer_classes(model)
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def shard_for_strategy(strategy: Any, mesh: Any, policy: nn.Module | None, reference: nn.Module | None) -> Any:
    """Shard the policy and the reference for the Trainer's strategy; returns the (possibly wrapped) reference.

    FSDP2 (Lightning's ``ModelParallelStrategy``): :func:`fully_shard_causal_lm` for both models on ``mesh``. FSDP1
    (``FSDPStrategy``): the reference is wrapped here (``configure_model`` runs inside the strategy's
    ``enable_wrap`` context, so the strategy's settings apply); the policy is wrapped by the strategy. Other
    strategies: nothing to do.

    Args:
        strategy: ``trainer.strategy``, or ``None`` outside a Trainer.
        mesh: the data-parallel device mesh under ``ModelParallelStrategy``, else ``None``.
        policy: the policy.
        reference: the separate reference model, or ``None``.
    """
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, ModelParallelStrategy):
        for model in (policy, reference):
            if model is not None:
                fully_shard_causal_lm(model, mesh)
    elif isinstance(strategy, FSDPStrategy) and reference is not None:
        from torch.distributed.fsdp.wrap import wrap

        reference = wrap(reference)
    return reference
