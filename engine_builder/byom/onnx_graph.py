"""A user's ONNX graph, checked against its spec and fixed to the engine's static shape.

Every backend wants one float32 input ``(batch, in_channels, *roi)`` and one float32 output
``(batch, labels, *roi)``. ``check_graph`` says in one line what does not fit (two inputs, a 2D network, the
wrong channel count, a spatial size other than the ROI, ...); ``fixed_graph`` writes a copy whose symbolic
dimensions are set (batch as asked, spatial dimensions to the ROI), whose input and output are named
``image`` and ``logits`` like every exported graph, re-checked by ``onnx.checker`` with full shape inference.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PTQError
from ..export import INPUT_NAME, OUTPUT_NAME
from ..spec import ModelSpec

_FLOAT = 1  # onnx.TensorProto.FLOAT


def load_graph(path: str | Path):
    """The ONNX model at ``path`` (with its external data, if any); one line for anything that is not ONNX."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise PTQError(f"ONNX file {path} not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001  protobuf raises DecodeError, onnx ValueError/OSError
        raise PTQError(f"{path.name} is not an ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


def _dims(value) -> list:
    """An input/output's dimensions: ints where static, the symbol (or None) where not."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _real_inputs(model) -> list:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def check_graph(model, spec: ModelSpec, batch: int, name: str) -> None:
    """Refuse a graph that cannot be ``spec``'s network, naming the problem and the spec field to change."""
    inputs, outputs = _real_inputs(model), list(model.graph.output)
    if len(inputs) != 1:
        raise PTQError(f"{name} has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); PTQSegment runs "
                       "graphs with one image input (batch, channels, x, y, z)")
    if len(outputs) != 1:
        raise PTQError(f"{name} has {len(outputs)} outputs ({', '.join(v.name for v in outputs)}); PTQSegment runs "
                       "graphs with one logits output (batch, labels, x, y, z): export without deep-supervision heads")
    for kind, value in (("input", inputs[0]), ("output", outputs[0])):
        if value.type.tensor_type.elem_type != _FLOAT:
            raise PTQError(f"{name}: the {kind} '{value.name}' is not float32; export the graph in float32")
    given, produced = _dims(inputs[0]), _dims(outputs[0])
    if len(given) != 5:
        raise PTQError(f"{name}: the input '{inputs[0].name}' has rank {len(given)}, not 5 (batch, channels, x, y, z): "
                       f"{'a 2D network' if len(given) == 4 else 'not a 3D network'}; PTQSegment runs 3D segmentation networks")
    if len(produced) != 5:
        raise PTQError(f"{name}: the output '{outputs[0].name}' has rank {len(produced)}, not 5 (batch, labels, x, y, z)")
    _check_dim(name, "input", given[1], spec.in_channels, "channels", "in_channels")
    _check_dim(name, "output", produced[1], len(spec.labels), "channels", "labels (one per output channel)")
    for axis, roi in enumerate(spec.roi_size):
        _check_dim(name, "input", given[2 + axis], roi, f"spatial size on axis {axis}", "roi_size")
        _check_dim(name, "output", produced[2 + axis], roi, f"spatial size on axis {axis}", "roi_size")
    for kind, dims in (("input", given), ("output", produced)):
        if isinstance(dims[0], int) and dims[0] not in (0, batch):
            raise PTQError(f"{name}: the {kind} has a fixed batch of {dims[0]}: build with --batch {dims[0]}")


def _check_dim(name: str, kind: str, value, expected: int, what: str, field: str) -> None:
    if isinstance(value, int) and value not in (0, expected):
        raise PTQError(f"{name}: the graph's {kind} has {value} {what}, the spec file says {expected}: "
                       f"fix the spec's '{field}'")


def fixed_graph(model, spec: ModelSpec, batch: int, out: Path, name: str) -> Path:
    """Write ``model`` with static dimensions (batch, spec channels, ROI) and canonical I/O names to ``out``."""
    import onnx

    check_graph(model, spec, batch, name)
    _drop_initializer_inputs(model)
    value_in, value_out = _real_inputs(model)[0], model.graph.output[0]
    _set_dims(value_in, [batch, spec.in_channels, *spec.roi_size])
    _set_dims(value_out, [batch, len(spec.labels), *spec.roi_size])
    _rename(model, value_in.name, INPUT_NAME)
    _rename(model, value_out.name, OUTPUT_NAME)
    del model.graph.value_info[:]  # stale intermediate shapes of symbolic dims; shape inference redoes them
    onnx.save(model, str(out))
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PTQError(f"{name} is not a valid graph at batch {batch} and ROI {list(spec.roi_size)} "
                       f"({str(exc).splitlines()[0][:200]})") from None
    return out


def _drop_initializer_inputs(model) -> None:
    """Remove graph inputs that are initializers (``keep_initializers_as_inputs`` exports list every weight as an
    input that may be overridden): the weights stay constants, the one image input remains."""
    initializers = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def _set_dims(value, dims: list[int]) -> None:
    shape = value.type.tensor_type.shape
    for dim, size in zip(shape.dim, dims):
        dim.Clear()
        dim.dim_value = int(size)


def _rename(model, old: str, new: str) -> None:
    """Rename a graph input/output and every reference to it."""
    if old == new:
        return
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name == old:
            value.name = new
