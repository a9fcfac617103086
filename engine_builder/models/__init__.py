"""The model registry: every module in this package ends in a ``SPECS`` tuple of ModelSpec instances.

Adding a model is one new file here (plus its test); nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path

from ..errors import PTQError
from ..spec import ModelSpec

#: Where ``packaged`` weights files live (defined here, away from torch, so that the Slicer module can check them).
PACKAGED_WEIGHTS = Path(__file__).parent / "weights"


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelSpec]:
    """All registered specs by name."""
    specs: dict[str, ModelSpec] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for spec in getattr(module, "SPECS", ()):
            if spec.name in specs:
                raise RuntimeError(f"model name '{spec.name}' is registered twice")
            specs[spec.name] = spec
    return specs


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``; an unknown name lists the valid ones."""
    specs = registry()
    if name not in specs:
        raise PTQError(f"unknown model '{name}': choose one of {', '.join(sorted(specs))}")
    return specs[name]
