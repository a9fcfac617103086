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

from . import __version__
from .accuracy import assess
from .artifact import (FORMAT_VERSION, REFERENCE_FILES, cache_key, commit_dir, copy_engine, default_cache_root, engine_files,
                       read_manifest, temporary_dir_for, verify_engine_files, write_manifest)
from .backends import BuildOptions, FP32Graph, get_backend
from .backends.base import folder_size
from .calibration import CalibrationSet, build_calibration_set
from .errors import PTQError
from .estimate import unavailable
from .engines import open_engine, open_reference  # noqa: F401  (the public entry points live there)
from .export import export_onnx
from .model_source import CustomModel, ModelSource, resolve
from .models import get_spec
from .progress import stage
from .rewrite import subpixel_transposed_convolutions
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
    preset: str | None = None
    bias_correction: str = "fast"
    sampling: str = "body"
    max_drop: float | None = None
    accuracy_control: str = "auto"
    max_reverted: int = 8  # accuracy control: at most this many operations back in float (bounds the build time)
    estimate: bool = True  # the held-out-volume estimate of a quantized engine (off: "not measured", a quicker build)
    batch_size: int = 1
    patches_per_volume: int = 8
    seed: int = 0
    min_agreement: float = 0.98
    keep_float: tuple[str, ...] = ()
    threads: int | None = None
    device: str = "cpu"
    allow_random_weights: bool = False
    download: bool = False
    progress: bool = True

    def resolved_spec(self) -> ModelSpec:
        """The spec of a registry name or ModelSpec (a CustomModel's spec comes from ``model_source.resolve``)."""
        return self.model if isinstance(self.model, ModelSpec) else get_spec(self.model)

    def options(self, spec: ModelSpec) -> BuildOptions:
        """The backend options for building ``spec`` (its network kind picks the quantizer's model type)."""
        return BuildOptions(method=self.method, preset=self.preset, bias_correction=self.bias_correction,
                            max_drop=self.max_drop, threads=self.threads, device=self.device,
                            keep_float=tuple(self.keep_float), progress=self.progress, network_kind=spec.network_kind,
                            extra={"max_reverted": self.max_reverted})


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
    if request.precision == "int8" and request.preset is not None and request.preset not in getattr(backend, "presets", ()):
        raise PTQError(f"unknown quantization preset '{request.preset}' for {backend.name}: "
                       f"choose one of {', '.join(getattr(backend, 'presets', ())) or 'none (it has no presets)'}")
    if request.max_drop is not None and not 0 <= request.max_drop < 1:
        raise PTQError(f"--max-drop must be a fraction between 0 and 1, got {request.max_drop}")
    if request.max_reverted < 1:
        raise PTQError(f"--max-reverted must be at least 1, got {request.max_reverted}")
    if request.max_drop is not None and not request.estimate:
        raise PTQError("--max-drop (accuracy control) is judged by the held-out estimate: drop --no-estimate")
    if request.accuracy_control not in ("auto", "off"):
        raise PTQError(f"--accuracy-control must be auto or off, not '{request.accuracy_control}'")
    if not 0 < request.min_agreement <= 1:
        raise PTQError(f"--min-agreement must be a fraction between 0 and 1, got {request.min_agreement}")
    if request.batch_size < 1:
        raise PTQError("--batch must be at least 1")
    source = resolve(request.model, request.weights, request.batch_size, request.allow_random_weights, request.download)
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
                                            cache_dir=cache_root / "calibration", progress=request.progress,
                                            sampling=request.sampling)
    key = build_key(request, source, backend, calibration)
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


