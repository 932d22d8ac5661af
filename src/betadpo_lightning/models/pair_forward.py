"""One forward of the policy and the reference over a preference batch, reduced to the pairs' values."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from betadpo_lightning.core.types import PairData
from betadpo_lightning.models.reference import ReferenceProvider
from betadpo_lightning.models.scoring import perturbed_rows, response_targets, score_rows
from betadpo_lightning.models.support import ModelSupport

__all__ = ["PairForward", "ScoringModels"]


@dataclass(frozen=True)
class ScoringModels:
    """The policy, the separate reference model (if any) and the provider that says how to use it."""

    policy: nn.Module
    reference: nn.Module | None
    provider: ReferenceProvider


class PairForward:
    """Scores the ``2B`` rows with the policy (with gradients) and the reference (without) and pairs them up.

    The batch is padded or packed (:mod:`betadpo_lightning.data.packing`). Chooses, per model, the response-only head
    or the full logits (:mod:`~betadpo_lightning.models.scoring`), and runs a packed batch packed when every model of
    the step takes it (:mod:`~betadpo_lightning.models.packed_attention`), else as the padded batch of the same pairs;
    the reason of a fallback is logged once.

    Args:
        head: ``"auto"`` (the head where supported) or ``"full"`` (always full logits).
        packing: ``"auto"`` (packed batches run packed where supported) or ``"off"`` (always unpacked).
    """

    def __init__(self, head: str = "auto", packing: str = "auto") -> None:
        if packing not in ("auto", "off"):
            raise ValueError(f"Expected `packing` in ('auto', 'off'), got {packing!r}.")
        self.head = head
        self.support = ModelSupport("PreferenceModule", head=head != "full", packing=packing == "auto")

    def use_head(self, *models: nn.Module) -> bool:
        """Whether the response-only head serves all of ``models``."""
        return self.support.head(*models)

    def __call__(
        self,
        models: ScoringModels,
        batch: dict[str, Tensor],
        average: bool,
        extras: frozenset[str] = frozenset(),
        epsilon: float | None = None,
    ) -> PairData:
        """The batch's pairs: the four log-probs ``(B,)``, token counts, and the requested extras.

        Args:
            models: the models.
            batch: a padded batch (``input_ids``, ``attention_mask``, ``labels`` ``(2B, T)``) or a packed one;
                ``pair_index`` ``(B,)``; precomputed reference fields ``(2B,)`` when the provider reads them.
            average: length-averaged log-probabilities instead of sums.
            extras: extra groups beyond ``lengths``: ``reference_entropy``, ``perturbed_logps``, ``wpo`` (the
                policy's, computed without gradients).
            epsilon: ε of ``perturbed_logps``.

        Raises:
            ValueError: for perturbed log-probs without ε or without a reference model.
        """
        provider, policy_model = models.provider, models.policy
        reference_model = models.reference or policy_model  # the model the provider runs (adapters off: the policy)
        batch = self.support.layout(batch, policy_model, *([reference_model] if provider.has_model else []))
        lengths = response_targets(batch).counts().float()  # (2B,)
        entropy, perturb, wpo = "reference_entropy" in extras, "perturbed_logps" in extras, "wpo" in extras
        if perturb and (epsilon is None or not provider.has_model):
            raise ValueError("Perturbed log-probs need an `epsilon` and a reference model (reference logits).")
        # Perturbed log-probs combine both models' logits chunk by chunk: both on the same path.
        head = self.use_head(policy_model, *([reference_model] if perturb else []))
        policy = score_rows(policy_model, batch, head, average, keep=perturb, wpo=wpo)
        context = provider.model(policy_model, models.reference) if provider.has_model else nullcontext()
        with torch.no_grad(), context as model:
            if model is not None:
                ref_head = head if perturb else self.use_head(model)
                ref = score_rows(model, batch, ref_head, average, entropy, keep=perturb)
                reference, ref_entropy = ref.logps, ref.entropy
            else:
                reference, ref_entropy = provider.rows(batch, entropy)
                reference = reference / lengths.clamp(min=1) if average else reference  # precomputed: sums
            perturbed = perturbed_rows(policy, ref, batch, epsilon) if perturb else None  # type: ignore[arg-type]
        if perturbed is not None and average:
            perturbed = (perturbed[0] / lengths.clamp(min=1), perturbed[1] / lengths.clamp(min=1))
        return PairData.from_rows(
            policy.logps,
            reference.to(policy.logps.dtype),
            perturbed,
            lengths=lengths,
            reference_entropy=ref_entropy,
            wpo=policy.wpo,
            pair_index=batch.get("pair_index"),
        )
