"""Public import path of :mod:`betadpo_lightning.core.controllers` (kept for users and other code)."""

from betadpo_lightning.core.controllers import *  # noqa: F403
from betadpo_lightning.core.controllers import __all__  # noqa: F401
