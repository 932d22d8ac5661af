"""Every module of the package imports (catches undefined names and broken imports that no other test reaches)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import betadpo_lightning

MODULES = sorted(info.name for info in pkgutil.walk_packages(betadpo_lightning.__path__, prefix="betadpo_lightning."))


def test_the_walk_found_the_core_modules():
    assert {"betadpo_lightning.losses", "betadpo_lightning.logps", "betadpo_lightning.controllers"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
