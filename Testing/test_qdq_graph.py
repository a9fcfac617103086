"""The Q/DQ (INT8) and FP16 graphs ModelOpt writes for TensorRT, checked without TensorRT.

Needs ModelOpt and ONNX Runtime (the [tensorrt] / [tensorrt-rtx] extras); skips with the reason otherwise.
The accuracy test runs ONNX Runtime (CPU) on the Q/DQ graph of the trained demo model over real CT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine_builder.backends import modelopt_qdq

pytestmark = pytest.mark.skipif(modelopt_qdq.modelopt_version() is None,
                                reason="ModelOpt (nvidia-modelopt + its onnx dependencies) is not installed: "
                                       "pip install 'ptqsegment[tensorrt-rtx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (comes with the [tensorrt-rtx] extra)")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
CT = REPO.parent / "shared" / "data" / "totalsegmentator" / "example_ct.nii.gz"
DEMO_WEIGHTS = REPO / "engine_builder" / "models" / "weights" / "demo_unet.pt"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo network (trained weights when present), its FP32 ONNX, and 96^3 calibration patches."""
    import torch

    from engine_builder.export import export_onnx
    from engine_builder.models import get_spec

    spec = get_spec("demo")
    network = spec.build_network().eval()
    trained = DEMO_WEIGHTS.is_file()
    if trained:
        from engine_builder.weights import load_network

        network = load_network(spec, DEMO_WEIGHTS)
    folder = tmp_path_factory.mktemp("qdq")
    fp32 = export_onnx(network, folder / "fp32.onnx", spec.roi_size, spec.in_channels, 1)
    patches = _ct_patches(spec) if CT.is_file() else np.random.default_rng(0).random((4, 1, 96, 96, 96), np.float32)
    torch.manual_seed(0)
    return spec, network, fp32, patches, folder, trained


def _ct_patches(spec, count: int = 8) -> np.ndarray:
    """Windows of the preprocessed real CT, spread over the volume."""
    from engine_builder.io import read_volume
    from engine_builder.preprocess import preprocess

    image = np.asarray(preprocess(read_volume(CT), spec).image, dtype=np.float32)
    roi = spec.roi_size
    padded = np.pad(image, [(0, 0)] + [(0, max(r - s, 0)) for s, r in zip(image.shape[1:], roi)], constant_values=float(image.min()))
    rng = np.random.default_rng(0)
    starts = [[int(rng.integers(0, s - r + 1)) for s, r in zip(padded.shape[1:], roi)] for _ in range(count)]
    return np.stack([padded[:, a : a + roi[0], b : b + roi[1], c : c + roi[2]] for a, b, c in starts])


def _conv_nodes(model):
    return [n for n in model.graph.node if n.op_type in modelopt_qdq.QUANTIZABLE_OPS]


def _output_heads(model) -> set[str]:
    """Convolutions whose output reaches the graph output without another convolution (the logits head)."""
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    heads = set()
    for node in _conv_nodes(model):
        frontier, seen = list(node.output), set()
        while frontier:
            tensor = frontier.pop()
            if tensor in outputs:
                heads.add(node.name)
                break
            for consumer in consumers.get(tensor, []):
                if consumer.op_type not in modelopt_qdq.QUANTIZABLE_OPS and consumer.name not in seen:
                    seen.add(consumer.name)
                    frontier.extend(consumer.output)
    return heads


def test_int8_graph_has_qdq_on_every_quantized_conv(demo):
    spec, _, fp32, patches, folder, _ = demo
    out = folder / "int8.onnx"
    report = modelopt_qdq.prepare_graph(fp32, out, "int8", patches[:2], "max")
    model = onnx.load(str(out))
    convs = _conv_nodes(model)
    assert report.quantized and len(report.quantized) + len(report.kept_in_float) == len(convs)
    # ModelOpt leaves at most the logits head in float (TensorRT gains nothing from an INT8 head).
    assert set(report.kept_in_float) <= _output_heads(model), report.kept_in_float
    by_name = {n.name: n for n in convs}
    for name, axis in report.quantized.items():
        # per-output-channel weights: axis 0 of a Conv kernel (O, I, ...), axis 1 of a ConvTranspose (I, O, ...)
        assert axis == (1 if by_name[name].op_type == "ConvTranspose" else 0), (name, axis)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    assert report.graph_dtypes.get("Cast->FLOAT16", 0) > 0, "AutoCast put nothing in FP16"


def test_fragile_ops_stay_fp32(demo):
    _, _, fp32, patches, folder, _ = demo
    out = folder / "fp16.onnx"
    modelopt_qdq.prepare_graph(fp32, out, "fp16", None)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    norms = [n for n in model.graph.node if n.op_type in modelopt_qdq.FP32_OPS]
    assert norms
    for node in norms:
        assert types.get(node.output[0]) == onnx.TensorProto.FLOAT, node.name
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_keep_float_nodes_have_no_qdq(demo):
    _, _, fp32, patches, folder, _ = demo
    first = _conv_nodes(onnx.load(str(fp32)))[0].name
    out = folder / "keep.onnx"
    report = modelopt_qdq.prepare_graph(fp32, out, "int8", patches[:2], "max", keep_float=(first,))
    assert first in report.kept_in_float and first not in report.quantized
    producer = {o: n for n in onnx.load(str(out)).graph.node for o in n.output}
    node = next(n for n in onnx.load(str(out)).graph.node if n.name == first)
    assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)


def test_unknown_method_is_one_line(demo):
    from engine_builder.errors import PTQError

    _, _, fp32, patches, folder, _ = demo
    with pytest.raises(PTQError, match="choose one of max, entropy"):
        modelopt_qdq.prepare_graph(fp32, folder / "x.onnx", "int8", patches[:1], "percentile")


@pytest.mark.skipif(not CT.is_file(), reason=f"real CT not found at {CT} (../shared/data is absent)")
@pytest.mark.skipif(not DEMO_WEIGHTS.is_file(), reason="trained demo weights (engine_builder/models/weights/demo_unet.pt) are absent")
@pytest.mark.parametrize("method", ["max", "entropy"])
def test_onnxruntime_runs_qdq_graph_and_agrees_with_fp32(demo, method):
    spec, _, fp32, patches, folder, _ = demo
    calibration, held_out = patches[:6], patches[6:]
    out = folder / f"int8-{method}.onnx"
    modelopt_qdq.prepare_graph(fp32, out, "int8", calibration, method)
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    quantized = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    agreements = []
    for patch in held_out:
        a = reference.run(None, {"image": patch[None]})[0].argmax(1)
        b = quantized.run(None, {"image": patch[None]})[0].argmax(1)
        agreements.append(float((a == b).mean()))
    assert np.mean(agreements) >= 0.98, agreements
