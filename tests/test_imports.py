"""Every module of the package imports (catches undefined names and broken imports that no other test reaches)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import betadpo_lightning

MODULES = sorted(info.name for info in pkgutil.walk_packages(betadpo_lightning.__path__, prefix="betadpo_lightning."))


def test_the_walk_found_the_core_modules():
    core = {"betadpo_lightning.core.losses", "betadpo_lightning.core.logps", "betadpo_lightning.core.controllers"}
    assert core <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize(
    ("modules", "frameworks"),
    [
        # the pair-data types, losses, controllers and log-probs, also through their public re-exports
        (
            "betadpo_lightning.core.types, betadpo_lightning.core.losses, betadpo_lightning.core.logps, "
            "betadpo_lightning.core.controllers, betadpo_lightning.losses, betadpo_lightning.controllers, "
            "betadpo_lightning.logps",
            ("lightning", "pytorch_lightning", "transformers", "datasets"),
        ),
        # the pure collate and packing functions (what a custom training loop or sampler needs)
        (
            "betadpo_lightning.data.collate, betadpo_lightning.data.packing, betadpo_lightning.data.packed_views",
            ("lightning", "pytorch_lightning", "transformers", "datasets"),
        ),
        # metrics need torchmetrics (which may load transformers itself) but never Lightning
        ("betadpo_lightning.training.metrics", ("lightning", "pytorch_lightning")),
    ],
)
def test_lower_layers_do_not_import_the_frameworks(modules, frameworks):
    """Pure maths and small-state layers (DESIGN §1) load none of the heavy frameworks."""
    import subprocess
    import sys

    code = (
        f"import sys; import {modules}; "
        f"bad = sorted({{m for m in sys.modules if m.split('.')[0] in {frameworks!r}}}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
