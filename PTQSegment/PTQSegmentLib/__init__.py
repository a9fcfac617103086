"""Slicer-side helpers of the PTQSegment module, none of which imports Qt.

    logic.py               the module's Logic (build, segment, list engines), usable from the Python console
    nodes.py               volume node <-> ``engine_builder.io.Volume``, label map -> segmentation node, terminology
    process.py             ``ptqseg`` in a child process (through Slicer's launcher), its JSON progress, Cancel
    panel.py               the panel's running job (scene-aware) and failures as one line plus details
    engine_catalog.py      built engines on disk, and why one is stale (JSON and package metadata only)
    dependency_handler.py  which Python packages are missing (Resources/requirements*.txt), installing them with consent

``engine_builder`` ships inside the module's scripts folder (extension-manager install) or sits at the root
of a source checkout; importing this package makes it importable in either layout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def engineBuilderRoot() -> Path | None:
    """The folder holding the ``engine_builder`` package: the module folder when installed, the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent, here.parent.parent):
        if (candidate / "engine_builder" / "__init__.py").is_file():
            return candidate
    spec = importlib.util.find_spec("engine_builder")
    return Path(spec.origin).parent.parent if spec and spec.origin else None


def ensureEngineBuilderImportable() -> None:
    """Put ``engineBuilderRoot()`` on ``sys.path`` when ``engine_builder`` is not importable yet."""
    if importlib.util.find_spec("engine_builder") is not None:
        return
    root = engineBuilderRoot()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))


ensureEngineBuilderImportable()