def build_key(request: BuildRequest, source: ModelSource, backend, calibration: CalibrationSet | None) -> str:
    """The engine cache key: everything in ``request`` that changes the engine or its manifest."""
    quantized = request.precision == "int8"
    model_key = ("random-init" if source.random_weights else source.files["weights"]) if source.kind == "registry" else \
        {"source": source.kind, "files": source.files}
    return cache_key(weights=model_key, spec=source.spec.fingerprint(),
                     calibration=calibration.set_hash if calibration else None,
                     method=request.method or backend.default_method, preset=request.preset or _default_preset(backend),
                     bias_correction=request.bias_correction, sampling=request.sampling, max_drop=request.max_drop,
                     accuracy_control=request.accuracy_control if quantized else None,
                     min_agreement=request.min_agreement, max_reverted=request.max_reverted if quantized else None,
                     estimate=request.estimate if request.precision != "fp32" else None,
                     backend=backend.name, backend_version=backend.version(), precision=request.precision,
                     batch=request.batch_size, keep_float=sorted(request.keep_float),
                     patches=request.patches_per_volume, seed=request.seed, format=FORMAT_VERSION)


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
                graph = with_subpixel_form(source.fp32_graph(scratch, request.batch_size), Path(scratch))
            options = request.options(spec)
            with stage("quantize" if request.precision == "int8" else "compile"):
                engine = backend.build(graph, calibration.patches if calibration else None, request.precision, options)
            assessment = _assess(backend, graph, calibration, engine, request, options,
                                 random_weights=source.random_weights)
            engine = assessment.engine
            files = engine.save(tmp)
            if assessment.reference is not None:
                files += assessment.reference.save_as_reference(tmp)
            expected = engine_files(backend.name, request.precision)
            if sorted(files) != sorted(expected):
                raise RuntimeError(f"backend {backend.name} wrote {files}, not its engine layout {expected}")
            fp32_bytes = graph.onnx_path.stat().st_size
        manifest = {
            "format_version": FORMAT_VERSION,
            "engine_builder_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cache_key": key,
            "spec": spec.to_dict(),
            "backend": backend.name,
            "backend_version": backend.version(),
            "precision": request.precision,
            "runs_as": engine.runtime_report(window=calibration.patches[:1] if calibration is not None else None),
            "batch_size": request.batch_size,
            "input_shape": [request.batch_size, spec.in_channels, *spec.roi_size],
            "input_name": "image",
            "weights": _weights_record(source),
            "source": source.record(),
            "calibration": _calibration_record(calibration, request, backend),
            "kept_in_float": engine.kept_in_float(),
            "files": files,
            "sizes": {"engine_bytes": folder_size(tmp, [f for f in files if f not in REFERENCE_FILES]),
                      "reference_bytes": folder_size(tmp, [f for f in files if f in REFERENCE_FILES]),
                      "fp32_onnx_bytes": fp32_bytes},
            "accuracy": assessment.accuracy,
            "accuracy_control": assessment.accuracy_control,
            "build_seconds": round(time.perf_counter() - started, 2),
            "machine": {"cpu": cpu_name(), "system": platform.platform()},
        }
        write_manifest(tmp, manifest)
        commit_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, assessment.warnings


def with_subpixel_form(graph: FP32Graph, folder: Path) -> FP32Graph:
    """``graph`` plus the ONNX export of its sub-pixel form, when it has a torch network with transposed
    convolutions (graph-only models keep their graph as it is)."""
    if graph.network is None:
        return graph
    rewritten, count = subpixel_transposed_convolutions(graph.network)
    if count:
        graph.subpixel_onnx_path = export_onnx(rewritten, folder / "fp32_subpixel.onnx", graph.spec.roi_size,
                                               graph.spec.in_channels, graph.batch_size)
    return graph


def _weights_record(source: ModelSource) -> dict:
    """The manifest's ``weights``: the registry model's weights file (its name and SHA-256), else the source's."""
    if source.kind == "registry":
        return {"file": source.weights_path.name if source.weights_path else None, "sha256": source.files.get("weights")}
    return {"file": None, "sha256": None, "source": source.kind}


@dataclass
class _Assessed:
    engine: object
    reference: object
    accuracy: dict | None
    accuracy_control: dict | None
    warnings: list[str]


def _assess(backend, graph: FP32Graph, calibration: CalibrationSet | None, engine, request: BuildRequest, options,
            random_weights: bool = False) -> _Assessed:
    """The held-out-volume estimate (and accuracy control) of a quantized engine; float engines need none."""
    if request.precision == "fp32" or calibration is None:
        return _Assessed(engine, None, None, None, [])
    reference = get_backend("openvino").build(graph, None, "fp32", BuildOptions(threads=request.threads, progress=False))
    keep = reference if request.precision == "int8" else None
    if random_weights:  # what INT8 changes in an untrained network says nothing about a trained one
        return _Assessed(engine, keep, unavailable("random weights (--random-init): this engine measures speed and "
                                                   "size only, not agreement"), None, [])
    if not request.estimate:
        return _Assessed(engine, keep, unavailable("built with --no-estimate: not measured at build time; "
                                                   "'ptqseg segment --verify N' checks each scan"), None, [])
    runnable = getattr(engine, "stitch_device", None) is None or torch_cuda_available()
    result = assess(backend, graph, calibration, request.precision, options, engine, reference, request.min_agreement,
                    request.accuracy_control, request.patches_per_volume, request.seed, runnable)
    return _Assessed(result.engine, keep, result.accuracy, result.accuracy_control, result.warnings)


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _default_preset(backend) -> str | None:
    return getattr(backend, "default_preset", None)


def _calibration_record(calibration: CalibrationSet | None, request: BuildRequest, backend) -> dict | None:
    if calibration is None:
        return None
    quantized = request.precision == "int8"
    return {"method": (request.method or backend.default_method) if quantized else None,
            "preset": (request.preset or _default_preset(backend)) if quantized else None,
            "bias_correction": request.bias_correction if quantized else None, "sampling": request.sampling,
            "set_hash": calibration.set_hash, "sources": calibration.names,
            "patches": int(len(calibration.patches)), "patches_per_volume": request.patches_per_volume,
            "skipped": [list(s) for s in calibration.skipped], "max_drop": request.max_drop,
            "accuracy_control": request.accuracy_control, "keep_float": list(request.keep_float), "seed": request.seed}


def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
