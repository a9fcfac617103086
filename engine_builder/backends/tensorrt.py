"""TensorRT (10.x, 11.x) and TensorRT-RTX on NVIDIA GPUs: explicit INT8 (Q/DQ) graphs from ModelOpt.

Both libraries are strongly typed (no INT8/FP16 builder flags): ``modelopt_qdq.prepare_graph`` writes the
precision into the ONNX graph, and this module only parses, builds, serializes and runs it, with the same
calls on ``tensorrt`` and ``tensorrt_rtx_bindings``:

    build:   OnnxParser (every error with its node) -> optimization profile for the batch -> builder
             optimization level, workspace, timing cache (beside the engine cache) -> serialized plan
    runtime: deserialize -> check plan vs GPU and library (rebuild from the saved graph on mismatch)
             -> torch CUDA tensors bound by name -> execute_async_v3 on the current torch stream
             (optional CUDA-graph replay) -> engine inspector's per-layer precision in the manifest

What was verified where (docs/tensorrt.md): parsing and building run on a CPU-only machine with
TensorRT-RTX (CI builds every registry model); everything in ``PlanRunner`` and ``inspect_layers`` needs
a GPU that the library supports and has not been executed by this project yet.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifact import default_cache_root
from ..errors import PTQError
from ..files import atomic_write_bytes
from . import modelopt_qdq
from .base import Backend, BuildOptions, Engine, FP32Graph

log = logging.getLogger(__name__)
PLAN_FILE = "model.plan"
GRAPH_FILE = "model.onnx"  # the typed (Q/DQ / FP16) graph the plan was built from: rebuilds need it
REPORT_FILE = "tensorrt.json"
DEFAULT_WORKSPACE_MB = 4096
DEFAULT_OPTIMIZATION_LEVEL = 3
RTX_INT8_NOTE = ("TensorRT-RTX lists INT8 only as weight-only GEMM: the Q/DQ convolutions of this engine may run "
                 "in 16-bit; trust layers_by_precision, not the requested precision")


@dataclass(frozen=True)
class Library:
    """One TensorRT flavour: its module, its name, and what to install."""

    backend: str
    module: str
    label: str
    install: str

    def load(self):
        """The imported module, or one PTQError line saying what to install and naming the CPU fallback."""
        try:
            return importlib.import_module(self.module)
        except Exception as exc:  # noqa: BLE001  ImportError, or a wheel without its shared libraries
            reason = "is not installed" if isinstance(exc, ImportError) else f"cannot be loaded ({type(exc).__name__})"
            raise PTQError(f"{self.label} ({self.module}) {reason}: {self.install}; "
                           "on the CPU use --backend openvino") from None


TENSORRT = Library("tensorrt", "tensorrt", "TensorRT",
                   "pip install 'ptqsegment[tensorrt]' with tensorrt-cu12 (CUDA 12) or tensorrt-cu13 (CUDA 13)")
TENSORRT_RTX = Library("tensorrt-rtx", "tensorrt_rtx_bindings", "TensorRT-RTX",
                       "pip install 'ptqsegment[tensorrt-rtx]' (tensorrt-rtx-cu13-libs + tensorrt-rtx-cu13-bindings; "
                       "RTX GPUs: Ampere, Ada, Blackwell)")


def current_gpu() -> dict | None:
    """Name and compute capability of torch's current CUDA device, or None without one."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def _logger(trt):
    """A TensorRT logger that keeps error messages, so a failed build can say why."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))
                log.error("%s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("%s", msg)

    return Logger()


def parse_onnx(trt, path: Path, logger):
    """(builder, network, parser) for the ONNX file; a parse failure lists every error with its node."""
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10 needs it; 11 and TensorRT-RTX are strongly typed anyway
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PTQError(f"the ONNX parser rejected {Path(path).name}: " + "; ".join(errors))
    return builder, network, parser


def _describe_parser_error(error) -> str:
    node = error.node_name() or f"node #{error.node()}"
    return f"{node} ({error.node_operator()}): {error.desc()}"


def build_plan(trt, graph_path: Path, batch_size: int, options: BuildOptions, timing_cache: Path | None = None) -> bytes:
    """Serialized engine for the typed ONNX graph. Runs without a GPU with TensorRT-RTX (build only).

    ``options.extra``: ``optimization_level`` (0-5, default 3), ``workspace_mb`` (default 4096).
    """
    logger = _logger(trt)
    builder, network, _parser = parse_onnx(trt, graph_path, logger)
    config = builder.create_builder_config()
    config.builder_optimization_level = int(options.extra.get("optimization_level", DEFAULT_OPTIMIZATION_LEVEL))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.extra.get("workspace_mb", DEFAULT_WORKSPACE_MB)) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then reports per-layer precision
    _add_batch_profile(builder, network, config, batch_size)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=True)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PTQError(f"{trt.__name__} could not build {Path(graph_path).name}: " + ("; ".join(logger.errors[-3:]) or "no reason given"))
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _add_batch_profile(builder, network, config, batch_size: int) -> None:
    """Profile 1..batch_size (optimum batch_size) on inputs whose batch dimension is dynamic."""
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if shape[0] == -1:
            dynamic = True
            rest = shape[1:]
            profile.set_shape(tensor.name, (1, *rest), (batch_size, *rest), (batch_size, *rest))
    if dynamic:
        config.add_optimization_profile(profile)


def timing_cache_path(trt) -> Path:
    """One timing cache per library version and GPU, beside the engine cache."""
    gpu = current_gpu()
    device = gpu["compute_capability"].replace(".", "") if gpu else "nogpu"
    return default_cache_root() / "tensorrt" / f"timing-{trt.__name__}-{trt.__version__}-sm{device}.cache"


def layer_precisions(engine_information: str) -> dict:
    """Per-precision counts of executed layers and of convolutions from the inspector's JSON.

    A layer's precision is the data type of its first input as TensorRT formats it (e.g. ``Row major linear
    FP32``, ``Channel major FP16 format...``, ``... Int8 format``): for a convolution that is the precision its
    kernel reads.
    """
    layers = json.loads(engine_information).get("Layers", [])
    by_precision, convolutions = Counter(), Counter()
    for layer in layers:
        if not isinstance(layer, dict):
            continue  # LAYER_NAMES_ONLY engines list bare names
        inputs = layer.get("Inputs") or layer.get("Outputs") or [{}]
        precision = _precision_of(str(inputs[0].get("Format/Datatype", "")))
        by_precision[precision] += 1
        if "onv" in str(layer.get("LayerType", "")):  # Convolution, CaskConvolution, CaskDeconvolution, ...
            convolutions[precision] += 1
    return {"layers_by_precision": dict(by_precision), "convolutions_by_precision": dict(convolutions)}


def _precision_of(text: str) -> str:
    lowered = text.lower()
    for token, name in (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"),
                        ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"), ("int64", "int64")):
        if token in lowered:
            return name
    return "?"


# ---------------------------------------------------------------------------------------------------------
# GPU ONLY from here to the end of PlanRunner: needs a CUDA device supported by the library (TensorRT: any
# recent NVIDIA GPU; TensorRT-RTX: compute capability 8.0, 8.6, 8.9, 12.x). Not executed by CI.
# ---------------------------------------------------------------------------------------------------------
class PlanRunner:
    """A deserialized plan bound to static torch CUDA buffers; ``run`` executes on the current torch stream."""

    def __init__(self, trt, plan: bytes, batch_size: int, cuda_graph: bool = False):
        self.logger = _logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise PTQError("the TensorRT plan could not be deserialized: " + "; ".join(self.logger.errors[-2:]))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = (batch_size, *tuple(self.engine.get_tensor_shape(self.input_name))[1:])
        self.context.set_input_shape(self.input_name, shape)
        self.input = torch.zeros(shape, device="cuda", dtype=torch.float32)
        self.output = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address(self.input_name, self.input.data_ptr())
        self.context.set_tensor_address(self.output_name, self.output.data_ptr())
        self.use_cuda_graph = cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for ``batch`` (b <= batch_size) as a new CUDA tensor; no host copy for CUDA input."""
        n = len(batch)
        self.input[:n].copy_(batch, non_blocking=True)
        if n < len(self.input):
            self.input[n:].zero_()
        if self.use_cuda_graph:
            self._replay()
        elif not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise PTQError("TensorRT execute_async_v3 failed: " + "; ".join(self.logger.errors[-2:]))
        return self.output[:n].clone()

    def _replay(self) -> None:
        if self.graph is None:
            # One run outside capture lets TensorRT finish its lazy setup, which capture forbids.
            self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
            torch.cuda.current_stream().synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        self.graph.replay()

    def inspect(self, trt) -> dict:
        inspector = self.engine.create_engine_inspector()
        return layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
