"""The graphs TensorRT builds from: explicit INT8 (Q/DQ) by NVIDIA ModelOpt, and FP16 by ModelOpt's AutoCast.

TensorRT 11 and TensorRT-RTX are strongly typed: there are no INT8/FP16 builder flags, the precision of
every layer comes from the ONNX graph. So the graph carries it:

- ``int8``: ``modelopt.onnx.quantization.quantize`` places QuantizeLinear/DequantizeLinear where TensorRT
  fuses them (inputs of Conv/ConvTranspose/MatMul/Gemm, per-tensor activations, per-output-channel weights),
  calibrated on the project's cached calibration patches (max or entropy). Everything else is cast to FP16
  by AutoCast, except the fragile ops in ``FP32_OPS`` (normalisation statistics, softmax). I/O stays float32.
- ``fp16``: AutoCast alone, same blocked ops, float32 I/O.
- ``fp32``: the exported graph unchanged.

When ModelOpt is not installed (or fails on a graph), NNCF's ONNX backend quantizes instead
(``nncf.quantize`` on the ONNX model, also emitting Q/DQ pairs); the report says which quantizer ran.
Hand-written graph surgery, only where neither tool does the job:
- ``keep_float_inputs``: ModelOpt quantizes a *tensor* once and every consumer reads the same DequantizeLinear,
  so a ``--keep-float`` node that shares its input with a quantized one (MONAI's residual units: the block
  input feeds both the first conv and the residual conv) would still read INT8. Such nodes are rewired to the
  float tensor in front of the QuantizeLinear.
- ``make_batch_dynamic``: marks the batch dimension of graphs that allow it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PTQError

log = logging.getLogger(__name__)

# ModelOpt's INT8 calibration methods by the name the CLI exposes.
METHODS = {"max": "max", "entropy": "entropy"}
DEFAULT_METHOD = "max"
# Ops kept in FP32 in a 16-bit graph: their statistics (mean/variance over a 96^3 window) or exponentials
# overflow or lose precision in FP16.
FP32_OPS = ["InstanceNormalization", "GroupNormalization", "BatchNormalization", "LayerNormalization",
            "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Div", "Exp"]
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Ops whose shape arguments are baked from the export batch: a graph with them keeps a static batch.
_SHAPE_OPS = {"Reshape", "Shape", "Expand", "Tile", "ConstantOfShape"}


@dataclass
class QDQReport:
    """What the graph says about each quantizable op: Q/DQ on its data input, weight axis, kept in float."""

    quantizer: str
    quantized: dict[str, int | None] = field(default_factory=dict)  # node name -> weight DQ axis
    kept_in_float: list[str] = field(default_factory=list)
    graph_dtypes: dict[str, int] = field(default_factory=dict)  # op outputs by element type name

    def as_dict(self) -> dict:
        return {"quantizer": self.quantizer, "quantized_ops": len(self.quantized),
                "kept_in_float": list(self.kept_in_float), "graph_tensor_types": dict(self.graph_dtypes)}


def modelopt_version() -> str | None:
    """ModelOpt's version, or None when ``modelopt.onnx`` cannot be imported."""
    try:
        import modelopt
        import modelopt.onnx.quantization  # noqa: F401  (the [onnx] dependencies are what usually fails)
    except Exception:  # noqa: BLE001  ImportError, or a broken optional dependency
        return None
    return str(modelopt.__version__)


def prepare_graph(fp32_onnx: Path, out: Path, precision: str, calibration_patches: np.ndarray | None,
                  method: str | None = None, keep_float: tuple[str, ...] = ()) -> QDQReport:
    """Write the graph TensorRT should build for ``precision`` (``int8``, ``fp16``, ``fp32``) to ``out``."""
    import onnx

    if precision == "int8":
        if calibration_patches is None or len(calibration_patches) == 0:
            raise PTQError("INT8 needs calibration patches: pass --calib FOLDER")
        method = method or DEFAULT_METHOD
        if method not in METHODS:
            raise PTQError(f"unknown calibration method '{method}' for tensorrt: choose one of {', '.join(METHODS)}")
        with scratch_dir() as folder:
            quantizer = _quantize_modelopt(folded_for_modelopt(fp32_onnx, Path(folder)), out,
                                           calibration_patches, method, keep_float)
        if quantizer is None:
            quantizer = _quantize_nncf(fp32_onnx, out, calibration_patches, keep_float)
        if keep_float:
            onnx.save(keep_float_inputs(onnx.load(str(out)), keep_float), str(out))
    elif precision == "fp16":
        model = _autocast_fp16(onnx.load(str(fp32_onnx)))
        onnx.save(model, str(out))
        quantizer = "none (ModelOpt AutoCast fp16)"
    elif precision == "fp32":
        onnx.save(onnx.load(str(fp32_onnx)), str(out))
        quantizer = "none"
    else:
        raise PTQError(f"tensorrt builds int8, fp16, fp32, not '{precision}'")
    return inspect_graph(onnx.load(str(out)), quantizer)


