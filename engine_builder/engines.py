"""Open a built engine directory: checked manifest, checked files, the backend's engine (and its FP32 reference).

Light on purpose: ``ptqseg segment`` with an OpenVINO engine imports this, not the build pipeline, so a fresh
process loads neither torch nor MONAI nor NNCF.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .artifact import read_manifest, verify_engine_files
from .backends import BuildOptions, get_backend
from .errors import PTQError
from .spec import ModelSpec

log = logging.getLogger(__name__)


def open_engine(engine_dir: str | Path, threads: int | None = None, device: str = "cpu"):
    """Load a built engine: returns (engine, spec, manifest).

    The manifest is checked field by field and every engine file against its build-time SHA-256 before any
    runtime reads it (an engine directory is data from whoever shared it).
    """
    manifest = read_manifest(engine_dir)
    verify_engine_files(engine_dir, manifest)
    backend = get_backend(manifest["backend"])
    if manifest.get("backend_version") != backend.version():
        log.warning("engine %s was built with %s; this machine has %s", engine_dir, manifest.get("backend_version"),
                    backend.version())
    engine = backend.load(Path(engine_dir), manifest, BuildOptions(threads=threads, device=device))
    return engine, ModelSpec.from_dict(manifest["spec"]), manifest


def open_reference(engine_dir: str | Path, manifest: dict, threads: int | None = None):
    """The FP32 reference graph a quantized engine carries (``--verify``); PTQError for an engine without one."""
    if manifest["precision"] != "int8":
        raise PTQError(f"--verify compares a quantized engine with its FP32 reference; {engine_dir} is a "
                       f"{manifest['precision']} engine (nothing to compare with)")
    return get_backend("openvino").load_reference(Path(engine_dir), manifest, BuildOptions(threads=threads))


