"""engine_builder.export and the FP32 backends: the ONNX graph is valid and every FP32 engine is the network.

Covers: the exported ONNX passes ``onnx.checker`` (full check), uses opset >= 17 and has the static input
``image`` (batch, C, *roi) and output ``logits``; for the demo, unet and segresnet specs the OpenVINO FP32
engine and the torch backend engine reproduce torch eager within 1e-4 relative L2 (random initialisation:
parity does not depend on the weights' values; a 64^3 ROI, which all three architectures divide, keeps it
fast), also with a static batch of 2 and a partial last batch; an engine saved and loaded again gives the
same logits; ``relative_l2`` itself. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from engine_builder.backends import BuildOptions, FP32Graph, get_backend
from engine_builder.export import OPSET, export_onnx, relative_l2
from engine_builder.models import get_spec

ROI = (64, 64, 64)


def _graph(name, tmp_path, batch=1):
    spec = dataclasses.replace(get_spec(name), roi_size=ROI)
    torch.manual_seed(1)
    network = spec.build_network()
    onnx_path = export_onnx(network, tmp_path / f"{name}.onnx", spec.roi_size, spec.in_channels, batch)
    return FP32Graph(spec, network, onnx_path, batch)


def _patches(spec, n, seed=0):
    """Smooth, CT-like patches in [0, 1] (random noise alone would be an unusual input)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, spec.in_channels, 8, 8, 8)).astype(np.float32)
    return torch.nn.functional.interpolate(torch.from_numpy(coarse), size=spec.roi_size, mode="trilinear").numpy()


def test_relative_l2():
    a = np.array([3.0, 4.0])
    assert relative_l2(a, a) == 0.0
    assert relative_l2(a, a * 1.1) == pytest.approx(0.1)
    assert relative_l2(np.zeros(2), np.array([0.0, 2.0])) == pytest.approx(2.0)


def test_onnx_graph_is_valid_with_static_shapes(tmp_path):
    graph = _graph("demo", tmp_path, batch=2)
    model = onnx.load(str(graph.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    assert opsets["ai.onnx"] >= 17 and OPSET >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and out.name == "logits"
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == [2, 1, *ROI]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [2, 8, *ROI]


@pytest.mark.parametrize("name", ["demo", "unet", "segresnet"])
def test_fp32_engines_match_torch_eager(tmp_path, name):
    graph = _graph(name, tmp_path)
    patches = _patches(graph.spec, 2)
    with torch.inference_mode():
        reference = graph.network(torch.from_numpy(patches)).numpy()
    assert reference.shape == (2, len(graph.spec.labels), *ROI)
    assert np.abs(reference).max() > 1e-3  # a real signal to compare, not zeros
    for backend_name in ("openvino", "torch"):
        backend = get_backend(backend_name)
        engine = backend.build(graph, None, "fp32", BuildOptions(progress=False))
        logits = np.concatenate([engine.infer(p[None]) for p in patches])
        error = relative_l2(reference, logits)
        assert error < 1e-4, f"{name} {backend_name}: relative L2 {error:.2e}"
        # Saved and loaded again, the engine computes the same thing.
        folder = tmp_path / f"{backend_name}_engine"
        folder.mkdir()
        engine.save(folder)
        manifest = {"precision": "fp32", "batch_size": 1, "input_shape": [1, graph.spec.in_channels, *ROI],
                    "spec": {**graph.spec.to_dict(), "roi_size": list(ROI)}}
        loaded = backend.load(folder, manifest, BuildOptions())
        again = np.concatenate([loaded.infer(p[None]) for p in patches])
        assert relative_l2(logits, again) < 1e-6


def test_static_batch_and_partial_batch(tmp_path):
    graph = _graph("demo", tmp_path, batch=2)
    patches = _patches(graph.spec, 3, seed=5)
    with torch.inference_mode():
        reference = graph.network(torch.from_numpy(patches)).numpy()
    engine = get_backend("openvino").build(graph, None, "fp32", BuildOptions(progress=False))
    full = engine.infer(patches[:2])
    partial = engine.infer(patches[2:])  # one patch into a batch-2 engine: zero-padded, trimmed
    assert full.shape == (2, 8, *ROI) and partial.shape == (1, 8, *ROI)
    assert relative_l2(reference, np.concatenate([full, partial])) < 1e-4
