"""TensorRT-RTX builds an engine from ModelOpt's Q/DQ graph of every registry model, on a CPU-only machine.

The study's eight networks are built at the small widths of ``Testing/registry_small.py`` (same layers, same graph
operations; the published sizes take many minutes each through ModelOpt's calibration on 2 cores); the demo models
at their own size. Skips with the reason when tensorrt_rtx_bindings or ModelOpt is missing, except where
``PTQSEG_REQUIRE_TENSORRT_RTX=1`` (CI's TensorRT-RTX step), where a missing library is a failure (also
dynamic_network_architectures, which the nnU-Net model needs).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine_builder.backends import BuildOptions, FP32Graph, modelopt_qdq
from engine_builder.errors import PTQError
from engine_builder.export import export_onnx
from engine_builder.models import registry
from registry_small import SMALL, small_spec

REQUIRED = os.environ.get("PTQSEG_REQUIRE_TENSORRT_RTX") == "1"


def _require(module: str):
    try:
        return __import__(module)
    except Exception as exc:  # noqa: BLE001
        if REQUIRED:
            raise
        pytest.skip(f"{module} is not installed ({type(exc).__name__}): pip install 'ptqsegment[tensorrt-rtx]'")


@pytest.fixture(scope="module")
def rtx():
    trt = _require("tensorrt_rtx_bindings")
    if modelopt_qdq.modelopt_version() is None:
        if REQUIRED:
            raise AssertionError("ModelOpt (modelopt.onnx) cannot be imported")
        pytest.skip("ModelOpt is not installed: pip install 'ptqsegment[tensorrt-rtx]'")
    return trt


@pytest.mark.parametrize("name", sorted(registry()))
def test_int8_engine_builds_and_plan_is_written(rtx, name, tmp_path):
    from engine_builder.backends.tensorrt import PLAN_FILE, TensorRTRTXBackend

    if name == "nnunet_totalseg" and not REQUIRED:
        pytest.importorskip("dynamic_network_architectures", reason="nnunet_totalseg needs dynamic_network_architectures")
    spec = small_spec(name) if name in SMALL else registry()[name]
    network = spec.build_network().eval()  # random weights: this checks the graph and the build, not accuracy
    fp32 = export_onnx(network, tmp_path / "fp32.onnx", spec.roi_size, spec.in_channels, 1)
    patches = np.random.default_rng(0).random((2, spec.in_channels, *spec.roi_size), dtype=np.float32)
    engine = TensorRTRTXBackend().build(FP32Graph(spec, network, fp32, 1), patches, "int8",
                                        BuildOptions(method="max", extra={"build_only": True}))
    files = engine.save(tmp_path)
    assert PLAN_FILE in files and (tmp_path / PLAN_FILE).stat().st_size > 100_000
    report = engine.runtime_report()
    assert report["library"] == "TensorRT-RTX" and report["graph"]["quantized_ops"] > 0
    assert "16-bit" in report["int8_note"] and "layers_by_precision" not in report  # no claim without an inspector


def test_parser_error_names_the_unsupported_node(rtx, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from engine_builder.backends.tensorrt import _logger, parse_onnx

    node = helper.make_node("NoSuchOperator", ["x"], ["y"], name="ptqseg_unsupported_node", domain="ptqseg.test")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ptqseg.test", 1)])
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(PTQError, match="ptqseg_unsupported_node") as error:
        parse_onnx(rtx, tmp_path / "bad.onnx", _logger(rtx))
    assert "NoSuchOperator" in str(error.value)