# --------------------------------------------------- end of GPU ONLY ---------------------------------------


class TensorRTEngine(Engine):
    """A serialized plan plus the typed graph it came from; runs once a supported GPU is present."""

    stitch_device = torch.device("cuda")  # logits come back on the GPU: stitch there

    def __init__(self, library: Library, plan: bytes, graph_bytes: bytes, precision: str, batch_size: int,
                 report: dict, cuda_graph: bool = False):
        self.library = library
        self.backend = library.backend
        self.plan = plan
        self.graph_bytes = graph_bytes
        self.precision = precision
        self.batch_size = batch_size
        self.report = report
        self.cuda_graph = cuda_graph
        self._runner: PlanRunner | None = None

    def runner(self) -> PlanRunner:
        if self._runner is None:
            gpu = current_gpu()
            if gpu is None:
                raise PTQError(f"this {self.library.label} engine needs an NVIDIA GPU and none is visible to torch: "
                               "on the CPU use --backend openvino")
            trt = self.library.load()
            self._runner = PlanRunner(trt, self.plan, self.batch_size, self.cuda_graph)
            self.report.update(self._runner.inspect(trt))
        return self._runner

    def infer_torch(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.runner().run(batch.to("cuda", torch.float32, non_blocking=True))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_torch(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).cpu().numpy()

    def save(self, folder: Path) -> list[str]:
        folder = Path(folder)
        (folder / PLAN_FILE).write_bytes(self.plan)
        (folder / GRAPH_FILE).write_bytes(self.graph_bytes)
        (folder / REPORT_FILE).write_text(json.dumps(self.report, indent=2))
        return [PLAN_FILE, GRAPH_FILE, REPORT_FILE]

    def runtime_report(self, window=None) -> dict:
        """Library, GPU, plan size, the graph's Q/DQ summary, and (after a GPU run) per-layer precision."""
        report = dict(self.report)
        if "layers_by_precision" not in report:
            report["layers_note"] = ("per-layer precision not inspected (no supported GPU at build time): "
                                     "the graph requests it, the engine has not confirmed it")
        return report

    def kept_in_float(self) -> list[str]:
        return list(self.report.get("graph", {}).get("kept_in_float", [])) if self.precision == "int8" else []


class TensorRTBackend(Backend):
    """``--backend tensorrt``: full TensorRT 10/11."""

    library = TENSORRT
    name = "tensorrt"
    precisions = ("int8", "fp16", "fp32")
    methods = tuple(modelopt_qdq.METHODS)
    default_method = modelopt_qdq.DEFAULT_METHOD

    def __init__(self):
        self.library.load()  # asking for a missing library fails here, in one line

    def version(self) -> str:
        trt = self.library.load()
        return f"{self.library.module} {trt.__version__}, modelopt {modelopt_qdq.modelopt_version() or 'absent'}"

    def build(self, graph: FP32Graph, calibration_patches, precision: str, options: BuildOptions) -> Engine:
        """Quantize (ModelOpt), build and return the engine.

        ``options.extra``: ``build_only`` (no GPU needed; the engine saves but cannot run), ``cuda_graph``,
        ``optimization_level``, ``workspace_mb``.
        """
        trt = self.library.load()
        build_only = bool(options.extra.get("build_only"))
        gpu = current_gpu()
        if gpu is None and not build_only:
            raise PTQError(f"{self.library.label} needs an NVIDIA GPU and torch sees none: on the CPU use --backend openvino")
        if precision not in self.precisions:
            raise PTQError(f"backend {self.name} builds {', '.join(self.precisions)}, not '{precision}'")
        with modelopt_qdq.scratch_dir() as scratch:
            typed = Path(scratch) / "typed.onnx"
            qdq = modelopt_qdq.prepare_graph(graph.onnx_path, typed, precision, calibration_patches, options.method,
                                             options.keep_float)
            dynamic_batch = modelopt_qdq.make_batch_dynamic(typed)
            cache = None if build_only and gpu is None else timing_cache_path(trt)
            plan = build_plan(trt, typed, graph.batch_size, options, cache)
            graph_bytes = typed.read_bytes()
        report = {"library": self.library.label, "library_module": trt.__name__, "library_version": trt.__version__,
                  "gpu": gpu or "none (built without a GPU: the library chose its default targets)",
                  "plan_bytes": len(plan), "dynamic_batch": dynamic_batch, "graph": qdq.as_dict(),
                  "requested_precision": precision}
        if self.library is TENSORRT_RTX and precision == "int8":
            report["int8_note"] = RTX_INT8_NOTE
        engine = TensorRTEngine(self.library, plan, graph_bytes, precision, graph.batch_size, report,
                                bool(options.extra.get("cuda_graph")))
        if gpu is not None:
            engine.runner()  # deserialize now: fails early, and fills the per-layer report
        return engine

    def load(self, folder: Path, manifest: dict, options: BuildOptions) -> Engine:
        folder = Path(folder)
        trt = self.library.load()
        try:
            report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            report = None
        if not isinstance(report, dict):
            raise PTQError(f"damaged engine {folder}: {REPORT_FILE} is not a report object: rebuild the engine")
        engine = TensorRTEngine(self.library, (folder / PLAN_FILE).read_bytes(), (folder / GRAPH_FILE).read_bytes(),
                                manifest["precision"], int(manifest["batch_size"]), report,
                                bool(options.extra.get("cuda_graph")))
        reason = plan_mismatch(report, trt.__version__, current_gpu())
        if reason:
            log.warning("rebuilding the %s plan in %s: %s", self.library.label, folder, reason)
            engine.plan = self._rebuild(trt, folder, engine, options)
            engine.report.update(library_version=trt.__version__, gpu=current_gpu(), plan_bytes=len(engine.plan))
        return engine

    def _rebuild(self, trt, folder: Path, engine: TensorRTEngine, options: BuildOptions) -> bytes:
        if current_gpu() is None:
            raise PTQError(f"{self.library.label} engines run on an NVIDIA GPU and torch sees none: on the CPU use --backend openvino")
        return build_plan(trt, folder / GRAPH_FILE, engine.batch_size, options, timing_cache_path(trt))


def plan_mismatch(report: dict, library_version: str, gpu: dict | None) -> str | None:
    """Why a saved plan cannot be trusted here (other library version or GPU), or None if it matches."""
    if report.get("library_version") != library_version:
        return f"built with {report.get('library_module')} {report.get('library_version')}, this machine has {library_version}"
    built_on = report.get("gpu")
    if isinstance(built_on, dict) and gpu is not None and built_on.get("compute_capability") != gpu["compute_capability"]:
        return f"built for compute capability {built_on['compute_capability']}, this GPU is {gpu['compute_capability']}"
    if not isinstance(built_on, dict) and gpu is not None:
        return "built without a GPU: rebuilding for this one"
    return None


class TensorRTRTXBackend(TensorRTBackend):
    """``--backend tensorrt-rtx``: TensorRT for RTX GPUs (same calls, builds on CPU-only machines too)."""

    library = TENSORRT_RTX
    name = "tensorrt-rtx"
