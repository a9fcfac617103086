"""The model registry: every module in this package ends in a ``SPECS`` tuple of ModelSpec instances.

Adding a model is one new file here (plus its test); nothing else changes.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from functools import lru_cache
from pathlib import Path

from ..errors import PTQError
from ..spec import Label, ModelSpec, labels_from_table

#: Where ``packaged`` weights files live (defined here, away from torch, so that the Slicer module can check them).
PACKAGED_WEIGHTS = Path(__file__).parent / "weights"
#: Label tables (names, colours, terminology) as JSON data files: ``labels/<table>.json``.
LABEL_TABLES = Path(__file__).parent / "labels"


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


@lru_cache(maxsize=None)
def label_table_data(table: str) -> dict:
    """The JSON object of ``labels/<table>.json``: ``labels`` plus where they come from (``source``, ...)."""
    return json.loads((LABEL_TABLES / f"{table}.json").read_text(encoding="utf-8"))


def label_table(table: str) -> tuple[Label, ...]:
    """The labels of ``labels/<table>.json`` (values 0..N-1, background first)."""
    return labels_from_table(label_table_data(table)["labels"], f"label table {table}")
