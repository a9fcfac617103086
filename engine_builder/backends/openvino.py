"""OpenVINO on the CPU: FP32 (f32 precision hint), bf16 (where the CPU has it) and INT8 quantized by NNCF.

Why OpenVINO + NNCF and not ONNX Runtime: measured on 2 cores (docs/benchmarks, ENVIRONMENT.md), NNCF's
INT8 OpenVINO model runs MONAI UNet/SegResNet/nnU-Net windows 5-15x faster than torch FP32, while ONNX
Runtime INT8 is no faster than FP32; and the quantizer must be the runtime's own (OpenVINO running another
tool's Q/DQ placement is 2-9x slower). NNCF quantizes the OpenVINO model (FakeQuantize nodes), which the CPU
plugin fuses into int8 convolutions: weights per-channel symmetric, activations per-tensor.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..artifact import default_cache_root
from ..errors import PTQError
from .base import Backend, BuildOptions, Engine, FP32Graph, pad_batch
from .privacy import disable_telemetry

disable_telemetry()
import openvino as ov  # noqa: E402

log = logging.getLogger(__name__)
MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
REFERENCE_FILE = "reference.xml"
REFERENCE_WEIGHTS = "reference.bin"
# NNCF's presets: symmetric activations (performance) or asymmetric ones (mixed); weights symmetric in both.
PRESETS = {"mixed": "MIXED", "performance": "PERFORMANCE"}
BIAS_CORRECTION = ("fast", "full", "none")
#: Operations accuracy control may put back in float (NNCF reverts one per iteration, most harmful first).
MAX_REVERTED = 8

# NNCF's activation range estimators, by the name the CLI exposes.
METHODS = {
    "minmax": "MINMAX",
    "mean_minmax": "MEAN_MINMAX",
    "median_minmax": "MEDIAN_MINMAX",
    "mean_no_outliers_minmax": "MEAN_NO_OUTLIERS_MINMAX",
    "percentile": "MEAN_QUANTILE",
    "histogram": "HISTOGRAM",
}


#: Layer types (prefixes of the CPU plugin's names) whose time ``profile`` counts as convolution and as
#: matrix-multiplication work: the base of the int8 time share. ``FullyConnected`` covers the plugin's int8 variants
#: (``FullyConnectedQuantizedLegacy``); attention fused into one ScaledDotProductAttention layer counts as matmul work.
CONV_TYPES = ("Convolution", "ConvolutionBackpropData", "Deconvolution", "GroupConvolution")
MATMUL_TYPES = ("FullyConnected", "MatMul", "ScaledDotProductAttention")
#: Graph operations that NNCF never quantizes and that run in float in an INT8 engine (what "stays in float" means
#: beyond the convolutions and matmuls it left out).
FLOAT_ONLY_TYPES = ("MVN", "Softmax", "Gelu", "ScaledDotProductAttention", "NormalizeL2", "Exp")


def cpu_has_bf16() -> bool:
    """True when OpenVINO's CPU plugin offers bf16 inference (AMX or AVX512-BF16)."""
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


