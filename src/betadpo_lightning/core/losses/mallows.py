r"""MallowsPO (Chen et al., ICLR 2025, https://arxiv.org/abs/2405.14953): dispersion-weighted preference losses.

A prompt's **dispersion** is estimated from the reference model: per sequence, the mean over response-predicting
positions of the next-token entropy divided by :math:`\log V`; per pair the mean of the chosen and the rejected
sequence, :math:`\hat H(x) \in (0, 1]`. The **weight** (the paper's neg-log dispersion) is
:math:`w(x) = -c \log \hat H(x)` with :math:`c = 0.29` by default.

* **MallowsPO-θ** (Mallows-θ model): :math:`\ell = -\log\sigma(\beta\, w(x)\, h')`, :math:`h' = h - \gamma` with the
  home advantage γ; label smoothing as in cDPO; and an IPO-style variant :math:`(w(x)\, h' - 1/(2\beta))^2`. The
  IPO convention is the library's (:func:`~betadpo_lightning.core.losses.ipo_loss`, which is also the MallowsPO
  repository's); RainbowPO writes :math:`(\beta\, w\, h' - 1/2)^2`, which is :math:`\beta^2` times this.
* **MallowsPO-ϕ** (Mallows-ϕ model, Kendall-τ distance): the sigmoid is replaced by the Mallows-ϕ link
  :func:`mallows_phi_link`, with dispersion :math:`\phi(x) = \exp(-w(x)) = \hat H(x)^c` (so that θ and ϕ read the same
  estimate: :math:`w = -\log\phi`, the paper's neg-log dispersion): :math:`\ell = -\log G_{\phi(x)}(\beta h')`.

Pure tensor math; every loss returns one value per pair, shape ``(B,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from betadpo_lightning.core.losses.dpo import Beta, _as_beta, _check_no_smoothing, _check_smoothing, _compute_dtype

__all__ = [
    "MIN_DISPERSION_WEIGHT",
    "mallows_phi_link",
    "mallows_phi_log_link",
    "mallows_phi_loss",
    "mallows_theta_ipo_loss",
    "mallows_theta_loss",
    "mallows_weight",
]

MIN_DISPERSION_WEIGHT = 1e-6
"""Floor of :math:`w = -\\log\\phi` in the ϕ link (ϕ ≤ exp(−1e-6)): at ϕ = 1 the link is the constant 1/2."""

_MIN_ENTROPY = 1e-12


def mallows_weight(chosen_entropy: Tensor, rejected_entropy: Tensor, scale: float = 0.29) -> Tensor:
    r"""MallowsPO's per-pair weight :math:`w(x) = -c \log((\hat H_c + \hat H_r)/2)`, detached.

    Args:
        chosen_entropy: normalised reference entropy of the chosen responses, in ``[0, 1]``, shape ``(B,)``.
        rejected_entropy: the same for the rejected responses, shape ``(B,)``.
        scale: c (> 0), the paper's ``dispersion_mean`` (0.29 in the released runs).

    Returns:
        Weights ``(B,)``, ≥ 0 (0 for a maximal-entropy prompt); the entropy is floored at 1e-12.

    Example:
        >>> mallows_weight(torch.tensor([0.5]), torch.tensor([0.5]), scale=1.0)  # −log(1/2)
        tensor([0.6931])
    """
    if not scale > 0:
        raise ValueError(f"Expected the dispersion `scale` c > 0, got {scale}.")
    mean = (_compute_dtype(chosen_entropy) + _compute_dtype(rejected_entropy)).detach() / 2
    return -scale * torch.log(mean.clamp(min=_MIN_ENTROPY, max=1.0))


def mallows_theta_loss(margins: Tensor, beta: Beta, weight: Tensor, label_smoothing: float = 0.0) -> Tensor:
    r"""MallowsPO-θ: :math:`-(1-\varepsilon)\log\sigma(\beta w h) - \varepsilon\log\sigma(-\beta w h)`.

    Args:
        margins: ``h`` (already minus the home advantage), shape ``(B,)``.
        beta: β, a float, a 0-d or a ``(B,)`` tensor.
        weight: :func:`mallows_weight`, shape ``(B,)``.
        label_smoothing: ε in ``[0, 0.5]``.

    Returns:
        Per-pair losses, ``(B,)``.
    """
    _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
    h = _compute_dtype(margins)
    logits = _as_beta(beta, h) * weight.to(h.dtype) * h
    loss = -F.logsigmoid(logits)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def mallows_theta_ipo_loss(margins: Tensor, beta: Beta, weight: Tensor, label_smoothing: float = 0.0) -> Tensor:
    r"""MallowsPO-θ, IPO style: :math:`(w h - 1/(2\beta))^2` (on length-averaged log-probabilities, as IPO).

    Args:
        margins: ``h``, shape ``(B,)``.
        beta: β.
        weight: :func:`mallows_weight`, shape ``(B,)``.
        label_smoothing: must be 0.

    Returns:
        Per-pair losses, ``(B,)``.
    """
    _check_no_smoothing(label_smoothing, "MallowsPO IPO")
    h = _compute_dtype(margins)
    return (weight.to(h.dtype) * h - 1.0 / (2.0 * _as_beta(beta, h))) ** 2


def _log_f(n: Tensor, a: Tensor) -> Tensor:
    """``log(n / (1 − e^{−a n}))`` for ``n ≥ 0`` (``−log a`` at 0)."""
    an = a * n
    small = an < 1e-6
    an_safe, n_safe = torch.where(small, 1.0, an), torch.where(small, 1.0, n)
    general = torch.log(n_safe) - torch.log(-torch.expm1(-an_safe))
    return torch.where(small, -torch.log(a) + an / 2, general)


def _log_q(m: Tensor, a: Tensor) -> Tensor:
    """``log(m / (e^{a m} − 1))`` for ``m ≥ 0`` (``−log a`` at 0): ``f`` at ``−m``."""
    am = a * m
    small = am < 1e-6
    am_safe, m_safe = torch.where(small, 1.0, am), torch.where(small, 1.0, m)
    general = torch.log(m_safe) - am_safe - torch.log(-torch.expm1(-am_safe))
    return torch.where(small, -torch.log(a) - am / 2, general)


def _log_difference(log_x: Tensor, log_y: Tensor) -> Tensor:
    """``log(x − y)`` from ``log x > log y``."""
    return log_x + torch.log1p(-torch.exp(log_y - log_x))


def mallows_phi_log_link(s: Tensor, weight: Tensor) -> Tensor:
    r""":math:`\log G_\phi(s)`, the log of the Mallows-ϕ link, in float64; see :func:`mallows_phi_link`.

    Args:
        s: arguments, any shape.
        weight: :math:`w = -\log\phi` (> 0; floored at :data:`MIN_DISPERSION_WEIGHT`), broadcastable to ``s``.

    Returns:
        ``log G(s)``, float64, ≤ 0, finite for finite ``s``; differentiable.
    """
    s = s.to(torch.float64)
    a = weight.to(torch.float64).clamp(min=MIN_DISPERSION_WEIGHT).expand_as(s)
    # s ≤ −½: both points at or left of 0, G = q(−s − ½) − q(−s + ½).
    u = torch.clamp(-s, min=0.5)
    left = _log_difference(_log_q(u - 0.5, a), _log_q(u + 0.5, a))
    # |s| < ½: G = f(s + ½) − q(½ − s).
    c = s.clamp(-0.5, 0.5)
    middle = _log_difference(_log_f(c + 0.5, a), _log_q(0.5 - c, a))
    # s ≥ ½: G(s) = 1 − G(−s), G(−s) from the left branch.
    v = torch.clamp(s, min=0.5)
    right = torch.log1p(-torch.exp(_log_difference(_log_q(v - 0.5, a), _log_q(v + 0.5, a))))
    return torch.where(s <= -0.5, left, torch.where(s >= 0.5, right, middle))


def mallows_phi_link(s: Tensor, weight: Tensor) -> Tensor:
    r"""The Mallows-ϕ (Kendall-τ) preference link :math:`G_\phi(s)`, a probability, in float64.

    Under a Mallows-ϕ model :math:`P(\mu) \propto \phi^{d_K(\mu, \mu_0)}` two items ``k`` places apart in the
    central ranking are ordered as in it with probability (Mallows, 1957)

    .. math::
        g_\phi(k) = f_\phi(k + 1) - f_\phi(k), \qquad f_\phi(n) = \frac{n}{1 - \phi^n},

    a function of ``k`` alone (not of the number of items or of the positions). MallowsPO-ϕ turns it into a link of
    a continuous score difference ``s`` (β times the DPO margin). The paper gives ``g`` on rank gaps ``k ≥ 1``; its
    forward difference taken at ``s = 0`` is not 1/2 (e.g. 0.557 at ϕ = 0.5), so ``g(s)`` and ``1 − g(−s)`` do not
    meet at 0. We use the centred difference

    .. math::
        G_\phi(s) = f_\phi(s + \tfrac12) - f_\phi(s - \tfrac12),

    with ``f`` extended to all reals (``f(0) = −1/\log\phi``). Since :math:`f(n) - f(-n) = n`, it satisfies
    :math:`G(s) + G(-s) = 1` and :math:`G(0) = 1/2`; it increases with ``s`` (``f`` is convex) from 0 to 1; it equals
    Mallows' :math:`g_\phi(k)` at :math:`s = k + \tfrac12`; as :math:`\phi \to 1` it tends to 1/2 (no preference)
    and as :math:`\phi \to 0` to :math:`\mathrm{clip}(s + \tfrac12, 0, 1)` (a deterministic order).

    Args:
        s: score differences, any shape.
        weight: :math:`w = -\log\phi` (> 0), broadcastable to ``s``.

    Returns:
        ``G(s)`` in ``(0, 1)``, float64.

    Example:
        >>> phi = torch.tensor(0.5)
        >>> round(float(mallows_phi_link(torch.tensor(1.5), -torch.log(phi))), 6)  # g(1) = 1/(1 + ϕ)
        0.666667
    """
    return torch.exp(mallows_phi_log_link(s, weight))


def mallows_phi_loss(margins: Tensor, beta: Beta, weight: Tensor, label_smoothing: float = 0.0) -> Tensor:
    r"""MallowsPO-ϕ: :math:`-(1-\varepsilon)\log G_{\phi}(\beta h) - \varepsilon\log G_{\phi}(-\beta h)`.

    Args:
        margins: ``h`` (already minus the home advantage), shape ``(B,)``.
        beta: β.
        weight: :math:`w(x) = -\log\phi(x)` from :func:`mallows_weight`, shape ``(B,)``.
        label_smoothing: ε in ``[0, 0.5]``.

    Returns:
        Per-pair losses, ``(B,)``, in the margins' dtype (float32 for half precision).
    """
    _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
    h = _compute_dtype(margins)
    s = _as_beta(beta, h) * h
    loss = -mallows_phi_log_link(s, weight)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * mallows_phi_log_link(-s, weight)
    return loss.to(h.dtype)
