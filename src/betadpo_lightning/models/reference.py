"""Reference providers: where the reference log-probabilities of a preference step come from.

Chosen in YAML under ``model.reference`` (``class_path`` + ``init_args``):

* :class:`FrozenReference` (the default): a frozen copy of the initial policy, or another checkpoint.
* :class:`AdapterReference`: the policy itself with its LoRA adapters disabled (peft); no second copy.
* :class:`PrecomputedReference`: log-probabilities computed before training, carried in each batch.
* :class:`NoReference`: none at all, for reference-free losses (the reference log-probabilities are 0).

Whatever the provider, the reference is never trained (no gradient, not in the optimizer), never written into
checkpoints, and runs in eval mode under ``torch.no_grad()``. A separate reference model is a submodule of the
:class:`~betadpo_lightning.training.module.PreferenceModule`, so device moves, dtype changes, precision plugins and
sharding reach it like the policy.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from betadpo_lightning.core.types import REFERENCE_BATCH_KEYS
from betadpo_lightning.data.packing import padded_rows
from betadpo_lightning.models.building import eval_mode, freeze
from betadpo_lightning.models.hub import hub_errors
from betadpo_lightning.models.quantization import QUANTIZATIONS, Quantization

__all__ = [
    "REFERENCE_BATCH_KEYS",
    "AdapterReference",
    "FrozenReference",
    "NoReference",
    "PrecomputedReference",
    "ReferenceProvider",
    "eval_mode",
]

REFERENCE_ROLE = "reference model"
"""How a reference checkpoint that cannot be found is named (:class:`~.hub.HubUnavailableError`)."""


class ReferenceProvider:
    """How a module obtains the reference's per-row values; subclasses say which way.

    Attributes:
        has_model: whether a reference forward pass runs (so per-position reference logits exist, as ε-DPO needs).
        provides: the extra groups of :data:`~betadpo_lightning.core.types.EXTRAS` this provider can supply.
    """

    has_model: bool = False
    provides: frozenset[str] = frozenset()

    def build(
        self, policy: nn.Module, load: Callable[..., nn.Module], copy: Callable[[nn.Module], nn.Module]
    ) -> nn.Module | None:
        """Build a separate reference model, or return ``None`` when there is none.

        Args:
            policy: the freshly built policy (before any training step; already sharded under FSDP2).
            load: loads a causal LM by hub name or directory with the module's dtype and attention settings
                (keyword ``quantization``: ``"4bit"``/``"8bit"``).
            copy: a frozen copy of a model, as the strategy needs it (under FSDP2 a copy built sharded).

        Returns:
            A frozen model for the module to register, or ``None``.
        """
        return None

    @contextlib.contextmanager
    def model(self, policy: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
        """The model to run as the reference (call under ``torch.no_grad()``).

        Raises:
            NotImplementedError: for providers without a model (use :meth:`rows`).
        """
        raise NotImplementedError(f"{type(self).__name__} runs no reference model.")
        yield policy  # pragma: no cover

    def prepare(self, module: Any, trainer: Any, entropy: bool, load: Callable[..., nn.Module]) -> None:
        """Work before training that needs the Trainer and the data (nothing by default).

        Args:
            module: the :class:`~betadpo_lightning.training.module.PreferenceModule`, its policy built and untrained.
            trainer: the Trainer.
            entropy: whether the reference entropy will be needed.
            load: loads a causal LM by hub name or directory with the module's settings.
        """

    def rows(self, batch: dict[str, Tensor], entropy: bool) -> tuple[Tensor, Tensor | None]:
        """Per-row summed log-probs ``(2B,)`` and, if asked, entropies ``(2B,)``, without a model.

        Raises:
            NotImplementedError: for providers with a model (use :meth:`model`).
        """
        raise NotImplementedError(f"{type(self).__name__} runs a reference model.")

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: how to build this provider again (saved in hparams)."""
        return {"class_path": f"{type(self).__module__}.{type(self).__name__}", "init_args": dict(vars(self))}

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> ReferenceProvider:
        """Build a provider from :meth:`config`'s output (as saved in a checkpoint's hparams).

        Raises:
            ValueError: unless ``class_path`` names an importable subclass of :class:`ReferenceProvider`.
        """
        class_path = str(config.get("class_path", ""))
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError):
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, ReferenceProvider)):
            raise ValueError(f"Expected the class_path of a ReferenceProvider, got {class_path!r}.")
        return cls(**dict(config.get("init_args") or {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]


class FrozenReference(ReferenceProvider):
    """A frozen copy of the initial policy (default), or another checkpoint loaded by name or path.

    Args:
        name_or_path: hub name or local directory of the reference; ``None`` copies the policy as built, before
            any training step (for a randomly initialised ``model_config`` policy that copy depends on the seed).
        quantization: hold the reference in ``"4bit"`` or ``"8bit"`` (bitsandbytes; the output layer stays
            unquantised): it is then loaded from ``name_or_path``, or from the policy's own checkpoint.
    """

    has_model = True
    provides = frozenset({"reference_entropy"})

    def __init__(self, name_or_path: str | None = None, quantization: Quantization | None = None) -> None:
        if quantization is not None and quantization not in QUANTIZATIONS:
            raise ValueError(f"Expected `quantization` in {QUANTIZATIONS} or None, got {quantization!r}.")
        self.name_or_path, self.quantization = name_or_path, quantization

    def build(
        self, policy: nn.Module, load: Callable[..., nn.Module], copy: Callable[[nn.Module], nn.Module]
    ) -> nn.Module:
        """A frozen copy of ``policy``, or the frozen model at ``name_or_path`` (quantised if asked).

        Raises:
            ValueError: for a quantised copy of a policy that was not loaded from a checkpoint.
        """
        if self.quantization is not None:
            source = self.name_or_path or getattr(getattr(policy, "config", None), "_name_or_path", "")
            if not source:
                raise ValueError(
                    "A quantised FrozenReference is loaded from a checkpoint: set its `name_or_path`, or load the "
                    "policy from one (`model_name_or_path`)."
                )
            with hub_errors(source, REFERENCE_ROLE):
                return freeze(load(source, quantization=self.quantization))
        if self.name_or_path is None:
            return copy(policy)
        with hub_errors(self.name_or_path, REFERENCE_ROLE):
            return freeze(load(self.name_or_path))

    @contextlib.contextmanager
    def model(self, policy: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
        """The separate frozen model."""
        if reference is None:
            raise RuntimeError("FrozenReference: the reference model has not been built (configure_model).")
        yield reference


class AdapterReference(ReferenceProvider):
    """The policy with its LoRA adapters disabled: the base model is the reference, with no second copy in memory.

    Needs a peft policy (``PreferenceModule(lora=...)``); the reference pass runs in eval mode.
    """

    has_model = True
    provides = frozenset({"reference_entropy"})

    def build(self, policy: nn.Module, load: Callable[..., nn.Module], copy: Callable[[nn.Module], nn.Module]) -> None:
        """Check that the policy has adapters to disable; there is no separate model.

        Raises:
            ValueError: if the policy is not a peft model.
        """
        if not hasattr(policy, "disable_adapter"):
            raise ValueError(
                f"AdapterReference needs a policy with LoRA adapters (set `model.lora`), but the policy is a "
                f"{type(policy).__name__}; use FrozenReference for a full fine-tune."
            )
        return

    @contextlib.contextmanager
    def model(self, policy: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
        """The policy, in eval mode, with its adapters disabled."""
        with policy.disable_adapter(), eval_mode(policy):  # type: ignore[operator]
            yield policy


class PrecomputedReference(ReferenceProvider):
    """Reference values computed once before training and carried in each batch: no reference model in memory.

    With :class:`~betadpo_lightning.data.PreferenceDataModule`, the values are computed at the start of the first
    run (each rank its share) into ``cache_dir`` and read back by every later run; a cache computed for other
    reference weights, tokenizer, data, truncation or precision is refused with a message saying which (see
    :mod:`~betadpo_lightning.models.reference_cache`). Each batch then holds ``reference_logps`` (``(2B,)`` summed
    log-probs, chosen rows first) and, for methods that need the reference's dispersion, ``reference_entropy``.
    With another datamodule, its batches must carry these fields themselves.

    Args:
        name_or_path: the reference checkpoint; ``None`` uses the initial policy (before any training step).
        cache_dir: the cache folder (``None``: ``<trainer.default_root_dir>/reference_cache``).
        batch_size: pairs per batch of the precomputing pass.
    """

    provides = frozenset({"reference_entropy"})

    def __init__(self, name_or_path: str | None = None, cache_dir: str | None = None, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"Expected `batch_size` >= 1, got {batch_size}.")
        self.name_or_path, self.cache_dir, self.batch_size = name_or_path, cache_dir, int(batch_size)

    def prepare(self, module: Any, trainer: Any, entropy: bool, load: Callable[..., nn.Module]) -> None:
        """Compute or read the cache and attach it to the datamodule (see :mod:`~.reference_cache`)."""
        from betadpo_lightning.models.reference_cache import prepare_reference_cache

        with hub_errors(self.name_or_path, REFERENCE_ROLE):
            prepare_reference_cache(module, trainer, self.cache_dir, self.name_or_path, self.batch_size, entropy, load)

    def rows(self, batch: dict[str, Tensor], entropy: bool) -> tuple[Tensor, Tensor | None]:
        """The batch's ``reference_logps`` and, if asked, ``reference_entropy``.

        Raises:
            KeyError: naming the missing field.
            ValueError: for a wrong shape.
        """
        rows = padded_rows(batch)  # 2B, whether the batch is padded or packed
        values = []
        for key, wanted in zip(REFERENCE_BATCH_KEYS, (True, entropy), strict=True):
            if not wanted:
                values.append(None)
                continue
            if key not in batch:
                raise KeyError(
                    f"PrecomputedReference: the batch has no `{key}`; the data must carry precomputed reference "
                    f"values (fields {list(REFERENCE_BATCH_KEYS)}, shape (2B,))."
                )
            value = batch[key]
            if value.shape != (rows,):
                raise ValueError(
                    f"PrecomputedReference: expected `{key}` of shape ({rows},), got {tuple(value.shape)}."
                )
            values.append(value.float())
        return values[0], values[1]


class NoReference(ReferenceProvider):
    """No reference: every reference log-probability is 0, for reference-free losses."""

    def rows(self, batch: dict[str, Tensor], entropy: bool) -> tuple[Tensor, None]:
        """Zeros, ``(2B,)``."""
        if entropy:
            raise ValueError("NoReference has no reference entropy; choose a provider with a reference model.")
        return torch.zeros(padded_rows(batch), device=batch["input_ids"].device), None