class OpenVINOEngine(Engine):
    backend = "openvino"

    def __init__(self, model, precision: str, batch_size: int, threads: int | None = None, cache_dir: Path | None = None):
        self.model = model
        self.precision = precision
        self.batch_size = batch_size
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.config = dict(config)
        self.threads, self.cache_dir = threads, cache_dir
        if cache_dir is not None:
            # OpenVINO's compiled-model cache: a second process opening the same engine skips most of the
            # compilation (measured 0.8-1.2 s -> 0.3-0.45 s for the demo INT8 engine on 2 cores).
            config["CACHE_DIR"] = str(cache_dir)
        self.compiled = core.compile_model(model, "CPU", config)
        self._request = self.compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self._run(batch), dtype=np.float32, copy=True)

    def with_window(self, roi) -> "OpenVINOEngine":
        """The same network compiled for windows of ``roi`` voxels (a fully convolutional network runs on any size
        its strides divide; instance normalisation makes its outputs depend on the size, so measure before use)."""
        model = self.model.clone()
        shape = list(model.inputs[0].get_shape())
        try:
            model.reshape([*shape[:2], *(int(r) for r in roi)])
            return OpenVINOEngine(model, self.precision, self.batch_size, self.threads, self.cache_dir)
        except RuntimeError as exc:  # e.g. a Reshape with a constant target shape inside the graph
            raise PTQError(f"this {self.precision} graph cannot take {list(roi)} windows ({_first_line(exc)})") from None

    def infer_torch(self, batch):
        """Logits as a view of the request's output buffer, valid until the next call.

        MONAI's sliding window folds each batch into its accumulator before asking for the next one, so the
        copy ``infer`` makes (28 MB per 8-class 96^3 window, 0.5 s over a chest CT's 75 windows) is skipped.
        """
        import torch

        return torch.from_numpy(self._run(batch.detach().cpu().numpy()))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        inputs = pad_batch(np.ascontiguousarray(batch, dtype=np.float32), self.batch_size)
        result = self._request.infer({0: inputs}, share_inputs=True, share_outputs=True)
        return result[0][: len(batch)]

    def save(self, folder: Path) -> list[str]:
        # An FP32 engine keeps FP32 weights (save_model would halve them otherwise). In an INT8 engine the
        # few weights NNCF leaves in float (ConvTranspose, biases) are stored as FP16 and widened at load.
        ov.save_model(self.model, str(Path(folder) / MODEL_FILE), compress_to_fp16=self.precision == "int8")
        return [MODEL_FILE, WEIGHTS_FILE]

    def save_as_reference(self, folder: Path) -> list[str]:
        """Write this FP32 engine's graph as the verification reference of a quantized engine: weights stored as
        fp16 (half the FP32 size), computed in f32."""
        ov.save_model(self.model, str(Path(folder) / REFERENCE_FILE), compress_to_fp16=True)
        return [REFERENCE_FILE, REFERENCE_WEIGHTS]

    def runtime_report(self, window: np.ndarray | None = None) -> dict:
        """Executed layers per runtime precision, from the compiled model (what really runs).

        With a ``window`` (a batch of input patches), also where that window's time goes (``profile``):
        ``int8_conv_time_share`` (the share of convolution time in int8 kernels, 0..1) and ``profile``.
        """
        by_precision: Counter = Counter()
        convolutions: Counter = Counter()
        matmuls: Counter = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            layer_type = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            if layer_type in ("Input", "Output", "Parameter", "Result", "Const", "Constant"):
                continue
            by_precision[precision] += 1
            if layer_type in ("Convolution", "Deconvolution"):
                convolutions[precision] += 1
            if layer_type.startswith(MATMUL_TYPES):
                matmuls[precision] += 1
        report = {"layers_by_precision": dict(by_precision), "convolutions_by_precision": dict(convolutions)}
        if window is not None:
            profile = self.profile(window)
            report["int8_conv_time_share"] = profile.pop("int8_conv_share")
            report["profile"] = profile
        if matmuls:
            report["matmuls_by_precision"] = dict(matmuls)
        if self.precision == "int8":
            report["float_ops"] = self.float_ops()
        return report

    def profile(self, window: np.ndarray, repeats: int = 3) -> dict:
        """Where one window's time goes (OpenVINO PERF_COUNT on a second compilation of the same model).

        Returns, per window: ``conv_ms`` (convolutions and transposed convolutions, ``CONV_TYPES``) and
        ``int8_conv_share`` (the part of it in int8 kernels: by time, not by count); ``matmul_ms`` (fully connected
        layers, matmuls and fused attention, ``MATMUL_TYPES``) and ``int8_matmul_share``; ``int8_share`` (the int8
        part of convolution + matmul time together; None when the network has neither); ``window_ms`` (sum of all
        layers) and ``by_layer_type`` {"<type> <kernel>": ms}, the 12 largest.
        """
        compiled = ov.Core().compile_model(self.model, "CPU", {**self.config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        inputs = {0: pad_batch(np.ascontiguousarray(window, dtype=np.float32), self.batch_size)}
        request.infer(inputs)
        totals: Counter = Counter()
        for _ in range(repeats):
            request.infer(inputs)
            for info in request.get_profiling_info():
                totals[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1e3 / repeats
        conv_ms, conv_int8 = _int8_time(totals, CONV_TYPES)
        matmul_ms, matmul_int8 = _int8_time(totals, MATMUL_TYPES)
        by_type: Counter = Counter()
        for (node_type, kernel), ms in totals.items():
            by_type[f"{node_type} {kernel}"] += ms
        both = conv_ms + matmul_ms
        return {"conv_ms": round(conv_ms, 2), "int8_conv_share": _share(conv_int8, conv_ms),
                "matmul_ms": round(matmul_ms, 2), "int8_matmul_share": _share(matmul_int8, matmul_ms),
                "int8_share": _share(conv_int8 + matmul_int8, both), "window_ms": round(sum(totals.values()), 2),
                "by_layer_type": {k: round(v, 2) for k, v in by_type.most_common(12)}}

    def int8_time_share(self, window: np.ndarray) -> float | None:
        """The int8 share of one window's convolution + matmul time (``profile``'s ``int8_share``)."""
        return self.profile(window)["int8_share"]

    def kept_in_float(self) -> list[str]:
        """Convolutions of the saved model with no FakeQuantize on their data input, matmuls with an input that is
        neither quantized (FakeQuantize) nor int8 weights, and fused attention (which NNCF does not quantize)."""
        if self.precision != "int8":
            return []
        kept = []
        for op in self.model.get_ordered_ops():
            kind = op.get_type_name()
            if kind in ("Convolution", "ConvolutionBackpropData", "GroupConvolution"):
                if not _int8_input(op.input_value(0).get_node()):
                    kept.append(op.get_friendly_name())
            elif kind == "MatMul" and not all(_int8_input(op.input_value(i).get_node()) for i in range(2)):
                kept.append(op.get_friendly_name())
            elif kind == "ScaledDotProductAttention":
                kept.append(op.get_friendly_name())
        return kept

    def float_ops(self) -> dict[str, int]:
        """What runs in float in this INT8 graph, by operation type: the kept convolutions/matmuls/attention
        (``kept_in_float``) and the operations NNCF never quantizes (``FLOAT_ONLY_TYPES``: normalisations, softmax,
        GELU). Empty for float engines."""
        if self.precision != "int8":
            return {}
        kept = set(self.kept_in_float())
        counts: Counter = Counter()
        for op in self.model.get_ordered_ops():
            kind = op.get_type_name()
            if op.get_friendly_name() in kept or kind in FLOAT_ONLY_TYPES:
                counts[kind] += 1
        return dict(sorted(counts.items()))


class OpenVINOBackend(Backend):
    name = "openvino"
    precisions = ("int8", "fp32", "bf16")
    methods = tuple(METHODS)
    presets = tuple(PRESETS)
    # Chosen by the leave-one-volume-out study over the shared real CTs (docs/quantization.md): averaging
    # per-patch extremes ignores the rare outlier patch that stretches a global min-max range, and asymmetric
    # activations (mixed) fit the mostly-positive PReLU outputs of U-Nets.
    default_method = "mean_minmax"
    default_preset = "mixed"
    supports_accuracy_control = True

    def version(self) -> str:
        # nncf's version from its metadata: importing nncf costs seconds that segmenting does not need.
        from importlib.metadata import version

        return f"openvino {ov.__version__.split('-')[0]}, nncf {version('nncf')}"

    def build(self, graph: FP32Graph, calibration_patches, precision: str, options: BuildOptions) -> Engine:
        if precision not in self.precisions:
            raise PTQError(f"backend openvino builds {', '.join(self.precisions)}, not '{precision}'")
        if precision == "bf16" and not cpu_has_bf16():
            raise PTQError("this CPU has no bf16 support (AMX/AVX512-BF16): build fp32 or int8 instead")
        # The INT8 graph takes the sub-pixel form of transposed convolutions, which NNCF and the CPU plugin run
        # in int8; in f32 that form is slower (measured 1.24x), so float engines keep the original graph.
        onnx_path = graph.subpixel_onnx_path if precision == "int8" and graph.subpixel_onnx_path else graph.onnx_path
        # convert_model (not read_model): its MOC passes fold the static-shape subgraphs of the ONNX export
        # (ShapeOf/Broadcast around normalisations), a 4x smaller graph that compiles faster.
        model = ov.convert_model(str(onnx_path))
        if precision == "int8":
            if calibration_patches is None or len(calibration_patches) == 0:
                raise PTQError("INT8 needs calibration patches: pass --calib FOLDER")
            model = self._quantize(model, graph, calibration_patches, options)
        return OpenVINOEngine(model, precision, graph.batch_size, options.threads)

    def load(self, folder: Path, manifest: dict, options: BuildOptions) -> Engine:
        model = read_engine_model(Path(folder), MODEL_FILE)
        check_graph_shapes(model, manifest, folder)
        return OpenVINOEngine(model, manifest["precision"], int(manifest["batch_size"]), options.threads, compiled_cache())

    def load_reference(self, folder: Path, manifest: dict, options: BuildOptions) -> Engine:
        """The FP32 reference graph a quantized engine carries (for ``ptqseg segment --verify``)."""
        model = read_engine_model(Path(folder), REFERENCE_FILE)
        check_graph_shapes(model, manifest, folder)
        return OpenVINOEngine(model, "fp32", int(manifest["batch_size"]), options.threads, compiled_cache())

    def _quantize(self, model, graph: FP32Graph, calibration_patches, options: BuildOptions):
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        method = options.method or self.default_method
        preset = options.preset or self.default_preset
        if method not in METHODS:
            raise PTQError(f"unknown calibration method '{method}' for openvino: choose one of {', '.join(METHODS)}")
        if preset not in PRESETS:
            raise PTQError(f"unknown quantization preset '{preset}' for openvino: choose one of {', '.join(PRESETS)}")
        if options.bias_correction not in BIAS_CORRECTION:
            raise PTQError(f"unknown bias correction '{options.bias_correction}': choose one of {', '.join(BIAS_CORRECTION)}")
        batches = _batches(calibration_patches, graph.batch_size)
        advanced = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, METHODS[method]),
            disable_bias_correction=options.bias_correction == "none")
        common = dict(preset=getattr(nncf.QuantizationPreset, PRESETS[preset]), target_device=nncf.TargetDevice.CPU,
                      subset_size=len(batches), fast_bias_correction=options.bias_correction != "full",
                      ignored_scope=_ignored(options.keep_float), model_type=_model_type(options.network_kind))
        with _nncf_progress(options.progress):
            if options.validation is None:
                return nncf.quantize(model, nncf.Dataset(batches), advanced_parameters=advanced, **common)
            validation = options.validation
            items = list(zip(_batches(validation.windows, graph.batch_size),
                             _batches(validation.reference_labels, graph.batch_size)))

            def agreement(compiled_model, data) -> float:
                """Foreground agreement with the FP32 labels over the validation windows."""
                labels = [compiled_model(window)[0].argmax(1) for window, _ in data]
                return validation.agreement(np.concatenate(labels)[: len(validation.windows)])

            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            # Each reverted operation costs a re-evaluation of the validation windows: cap how many may go back
            # to float (the estimate measured afterwards says what the capped result is worth).
            restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=options.extra.get("max_reverted", MAX_REVERTED))
            return nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(batches), nncf.Dataset(items, lambda item: item[0]), agreement,
                max_drop=float(options.max_drop if options.max_drop is not None else 0.01),
                drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced,
                advanced_accuracy_restorer_parameters=restorer, **common)


