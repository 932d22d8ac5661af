"""Public import path of :mod:`betadpo_lightning.core.losses` (kept for users and other code)."""

from betadpo_lightning.core.losses import *  # noqa: F403
from betadpo_lightning.core.losses import __all__  # noqa: F401
