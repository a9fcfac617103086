"""Build an engine from a model + calibration folder, and open a built one: the public entry points.

    build_engine(model, calib_folder, out)      -> BuildResult (engine directory, manifest, cache hit?)
    open_engine(engine_dir)                     -> (Engine, ModelSpec, manifest)

Both the ``ptqseg`` command and the Slicer module's Logic call these.
"""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .artifact import (ENGINE_FILES, FORMAT_VERSION, cache_key, commit_dir, copy_engine, default_cache_root,
                       read_manifest, temporary_dir_for, verify_engine_files, write_manifest)
from .backends import BuildOptions, FP32Graph, get_backend
from .backends.base import folder_size
from .calibration import CalibrationSet, build_calibration_set
from .errors import PTQError
from .evaluate import agreement_report
from .export import export_onnx
from .models import get_spec
from .progress import stage
from .spec import ModelSpec
from .files import file_sha256
from .weights import load_network, resolve_weights

log = logging.getLogger(__name__)


@dataclass
class BuildRequest:
    """Everything that defines an engine. ``model`` is a registry name or a ModelSpec."""

    model: str | ModelSpec
    calib: str | Path | None = None
    weights: str | Path | None = None
    backend: str = "openvino"
    precision: str = "int8"
    method: str | None = None
    max_drop: float | None = None
    batch_size: int = 1
    patches_per_volume: int = 8
    seed: int = 0
    min_agreement: float = 0.98
    keep_float: tuple[str, ...] = ()
    threads: int | None = None
    device: str = "cpu"
    allow_random_weights: bool = False
    progress: bool = True

    def resolved_spec(self) -> ModelSpec:
        return self.model if isinstance(self.model, ModelSpec) else get_spec(self.model)

    def options(self) -> BuildOptions:
        return BuildOptions(method=self.method, max_drop=self.max_drop, threads=self.threads, device=self.device,
                            keep_float=tuple(self.keep_float), progress=self.progress)


@dataclass
class BuildResult:
    engine_dir: Path
    manifest: dict
    cache_hit: bool
    warnings: list[str] = field(default_factory=list)


def check_request(request: BuildRequest):
    """Validate what can be validated before any work: model, backend, precision, method, weights."""
    spec = request.resolved_spec()
    backend = get_backend(request.backend)
    if request.precision not in backend.precisions:
        raise PTQError(f"backend {backend.name} builds {', '.join(backend.precisions)}, not '{request.precision}'")
    if request.precision == "int8":
        if request.method is not None and request.method not in backend.methods:
            raise PTQError(f"unknown calibration method '{request.method}' for {backend.name}: "
                           f"choose one of {', '.join(backend.methods)}")
        if request.calib is None:
            raise PTQError("INT8 needs a calibration folder: pass --calib FOLDER (unlabeled volumes)")
    if request.max_drop is not None and not 0 <= request.max_drop < 1:
        raise PTQError(f"--max-drop must be a fraction between 0 and 1, got {request.max_drop}")
    if request.batch_size < 1:
        raise PTQError("--batch must be at least 1")
    random_init = request.allow_random_weights and request.weights is None  # speed benchmarks only
    weights_path = None if random_init else resolve_weights(spec, request.weights)
    return spec, backend, weights_path


def build_engine(request: BuildRequest, out: str | Path | None = None, cache_root: str | Path | None = None) -> BuildResult:
    """Build (or reuse from the cache) the engine described by ``request``; write it to ``out``."""
    spec, backend, weights_path = check_request(request)
    network = load_network(spec, weights_path)  # fails early on weights that do not fit
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    calibration = None
    if request.precision == "int8" or request.calib is not None:
        calibration = build_calibration_set(request.calib, spec, request.patches_per_volume, seed=request.seed,
                                            cache_dir=cache_root / "calibration", progress=request.progress)
    weights_sha256 = file_sha256(weights_path) if weights_path else None
    key = cache_key(weights=weights_sha256 or "random-init", spec=spec.fingerprint(),
                    calibration=calibration.set_hash if calibration and request.precision == "int8" else None,
                    method=request.method or backend.default_method, max_drop=request.max_drop, backend=backend.name,
                    backend_version=backend.version(), precision=request.precision, batch=request.batch_size,
                    keep_float=sorted(request.keep_float), patches=request.patches_per_volume, seed=request.seed)
    cached = cache_root / "engines" / key
    target = Path(out) if out else cached
    for candidate in (target, cached):
        manifest = _finished_engine(candidate)
        if manifest.get("cache_key") == key:
            if candidate != target:
                copy_engine(candidate, target)
            log.info("engine cache hit: %s", candidate)
            return BuildResult(target, manifest, cache_hit=True)
    weights = {"file": Path(weights_path).name if weights_path else None, "sha256": weights_sha256}
    manifest, warnings = _build_into(target, request, spec, backend, network, weights, calibration, key)
    if target != cached:
        copy_engine(target, cached)
    return BuildResult(target, manifest, cache_hit=False, warnings=warnings)


