"""Which fast paths serve a model: the response-only head and the packed layout, with the reason of a fallback."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from betadpo_lightning.data.packed_views import unpack_to_padded
from betadpo_lightning.data.packing import is_packed
from betadpo_lightning.models.packed_attention import packing_unsupported_reason
from betadpo_lightning.models.scoring import head_unsupported_reason, transformers_model

__all__ = ["FALLBACK_PAD_ID", "ModelSupport"]

FALLBACK_PAD_ID = 0
"""Id written into the padding of a packed batch unpacked for a model that cannot pack (never attended to, never
predicted, so any id of the vocabulary does)."""


class ModelSupport:
    """Decides, per model and once, whether the head and the packed layout serve it; logs each fallback once.

    Args:
        owner: named in the log lines (``"PreferenceModule"``, ``"SFTModule"``, ...).
        head: allow the response-only head (``False``: always the full logits).
        packing: run packed batches packed where the models allow it (``False``: always the padded batch).
    """

    def __init__(self, owner: str, head: bool = True, packing: bool = True) -> None:
        self.owner, self.allow_head, self.allow_packing = owner, head, packing
        self._known: dict[tuple[str, int], bool] = {}

    def _serves(self, kind: str, reason_of: Callable[[nn.Module], str | None], fallback: str, models: tuple) -> bool:
        for model in models:
            key = (kind, id(model))
            if key not in self._known:
                reason = reason_of(model)
                self._known[key] = reason is None
                if reason is not None:
                    rank_zero_info(f"{self.owner}: {fallback} for {type(model).__name__}: {reason}.")
        return all(self._known[(kind, id(model))] for model in models)

    def head(self, *models: nn.Module) -> bool:
        """Whether the response-only head serves all of ``models``."""
        return self.allow_head and self._serves("head", head_unsupported_reason, "full logits", models)

    def packing(self, *models: nn.Module) -> bool:
        """Whether all of ``models`` take a packed batch."""
        reason_of = lambda model: packing_unsupported_reason(transformers_model(model))  # noqa: E731
        return self.allow_packing and self._serves("packing", reason_of, "padded batches", models)

    def layout(self, batch: Mapping[str, Tensor], *models: nn.Module) -> dict[str, Tensor]:
        """``batch`` as all of ``models`` can run it: a packed batch stays packed where they take it, else unpacked."""
        if is_packed(batch) and not self.packing(*models):
            return unpack_to_padded(batch, FALLBACK_PAD_ID)
        return dict(batch)
