r"""The loss component: a per-pair preference loss that carries its hyperparameters and declares what it needs.

A :class:`PreferenceLoss` maps a batch of pairs (:class:`~betadpo_lightning.core.types.PairData`) and β to one loss
per pair, shape ``(B,)``; it never reduces. Its class attributes tell a caller what to feed it and what it can be
composed with, so that the module, the β controllers and the configuration checks read declarations rather than
lists of names:

* ``requires``: the extra groups of :data:`~betadpo_lightning.core.types.EXTRAS` it reads;
* ``average_logps``: whether its log-probabilities are length-averaged (IPO, SimPO) rather than summed;
* ``needs_reference``: whether its margin is relative to a reference model (``False``: reference-free);
* ``beta_scales_margin``: whether β is the temperature of the margin (the KL trade-off), which a dynamic-β rule may
  set; ``False`` where β is only a weight (ORPO's λ) or unused;
* ``logistic``: whether β enters through a logistic link :math:`\sigma(\beta h)` (ε-DPO's perturbation argument);
* ``pairwise``: whether each pair's loss depends on that pair alone, so that pairs can be filtered out and β may
  differ per pair (``False`` for AOT, which sorts the batch);
* ``reads_beta``: whether the loss reads β at all (``False`` for the NLL of the chosen response, which a mixture
  adds to a preference loss); a loss that does not read β ignores the ``beta`` it is given.

A new loss is one subclass with its hyperparameters as ``__init__`` arguments stored under the same names, a
:meth:`PreferenceLoss.forward`, and one line in :data:`~betadpo_lightning.core.losses.registry.LOSSES`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from betadpo_lightning.core.losses.dpo import Beta, pair_margins
from betadpo_lightning.core.types import PairData

__all__ = ["PreferenceLoss", "loss_from_config"]


class PreferenceLoss(ABC):
    """A per-pair preference loss with its hyperparameters and declarations (see the module docstring).

    Subclasses store every ``__init__`` argument as an attribute of the same name (:meth:`config` reads them back).

    Call it as ``loss(pairs, beta)`` or, with margins already computed by :meth:`margins`,
    ``loss(pairs, beta, margins)``: the result has shape ``(B,)``.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    average_logps: bool = False
    needs_reference: bool = True
    beta_scales_margin: bool = True
    logistic: bool = False
    pairwise: bool = True
    reads_beta: bool = True

    def margins(self, pairs: PairData) -> Tensor:
        """The margin β acts on, ``(B,)``: ``(pc − rc) − (pr − rr)``, or ``pc − pr`` without a reference.

        The log-probabilities are already summed or averaged as :attr:`average_logps` declares.
        """
        return pair_margins(pairs, reference_free=not self.needs_reference)

    @abstractmethod
    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """The per-pair loss.

        Args:
            pairs: the pairs, ``(B,)`` fields, with the extras in :attr:`requires`.
            margins: :meth:`margins` of ``pairs``, ``(B,)``.
            beta: β, a float, a 0-d tensor or (for a :attr:`pairwise` loss) a ``(B,)`` tensor.

        Returns:
            Losses, shape ``(B,)``.
        """

    def __call__(self, pairs: PairData, beta: Beta, margins: Tensor | None = None) -> Tensor:
        """The per-pair losses ``(B,)``; checks the extras and the shape of β, then calls :meth:`forward`."""
        missing = self.requires - pairs.extras
        if missing:
            raise ValueError(f"{self!r} reads the extras {sorted(missing)}, which the pairs do not hold.")
        if isinstance(beta, Tensor) and beta.dim() > 0 and not self.pairwise:
            raise ValueError(f"{type(self).__name__} couples the pairs of a batch: it takes one β, not one per pair.")
        return self.forward(pairs, self.margins(pairs) if margins is None else margins, beta)

    # ------------------------------------------------------------ configuration
    def hyperparameters(self) -> dict[str, Any]:
        """The ``__init__`` arguments, read back from the attributes of the same names."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: _plain(getattr(self, name)) for name in names}

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: plain data that :func:`loss_from_config` rebuilds."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.hyperparameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.hyperparameters() == self.hyperparameters()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(repr(self))


def _plain(value: Any) -> Any:
    if isinstance(value, PreferenceLoss):
        return value.config()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def loss_from_config(config: Mapping[str, Any]) -> PreferenceLoss:
    """Rebuild a loss from :meth:`PreferenceLoss.config` (as saved in a checkpoint's hyperparameters).

    Raises:
        ValueError: naming the class path that is not a :class:`PreferenceLoss`.
    """
    import importlib

    path = str(config.get("class_path", ""))
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, PreferenceLoss)):
        raise ValueError(f"Expected the class path of a PreferenceLoss, got {path!r}.")
    args = {
        k: (loss_from_config(v) if isinstance(v, Mapping) and "class_path" in v else v)
        for k, v in dict(config.get("init_args", {})).items()
    }
    for key, value in args.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) and "class_path" in v for v in value):
            args[key] = [loss_from_config(v) for v in value]
    return cls(**args)