def _finished_engine(folder: Path) -> dict:
    """The manifest of a sound engine in ``folder``; {} for none, an older format or a damaged one (rebuilt)."""
    if not (folder / "manifest.json").is_file():
        return {}
    try:
        manifest = read_manifest(folder)
        verify_engine_files(folder, manifest)
    except PTQError as exc:
        log.info("not reusing %s: %s", folder, exc)
        return {}
    return manifest


def _build_into(target: Path, request: BuildRequest, spec: ModelSpec, backend, network, weights: dict,
                calibration: CalibrationSet | None, key: str) -> tuple[dict, list[str]]:
    started = time.perf_counter()
    tmp = temporary_dir_for(target)
    try:
        with tempfile.TemporaryDirectory(prefix="ptqseg-export-") as scratch:
            onnx_path = export_onnx(network, Path(scratch) / "fp32.onnx", spec.roi_size, spec.in_channels, request.batch_size)
            graph = FP32Graph(spec, network, onnx_path, request.batch_size)
            calib = calibration.calibration if calibration is not None else None
            held_out = calibration.held_out if calibration is not None else None
            with stage("quantize" if request.precision == "int8" else "compile"):
                engine = backend.build(graph, calib, request.precision, request.options(), held_out_patches=held_out)
            files = engine.save(tmp)
            if sorted(files) != sorted(ENGINE_FILES[backend.name]):
                raise RuntimeError(f"backend {backend.name} wrote {files}, not its engine layout {ENGINE_FILES[backend.name]}")
            fp32_bytes = onnx_path.stat().st_size
        with stage("accuracy_check"):
            accuracy, warnings = _accuracy_check(engine, network, calibration, spec, request)
        manifest = {
            "format_version": FORMAT_VERSION,
            "engine_builder_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cache_key": key,
            "spec": spec.to_dict(),
            "backend": backend.name,
            "backend_version": backend.version(),
            "precision": request.precision,
            "runs_as": engine.runtime_report(),
            "batch_size": request.batch_size,
            "input_shape": [request.batch_size, spec.in_channels, *spec.roi_size],
            "input_name": "image",
            "weights": weights,
            "calibration": _calibration_record(calibration, request, backend),
            "kept_in_float": engine.kept_in_float(),
            "files": files,
            "sizes": {"engine_bytes": folder_size(tmp, files), "fp32_onnx_bytes": fp32_bytes},
            "accuracy": accuracy,
            "build_seconds": round(time.perf_counter() - started, 2),
            "machine": {"cpu": cpu_name(), "system": platform.platform()},
        }
        write_manifest(tmp, manifest)
        commit_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, warnings


def _calibration_record(calibration: CalibrationSet | None, request: BuildRequest, backend) -> dict | None:
    if calibration is None:
        return None
    return {"method": (request.method or backend.default_method) if request.precision == "int8" else None,
            "set_hash": calibration.set_hash, "sources": calibration.sources,
            "patches": int(len(calibration.calibration)), "held_out_patches": int(calibration.n_held_out),
            "skipped": [list(s) for s in calibration.skipped], "max_drop": request.max_drop,
            "keep_float": list(request.keep_float), "seed": request.seed}


def _accuracy_check(engine, network, calibration, spec: ModelSpec, request: BuildRequest) -> tuple[dict | None, list[str]]:
    """Engine vs the torch FP32 network on held-out calibration patches."""
    import torch

    if calibration is None or calibration.n_held_out == 0:
        return None, []
    patches = calibration.held_out
    with torch.inference_mode():
        reference = np.concatenate([network(torch.from_numpy(p[None])).numpy() for p in patches])
    logits = np.concatenate([engine.infer(patches[i : i + engine.batch_size]) for i in range(0, len(patches), engine.batch_size)])
    report = agreement_report(reference, logits, spec.label_names, request.min_agreement)
    warnings = []
    if not report["passed"]:
        warnings.append(f"{request.precision} agrees with FP32 on {report['argmax_agreement']:.3%} of held-out voxels, "
                        f"below {request.min_agreement:.1%}: try another --method, more calibration volumes, or --max-drop 0.01")
        log.warning(warnings[-1])
    return report, warnings


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


def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