def compiled_cache() -> Path | None:
    """Where OpenVINO keeps compiled engines between processes (``<cache>/openvino``); None if not writable."""
    folder = default_cache_root() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def read_engine_model(folder: Path, name: str):
    try:
        return ov.Core().read_model(str(folder / name))
    except RuntimeError as exc:
        raise PTQError(f"damaged engine {folder}: OpenVINO cannot read {name} "
                       f"({_first_line(exc)}): rebuild the engine with 'ptqseg build'") from None


def _int8_time(totals: Counter, layer_types: tuple[str, ...]) -> tuple[float, float]:
    """(all ms, int8-kernel ms) of the profiled layers of ``layer_types``."""
    selected = {key: ms for key, ms in totals.items() if key[0].startswith(layer_types)}
    return sum(selected.values()), sum(ms for (_, kernel), ms in selected.items() if _is_int8_kernel(kernel))


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


#: Operations between a quantized tensor and its consumer that keep it int8 (layout changes, slicing q/k/v out of
#: one tensor, NNCF's weight dequantization chain).
_INT8_PRESERVING = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Gather",
                    "Split", "VariadicSplit", "Slice", "StridedSlice", "Pad")  # Slice/Pad: the sub-pixel phases' inputs


def _int8_input(node) -> bool:
    """An operation input that runs in int8: a FakeQuantize, a concatenation of such inputs (a U-Net's skip +
    upsampled features: the CPU plugin concatenates in int8), or weights stored as an int8 constant (NNCF's weight
    compression: Constant i8/u8 -> Convert -> [Subtract] -> Multiply), through ``_INT8_PRESERVING`` operations."""
    while True:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Concat":
            return all(_int8_input(node.input_value(i).get_node()) for i in range(node.get_input_size()))
        if kind == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8")
        if kind not in _INT8_PRESERVING:
            return False
        node = node.input_value(0).get_node()


