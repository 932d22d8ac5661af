"""The per-pair data a forward pass produces: what losses, controllers and metrics read.

Pure data, no Lightning: a :class:`PairData` holds, for ``B`` preference pairs, the policy's and the reference's
log-probabilities of the chosen and rejected responses, shape ``(B,)`` each, plus optional extras that some methods
need. Extras come in named groups (:data:`EXTRAS`); a β controller or a loss declares the groups it reads, and a
module declares the groups it can compute, so a mismatch is found before training starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["EXTRAS", "LOGPS_FIELDS", "REFERENCE_BATCH_KEYS", "PairData", "PairRequest", "check_extras"]

LOGPS_FIELDS: tuple[str, ...] = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
)
"""The four ``(B,)`` log-probability fields every :class:`PairData` has."""

EXTRAS: dict[str, tuple[str, ...]] = {
    "lengths": ("chosen_lengths", "rejected_lengths"),
    "reference_entropy": ("reference_chosen_entropy", "reference_rejected_entropy"),
    "perturbed_logps": ("plus_chosen_logps", "plus_rejected_logps", "minus_chosen_logps", "minus_rejected_logps"),
    "wpo": ("policy_chosen_wpo", "policy_rejected_wpo"),
}
"""Optional field groups by name.

* ``lengths``: response token counts, float ``(B,)``.
* ``reference_entropy``: the reference's mean next-token entropy over each response divided by ``log V``
  (MallowsPO's dispersion), ``(B,)``.
* ``perturbed_logps``: summed log-probs under the ε-perturbed policies ``(1+ε)z − ε z_ref`` (``plus``) and
  ``(1−ε)z + ε z_ref`` (``minus``), ``(B,)`` (ε-DPO).
* ``wpo``: the policy's mean over each response of ``log p(y_t) − logsumexp_v(2 log p_v)``, float32, without
  gradient, ``(B,)`` (WPO's weight is ``exp`` of the chosen plus the rejected value).
"""

REFERENCE_BATCH_KEYS: dict[str, tuple[str, ...]] = {
    "reference_logps": LOGPS_FIELDS[2:],
    "reference_entropy": EXTRAS["reference_entropy"],
}
"""Batch fields of a precomputed reference, ``(2B,)`` each in row order (chosen rows first), by name → the per-pair
columns they are collated from (chosen, rejected): summed log-probs, and (optional) the normalised entropy of
:func:`~betadpo_lightning.core.logps.sequence_entropy`."""


@dataclass(frozen=True)
class PairData:
    """Per-pair quantities of ``B`` preference pairs; every tensor field has shape ``(B,)``.

    Log-probabilities are sums over the response tokens (or means, when the loss asks for length-averaged
    log-probabilities). A reference-free run has zeros as reference log-probabilities.

    Attributes:
        policy_chosen_logps: policy log-probabilities of the chosen responses.
        policy_rejected_logps: policy log-probabilities of the rejected responses.
        reference_chosen_logps: reference log-probabilities of the chosen responses.
        reference_rejected_logps: reference log-probabilities of the rejected responses.
        chosen_lengths: response token counts of the chosen responses (extra ``lengths``).
        rejected_lengths: response token counts of the rejected responses (extra ``lengths``).
        reference_chosen_entropy: reference dispersion of the chosen responses (extra ``reference_entropy``).
        reference_rejected_entropy: reference dispersion of the rejected responses (extra ``reference_entropy``).
        plus_chosen_logps: chosen log-probs under ``(1+ε)z − ε z_ref`` (extra ``perturbed_logps``).
        plus_rejected_logps: rejected log-probs under ``(1+ε)z − ε z_ref`` (extra ``perturbed_logps``).
        minus_chosen_logps: chosen log-probs under ``(1−ε)z + ε z_ref`` (extra ``perturbed_logps``).
        minus_rejected_logps: rejected log-probs under ``(1−ε)z + ε z_ref`` (extra ``perturbed_logps``).
        policy_chosen_wpo: the policy's WPO log-weight of the chosen responses (extra ``wpo``).
        policy_rejected_wpo: the policy's WPO log-weight of the rejected responses (extra ``wpo``).
        pair_index: each pair's row in its dataset split, long ``(B,)``, for messages; never used in math.

    Example:
        >>> import torch
        >>> lp = torch.tensor([-3.0, -4.0])
        >>> pairs = PairData(lp, lp - 1, lp, lp)
        >>> len(pairs), pairs.extras
        (2, frozenset())
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    reference_chosen_logps: Tensor
    reference_rejected_logps: Tensor
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None
    reference_chosen_entropy: Tensor | None = None
    reference_rejected_entropy: Tensor | None = None
    plus_chosen_logps: Tensor | None = None
    plus_rejected_logps: Tensor | None = None
    minus_chosen_logps: Tensor | None = None
    minus_rejected_logps: Tensor | None = None
    policy_chosen_wpo: Tensor | None = None
    policy_rejected_wpo: Tensor | None = None
    pair_index: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.policy_chosen_logps.shape
        if len(shape) != 1:
            raise ValueError(f"Expected `policy_chosen_logps` of shape (B,), got {tuple(shape)}.")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and value.shape != shape:
                raise ValueError(f"Expected `{field.name}` of shape {tuple(shape)}, got {tuple(value.shape)}.")
        for name, fields in EXTRAS.items():
            present = [getattr(self, f) is not None for f in fields]
            if any(present) and not all(present):
                raise ValueError(f"The extra {name!r} needs all of {list(fields)}; some are missing.")

    def __len__(self) -> int:
        return self.policy_chosen_logps.shape[0]

    @property
    def extras(self) -> frozenset[str]:
        """The names of the extra groups present."""
        return frozenset(name for name, fields in EXTRAS.items() if getattr(self, fields[0]) is not None)

    def tensors(self) -> dict[str, Tensor]:
        """Every present tensor field by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def map(self, fn: Callable[[Tensor], Tensor]) -> PairData:
        """A new :class:`PairData` with ``fn`` applied to every present tensor field."""
        return PairData(**{name: fn(value) for name, value in self.tensors().items()})

    def detach(self) -> PairData:
        """Every field detached from the graph."""
        return self.map(Tensor.detach)

    def subset(self, mask: Tensor) -> PairData:
        """The pairs where ``mask`` (bool ``(B,)``) is true, every field indexed alike."""
        return self.map(lambda value: value[mask])

    def select(self, extras: Iterable[str]) -> PairData:
        """Only the four log-probabilities, ``pair_index`` and the named extra groups (which must be present).

        Raises:
            KeyError: for an unknown extra.
            ValueError: for an absent one.
        """
        names = set(LOGPS_FIELDS) | {"pair_index"}
        for extra in extras:
            check_extras({extra}, self.extras, "select", "this PairData")
            names.update(EXTRAS[extra])
        return PairData(**{name: value for name, value in self.tensors().items() if name in names})

    @staticmethod
    def from_rows(
        policy: Tensor, reference: Tensor, perturbed: tuple[Tensor, Tensor] | None = None, **rows: Tensor | None
    ) -> PairData:
        """Split ``(2B,)`` per-row values (chosen rows first, then rejected) into pair fields.

        Args:
            policy: policy log-probabilities of the ``2B`` rows, shape ``(2B,)``.
            reference: reference log-probabilities of the ``2B`` rows, shape ``(2B,)``.
            perturbed: the rows' log-probabilities under the ``plus`` and ``minus`` perturbations, ``(2B,)`` each.
            **rows: extra per-row values by group name, ``(2B,)`` each (``lengths``, ``reference_entropy``,
                ``wpo``), or ``pair_index`` with shape ``(B,)``.

        Returns:
            The pairs.

        Example:
            >>> import torch
            >>> PairData.from_rows(torch.tensor([-1.0, -2.0]), torch.zeros(2)).policy_rejected_logps
            tensor([-2.])
        """
        b = policy.shape[0] // 2
        fields: dict[str, Tensor] = {
            "policy_chosen_logps": policy[:b],
            "policy_rejected_logps": policy[b:],
            "reference_chosen_logps": reference[:b],
            "reference_rejected_logps": reference[b:],
        }
        if perturbed is not None:
            plus, minus = perturbed
            fields |= {"plus_chosen_logps": plus[:b], "plus_rejected_logps": plus[b:]}
            fields |= {"minus_chosen_logps": minus[:b], "minus_rejected_logps": minus[b:]}
        for name, value in rows.items():
            if value is None:
                continue
            if name == "pair_index":
                fields[name] = value
            elif name in EXTRAS and len(EXTRAS[name]) == 2:
                chosen, rejected = EXTRAS[name]
                fields[chosen], fields[rejected] = value[:b], value[b:]
            else:
                known = ", ".join(repr(group) for group, names in EXTRAS.items() if len(names) == 2)
                raise KeyError(f"Unknown per-row value {name!r}; expected one of {known}.")
        return PairData(**fields)


def check_extras(required: Iterable[str], available: Iterable[str], consumer: str, producer: str) -> None:
    """Raise unless every required extra group is available.

    Args:
        required: the groups ``consumer`` reads.
        available: the groups ``producer`` can compute.
        consumer: who needs them, for the message (e.g. ``"EpsilonBetaController"``).
        producer: who computes them, for the message (e.g. ``"PreferenceModule with PrecomputedReference"``).

    Raises:
        KeyError: naming the unknown group.
        ValueError: naming both sides and the missing groups.
    """
    required, available = set(required), set(available)
    unknown = required - set(EXTRAS)
    if unknown:
        raise KeyError(f"{consumer} asks for unknown extras {sorted(unknown)}; known: {sorted(EXTRAS)}.")
    missing = required - available
    if missing:
        raise ValueError(
            f"{consumer} needs {sorted(missing)}, which {producer} does not compute "
            f"(it provides {sorted(available) or 'no extras'})."
        )


@dataclass(frozen=True)
class PairRequest:
    """What the producer of the pairs must compute for their consumers (a loss, a β controller).

    Attributes:
        extras: the extra groups of :data:`EXTRAS` to compute.
        epsilon: ε of the ``perturbed_logps`` extra (ε-DPO); ``None`` when that extra is not requested.

    Example:
        >>> both = PairRequest(frozenset({"lengths"})) | PairRequest(frozenset({"perturbed_logps"}), epsilon=0.01)
        >>> sorted(both.extras), both.epsilon
        (['lengths', 'perturbed_logps'], 0.01)
    """

    extras: frozenset[str] = frozenset()
    epsilon: float | None = None

    def __post_init__(self) -> None:
        check_extras(self.extras, EXTRAS, "PairRequest", "the pair data")
        if ("perturbed_logps" in self.extras) != (self.epsilon is not None):
            raise ValueError("The `perturbed_logps` extra and `epsilon` go together: give both or neither.")

    def __or__(self, other: PairRequest) -> PairRequest:
        """Both requests (their ε must agree where both give one)."""
        if None not in (self.epsilon, other.epsilon) and self.epsilon != other.epsilon:
            raise ValueError(f"Two consumers ask for perturbed log-probs with ε {self.epsilon} and {other.epsilon}.")
        epsilon = self.epsilon if self.epsilon is not None else other.epsilon
        return PairRequest(frozenset(self.extras | other.extras), epsilon)
