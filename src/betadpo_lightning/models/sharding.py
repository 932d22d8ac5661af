"""Sharding the policy and the reference with FSDP2 (``fully_shard``) under Lightning's ``ModelParallelStrategy``."""

from __future__ import annotations

import atexit
import gc
from typing import Any

import torch
from torch import nn

__all__ = [
    "close_process_group_at_exit",
    "data_parallel_mesh",
    "decoder_layer_classes",
    "fully_shard_causal_lm",
    "local_shard",
    "sharded_frozen_copy",
    "wrap_for_fsdp1",
]


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


def sharded_frozen_copy(model: nn.Module, mesh: Any) -> nn.Module:
    """A frozen copy of an FSDP2-sharded ``transformers`` model that is never materialised in full.

    The copy is built on the meta device from the model's config, sharded on the same mesh, given empty local
    storage, and filled from the model's local shards and buffers; each rank holds only its shard of it.

    Args:
        model: a ``transformers`` causal LM already sharded by :func:`fully_shard_causal_lm`.
        mesh: the data-parallel device mesh it is sharded on.

    Returns:
        The sharded copy, in eval mode, without gradients.
    """
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(model.config, dtype=dtype)
    fully_shard_causal_lm(copy, mesh)
    device = next(model.parameters()).device
    copy.to_empty(device=device)
    sources = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, target in [*copy.named_parameters(), *copy.named_buffers()]:
            local_shard(target).copy_(local_shard(sources[name]))
    return copy.eval().requires_grad_(False)


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) tensor, or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def data_parallel_mesh(strategy: Any, device_mesh: Any) -> Any:
    """The data-parallel mesh under Lightning's ``ModelParallelStrategy`` (``None`` under other strategies).

    Raises:
        MisconfigurationException: for tensor parallelism (its size > 1), which the library does not support.
    """
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    if not isinstance(strategy, ModelParallelStrategy):
        return None
    if device_mesh["tensor_parallel"].size() > 1:
        raise MisconfigurationException(
            f"ModelParallelStrategy(tensor_parallel_size={device_mesh['tensor_parallel'].size()}): tensor "
            "parallelism is not supported; set tensor_parallel_size=1 and data_parallel_size to the number of devices."
        )
    return device_mesh["data_parallel"]


def wrap_for_fsdp1(strategy: Any, reference: nn.Module | None) -> nn.Module | None:
    """Under ``FSDPStrategy`` (FSDP1) wrap the reference in its own unit with the strategy's settings.

    ``configure_model`` runs inside the strategy's ``enable_wrap`` context; the policy is wrapped by the strategy.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy) and reference is not None:
        from torch.distributed.fsdp.wrap import wrap

        return wrap(reference)
    return reference


_CLOSE_REGISTERED = False


def close_process_group_at_exit() -> None:
    """Destroy the default process group when the process exits, whatever its backend (idempotent).

    Lightning does this for NCCL only. A Gloo process group still alive when the interpreter shuts down can be torn
    down while its threads run, which aborts the process ("terminate called without an active exception") after a
    successful run: a spawned rank then fails its launcher. The groups that objects still reference (FSDP2's
    module state does) are released by a garbage collection right after, for the same reason.
    """
    global _CLOSE_REGISTERED
    if _CLOSE_REGISTERED or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    _CLOSE_REGISTERED = True

    def close() -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        # FSDP2's module state still holds the groups; collect them now, while the interpreter can run their
        # destructors, rather than during finalization (where Gloo's worker threads abort the process).
        gc.collect()

    atexit.register(close)
