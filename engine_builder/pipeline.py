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
from .model_source import CustomModel, ModelSource, resolve
from .models import get_spec
from .progress import stage
from .spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class BuildRequest:
    """Everything that defines an engine. ``model`` is a registry name, a ModelSpec, or a user's model
    (``model_source.CustomModel``: ONNX/TorchScript + spec file, MONAI bundle, nnU-Net folder)."""

    model: str | ModelSpec | CustomModel
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
        """The spec of a registry name or ModelSpec (a CustomModel's spec comes from ``model_source.resolve``)."""
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


def check_request(request: BuildRequest) -> tuple[ModelSource, object]:
    """Validate what can be validated before any work: model (spec against graph, weights against network),
    backend, precision, method. Returns the resolved model source and the backend."""
    if not isinstance(request.model, CustomModel):
        request.resolved_spec()  # an unknown registry name is the first thing to say
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
    source = resolve(request.model, request.weights, request.batch_size, request.allow_random_weights)
    if backend.name == "torch" and source.spec.graph_only:
        raise PTQError("the torch backend needs a network definition PTQSegment knows, and a "
                       f"{source.kind} model is a graph: use --backend openvino")
    for note in source.notes:
        log.warning("%s", note)
    return source, backend


def build_engine(request: BuildRequest, out: str | Path | None = None, cache_root: str | Path | None = None) -> BuildResult:
    """Build (or reuse from the cache) the engine described by ``request``; write it to ``out``."""
    source, backend = check_request(request)
    spec = source.spec
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    calibration = None
    if request.precision == "int8" or request.calib is not None:
        calibration = build_calibration_set(request.calib, spec, request.patches_per_volume, seed=request.seed,
                                            cache_dir=cache_root / "calibration", progress=request.progress)
    # Registry models keep their key's form ("weights" = the weights' SHA-256), so their cached engines stay valid.
    model_key = source.files.get("weights", "random-init") if source.kind == "registry" else \
        {"source": source.kind, "files": source.files}
    key = cache_key(weights=model_key, spec=spec.fingerprint(),
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
    manifest, warnings = _build_into(target, request, source, backend, calibration, key)
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


def _build_into(target: Path, request: BuildRequest, source: ModelSource, backend,
                calibration: CalibrationSet | None, key: str) -> tuple[dict, list[str]]:
    started = time.perf_counter()
    spec = source.spec
    tmp = temporary_dir_for(target)
    try:
        with tempfile.TemporaryDirectory(prefix="ptqseg-export-") as scratch:
            with stage("export"):
                graph: FP32Graph = source.fp32_graph(scratch, request.batch_size)
            onnx_path = graph.onnx_path
            calib = calibration.calibration if calibration is not None else None
            held_out = calibration.held_out if calibration is not None else None
            with stage("quantize" if request.precision == "int8" else "compile"):
                engine = backend.build(graph, calib, request.precision, request.options(), held_out_patches=held_out)
            files = engine.save(tmp)
            if sorted(files) != sorted(ENGINE_FILES[backend.name]):
                raise RuntimeError(f"backend {backend.name} wrote {files}, not its engine layout {ENGINE_FILES[backend.name]}")
            fp32_bytes = onnx_path.stat().st_size
        with stage("accuracy_check"):
            accuracy, warnings = _accuracy_check(engine, graph.network, calibration, spec, request)
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
            "weights": _weights_record(source),
            "source": source.record(),
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


def _weights_record(source: ModelSource) -> dict:
    """The manifest's ``weights``: the registry model's weights file (its name and SHA-256), else the source's."""
    if source.kind == "registry":
        return {"file": source.weights_path.name if source.weights_path else None, "sha256": source.files.get("weights")}
    return {"file": None, "sha256": None, "source": source.kind}


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
    if network is None:  # a graph-only model: the build-time estimate against an FP32 engine replaces this
        log.info("no build-time accuracy check for a graph-only model yet")
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
