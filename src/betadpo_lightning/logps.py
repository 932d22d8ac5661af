"""Public import path of :mod:`betadpo_lightning.core.logps` (kept for users and other code)."""

from betadpo_lightning.core.logps import *  # noqa: F403
from betadpo_lightning.core.logps import __all__  # noqa: F401