def _is_int8_kernel(kernel: str) -> bool:
    """oneDNN kernel names end in the precision they compute in (``brgconv_avx2_I8``, ``jit_avx512_f32``)."""
    lowered = kernel.lower()
    return lowered.endswith(("_i8", "_u8")) or "_i8_" in lowered or "_u8_" in lowered


@contextmanager
def _nncf_progress(show: bool):
    """NNCF draws its own (rich) progress bars: silence them unless the user sees ptqseg's own bars."""
    from rich import get_console

    from ..progress import mode

    console = get_console()
    quiet_before = console.quiet
    console.quiet = quiet_before or not (show and mode() == "tqdm")
    try:
        yield
    finally:
        console.quiet = quiet_before


def check_graph_shapes(model, manifest: dict, folder) -> None:
    """The graph's one input and one output have the shapes the manifest promises: (batch, C, *roi) in,
    (batch, labels, *roi) out."""
    expected_in = list(manifest["input_shape"])
    expected_out = [expected_in[0], len(manifest["spec"]["labels"]), *expected_in[2:]]
    for kind, ports, expected in (("input", model.inputs, expected_in), ("output", model.outputs, expected_out)):
        shapes = [str(port.get_partial_shape()) for port in ports]
        if len(ports) != 1 or not ports[0].get_partial_shape().is_static or list(ports[0].get_shape()) != expected:
            raise PTQError(f"engine {folder}: the graph's {kind} is {', '.join(shapes)}, the manifest says {expected}: "
                           "rebuild the engine with 'ptqseg build'")


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:160]


def _batches(patches: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [pad_batch(patches[i : i + batch_size], batch_size) for i in range(0, len(patches), batch_size)]


def _model_type(network_kind: str):
    """NNCF's transformer model type for networks with attention (MatMul inputs quantized, Softmax/LayerNorm/GELU
    patterns left in float, SmoothQuant on the MatMuls); None (NNCF's default) for CNNs."""
    import nncf

    return nncf.ModelType.TRANSFORMER if network_kind == "transformer" else None


def _ignored(names):
    if not names:
        return None
    import nncf

    return nncf.IgnoredScope(names=list(names), validate=False)
