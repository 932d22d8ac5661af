r"""ε-DPO: an instance-level β from how the preference margin responds to perturbing β.

Lee et al., "KL Penalty Control via Perturbation for Direct Preference Optimization", 2025,
https://arxiv.org/abs/2502.13177.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from betadpo_lightning.core.controllers.base import BetaStep
from betadpo_lightning.core.types import PairData, PairRequest

__all__ = ["EpsilonBetaController", "perturbation_signs"]


def perturbation_signs(pairs: PairData) -> Tensor:
    r"""ε-DPO's per-pair step :math:`s_i \in \{-1, 0, +1\}`.

    With :math:`r, r^+, r^-` the chosen-minus-rejected differences of the policy's log-probs and of the log-probs
    under the perturbed policies :math:`(1+\varepsilon)z - \varepsilon z_{ref}` (≈ the policy for β/(1+ε)) and
    :math:`(1-\varepsilon)z + \varepsilon z_{ref}` (≈ β/(1−ε)): :math:`s_i = +1` if :math:`r^+ > r > r^-` (a
    smaller β would widen the margin), :math:`-1` if :math:`r^- > r > r^+`, else 0. The reference terms of the
    three margins are the same, so they cancel.

    Args:
        pairs: pairs with the ``perturbed_logps`` extra.

    Returns:
        Signs, float32 ``(N,)``.

    Example:
        >>> lp = torch.tensor([0.0, 0.0])
        >>> pairs = PairData(lp, lp - 1, lp, lp, plus_chosen_logps=lp, plus_rejected_logps=torch.tensor([-2.0, -0.5]),
        ...                  minus_chosen_logps=lp, minus_rejected_logps=torch.tensor([-0.5, -2.0]))
        >>> perturbation_signs(pairs)
        tensor([ 1., -1.])
    """
    if "perturbed_logps" not in pairs.extras:
        raise ValueError("ε-DPO needs the `perturbed_logps` extra (log-probs under the perturbed policies).")
    fields = pairs.tensors()
    r = (pairs.policy_chosen_logps - pairs.policy_rejected_logps).float()
    plus = (fields["plus_chosen_logps"] - fields["plus_rejected_logps"]).float()
    minus = (fields["minus_chosen_logps"] - fields["minus_rejected_logps"]).float()
    up = (plus > r) & (r > minus)
    down = (minus > r) & (r > plus)
    return up.float() - down.float()


class EpsilonBetaController:
    r"""ε-DPO: per-pair :math:`\beta_i = \beta/(1 + \varepsilon s_i)`, and β adapted once per optimizer step.

    Each training micro-batch: the signs :math:`s_i` of :func:`perturbation_signs` for all pairs of all ranks give
    :math:`\beta_i = \beta/(1 + \varepsilon s_i)`; every pair is kept. After the last micro-batch of an optimizer
    step: :math:`\beta \leftarrow \beta/(1 + \varepsilon\,\mathrm{mean}(s))` over every pair of the step (all
    micro-batches, all ranks). The current β is checkpointed state (the released code keeps it in a Python float
    that a resume loses). The perturbed log-probs are computed in float32 whatever the model's dtype (in bfloat16
    the released code's perturbations round to the policy and every :math:`s_i` is 0).

    Args:
        beta: β0, the initial β (> 0); also the β of the logged rewards and of the validation loss.
        epsilon: ε, the perturbation size, in ``(0, 1)``.

    Example:
        >>> controller = EpsilonBetaController(beta=0.01, epsilon=0.5)
        >>> lp = torch.zeros(2)
        >>> pairs = PairData(lp, lp - 1, lp, lp, plus_chosen_logps=lp, plus_rejected_logps=torch.tensor([-2.0, -0.5]),
        ...                  minus_chosen_logps=lp, minus_rejected_logps=torch.tensor([-0.5, -2.0]))
        >>> controller.step(torch.ones(2), pairs).beta  # β/(1 + ε), β/(1 − ε)
        tensor([0.0067, 0.0200])
    """

    adapts_beta: bool = True
    reference_margins: bool = True
    per_pair_beta: bool = True
    filters: bool = False
    needs_logistic: bool = True

    def __init__(self, beta: float = 0.01, epsilon: float = 0.01) -> None:
        if not beta > 0:
            raise ValueError(f"Expected `beta` > 0, got {beta}.")
        if not 0 < epsilon < 1:
            raise ValueError(f"Expected `epsilon` in (0, 1), got {epsilon}.")
        self.beta, self.epsilon = float(beta), float(epsilon)
        self._current = torch.tensor(self.beta, dtype=torch.float64)
        self._pending = torch.zeros(2, dtype=torch.float64)  # Σ s, count over the optimizer step
        self._updates = 0

    @property
    def request(self) -> PairRequest:
        """The perturbed log-probs with this controller's ε."""
        return PairRequest(frozenset({"perturbed_logps"}), self.epsilon)

    @property
    def current_beta(self) -> float:
        """The adapted β (before the per-pair perturbation)."""
        return float(self._current)

    def step(self, gaps: Tensor, pairs: PairData | None = None) -> BetaStep:
        """Per-pair β of a training micro-batch; accumulates the signs for the optimizer step.

        Args:
            gaps: the margins of the global micro-batch, ``(N,)`` (only their number is used).
            pairs: the same pairs with the ``perturbed_logps`` extra.

        Returns:
            β ``(N,)`` float32, an all-true mask, and statistics (``current``, ``sign_mean``, ``fraction_up``,
            ``fraction_down``).
        """
        if pairs is None:
            raise ValueError("EpsilonBetaController needs the pairs with their perturbed log-probs.")
        signs = perturbation_signs(pairs).to(torch.float64)  # (N,)
        if signs.shape != gaps.shape:
            raise ValueError(f"Expected pairs for the {gaps.shape[0]} margins, got {signs.shape[0]}.")
        # New tensors, never in-place updates: under `ddp_spawn` a pickled state tensor lives in shared memory.
        self._pending = self._pending + torch.stack([signs.sum().cpu(), torch.tensor(float(signs.numel()))])
        beta = (self._current / (1 + self.epsilon * signs.cpu())).float().to(gaps.device)
        stats = {
            "current": self._current.float(),
            "sign_mean": signs.mean().float().cpu(),
            "fraction_up": (signs > 0).float().mean().cpu(),
            "fraction_down": (signs < 0).float().mean().cpu(),
        }
        keep = torch.ones(gaps.shape[0], dtype=torch.bool, device=gaps.device)
        return BetaStep(beta=beta, keep=keep, stats=stats)

    def on_optimizer_step(self) -> None:
        """``β ← β / (1 + ε · mean(s))`` over the pairs of the optimizer step."""
        total, count = self._pending.tolist()
        if count == 0:
            return
        self._current = self._current / (1 + self.epsilon * total / count)
        self._pending = torch.zeros(2, dtype=torch.float64)
        self._updates += 1

    def settings(self) -> dict[str, Any]:
        """The configuration, saved with the state so that a resume with other settings is noticed."""
        return {"beta": self.beta, "epsilon": self.epsilon}

    def discard_step(self) -> None:
        """A skipped optimizer step: forget its signs; β stays."""
        self._pending = torch.zeros(2, dtype=torch.float64)

    @property
    def num_updates(self) -> int:
        """How many optimizer steps have updated β."""
        return self._updates

    def state_dict(self) -> dict[str, Any]:
        """The current β, the pending signs of an unfinished step, and the settings it was made with."""
        return {
            "current_beta": self._current.clone(),
            "pending": self._pending.clone(),
            "updates": self._updates,
            "settings": self.settings(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self._current = torch.as_tensor(state_dict.get("current_beta", self.beta), dtype=torch.float64).clone()
        self._pending = torch.as_tensor(state_dict.get("pending", torch.zeros(2)), dtype=torch.float64).clone()
        self._updates = int(state_dict.get("updates", 0))