def folded_for_modelopt(fp32_onnx: Path, folder: Path) -> Path:
    """``fp32_onnx`` with its constant shape arithmetic folded, for ModelOpt, whose AutoCast clean-up is quadratic
    in the node count (SwinUNETR at the CI width: 9283 nodes, most of them shape computations and constants;
    scripts/modelopt_profile.py). Folding keeps node names and never stores a value larger than the constants it
    replaces (``constant_folding``), so ``--keep-float`` names stay valid and the stored constants stay about those
    of the export. The original
    is returned where the graph cannot be folded."""
    import onnx

    from .constant_folding import fold_constants

    try:
        model = onnx.load(str(fp32_onnx))
        before = len(model.graph.node)
        model = fold_constants(model)
        folded = folder / "folded.onnx"
        onnx.save(model, str(folded))
    except Exception as exc:  # noqa: BLE001  a graph the folder cannot handle: quantize the original
        log.info("graph not folded before ModelOpt (%s)", str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return fp32_onnx
    log.info("graph folded for ModelOpt: %d -> %d nodes", before, len(model.graph.node))
    return folded


def _quantize_modelopt(fp32_onnx: Path, out: Path, patches: np.ndarray, method: str, keep_float) -> str | None:
    version = modelopt_version()
    if version is None:
        log.warning("ModelOpt (nvidia-modelopt with onnx, onnx-graphsurgeon, onnxruntime) is not installed: "
                    "quantizing with NNCF's ONNX backend instead")
        return None
    from modelopt.onnx.quantization import quantize

    input_name = _input_name(fp32_onnx)
    try:
        quantize(str(fp32_onnx), quantize_mode="int8", calibration_data={input_name: np.ascontiguousarray(patches, np.float32)},
                 calibration_method=METHODS[method], calibration_eps=["cpu"], output_path=str(out),
                 nodes_to_exclude=list(keep_float) or None, high_precision_dtype="fp16",
                 op_types_to_exclude_fp16=FP32_OPS, log_level="WARNING")
    except Exception as exc:  # noqa: BLE001  any ModelOpt failure on this graph falls back to NNCF
        log.warning("ModelOpt could not quantize this graph (%s): quantizing with NNCF's ONNX backend instead",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return None
    return f"modelopt {version} ({method})"


def _quantize_nncf(fp32_onnx: Path, out: Path, patches: np.ndarray, keep_float) -> str:
    """NNCF's ONNX backend: Q/DQ pairs, per-channel symmetric weights; the rest stays FP32 (no AutoCast)."""
    import nncf
    import onnx

    input_name = _input_name(fp32_onnx)
    batch = onnx.load(str(fp32_onnx)).graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    items = [{input_name: np.ascontiguousarray(patches[i : i + batch], np.float32)}
             for i in range(0, len(patches) - batch + 1, batch)]
    ignored = nncf.IgnoredScope(names=list(keep_float), validate=False) if keep_float else None
    quantized = nncf.quantize(onnx.load(str(fp32_onnx)), nncf.Dataset(items), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(items), ignored_scope=ignored)
    onnx.save(quantized, str(out))
    return f"nncf {nncf.__version__} (onnx backend, minmax)"


def keep_float_inputs(model, names):
    """Rewire the named nodes' Q->DQ inputs to the float tensor before the Q; drop Q/DQ left without readers."""
    producer = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.name not in names:
            continue
        for i, tensor in enumerate(node.input):
            dq = producer.get(tensor)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    _drop_unread(model)
    return model


def _drop_unread(model) -> None:
    """Remove nodes none of whose outputs is read (repeatedly, so whole Q->DQ chains go)."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        read = {name for node in model.graph.node for name in node.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            return
        for node in dead:
            model.graph.node.remove(node)


def _autocast_fp16(model):
    try:
        from modelopt.onnx.autocast import convert_to_f16
    except Exception:  # noqa: BLE001
        raise PTQError("fp16 graphs for TensorRT need ModelOpt: pip install 'ptqsegment[tensorrt]' "
                       "(or [tensorrt-rtx])") from None
    return convert_to_f16(model, keep_io_types=True, op_block_list=FP32_OPS)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def inspect_graph(model, quantizer: str = "") -> QDQReport:
    """Per quantizable op: is its data input (input 0) fed by a DequantizeLinear, and on which weight axis."""
    import onnx

    producer = {output: node for node in model.graph.node for output in node.output}
    report = QDQReport(quantizer)
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        data = producer.get(node.input[0])
        if data is None or data.op_type != "DequantizeLinear":
            report.kept_in_float.append(node.name)
            continue
        weight = producer.get(node.input[1]) if len(node.input) > 1 else None
        axis = None
        if weight is not None and weight.op_type == "DequantizeLinear":
            axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        report.quantized[node.name] = axis
    value_types = {v.name: v.type.tensor_type.elem_type for v in
                   list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            name = onnx.TensorProto.DataType.Name(to)
            report.graph_dtypes[f"Cast->{name}"] = report.graph_dtypes.get(f"Cast->{name}", 0) + 1
    for value in list(model.graph.input) + list(model.graph.output):
        report.graph_dtypes[f"io:{value.name}"] = onnx.TensorProto.DataType.Name(value_types.get(value.name, 0))
    return report


def make_batch_dynamic(path: Path) -> bool:
    """Mark dim 0 of the graph's inputs/outputs as ``batch`` so one engine serves 1..N windows.

    Only for graphs whose shapes do not depend on the batch (no Reshape/Shape/...): the TorchScript export
    bakes the export batch into Reshape targets, so such graphs keep a static batch. Returns True if changed.
    """
    import onnx

    model = onnx.load(str(path))
    if any(node.op_type in _SHAPE_OPS for node in model.graph.node):
        return False
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # stale static shapes; TensorRT infers them again
    onnx.save(model, str(path))
    return True


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="ptqseg-trt-")
