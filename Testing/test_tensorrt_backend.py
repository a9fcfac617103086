"""The TensorRT backends' parts that need no TensorRT: registration, the one-line error, plan checks, layer report."""

from __future__ import annotations

import json

import pytest

from engine_builder.backends import backend_names, get_backend
from engine_builder.backends import tensorrt as trt_backend
from engine_builder.errors import PTQError


def test_backends_are_registered():
    assert {"tensorrt", "tensorrt-rtx"} <= set(backend_names())


@pytest.mark.parametrize("name, install", [("tensorrt", "tensorrt-cu12"), ("tensorrt-rtx", "tensorrt-rtx-cu13-libs")])
def test_missing_library_is_one_line_naming_install_and_cpu_fallback(monkeypatch, name, install):
    library = {"tensorrt": trt_backend.TENSORRT, "tensorrt-rtx": trt_backend.TENSORRT_RTX}[name]
    missing = trt_backend.Library(library.backend, "ptqseg_no_such_module", library.label, library.install)
    backend_class = {"tensorrt": trt_backend.TensorRTBackend, "tensorrt-rtx": trt_backend.TensorRTRTXBackend}[name]
    monkeypatch.setattr(backend_class, "library", missing)
    with pytest.raises(PTQError) as error:
        get_backend(name)
    message = str(error.value)
    assert "\n" not in message and install in message and "--backend openvino" in message


def test_layer_precisions_from_inspector_json():
    information = json.dumps({"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "deconv", "LayerType": "CaskDeconvolution", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "norm", "LayerType": "Normalization", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "reformat", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Row major linear Half format"}]},
    ]})
    report = trt_backend.layer_precisions(information)
    assert report["convolutions_by_precision"] == {"int8": 1, "fp16": 1, "fp32": 1}
    assert report["layers_by_precision"] == {"int8": 1, "fp16": 2, "fp32": 2}


def test_plan_mismatch_reasons():
    report = {"library_module": "tensorrt", "library_version": "10.13", "gpu": {"name": "RTX 4090", "compute_capability": "8.9"}}
    assert trt_backend.plan_mismatch(report, "10.13", {"name": "RTX 4090", "compute_capability": "8.9"}) is None
    assert "10.13" in trt_backend.plan_mismatch(report, "11.4", {"name": "RTX 4090", "compute_capability": "8.9"})
    assert "8.6" in trt_backend.plan_mismatch(report, "10.13", {"name": "RTX 3090", "compute_capability": "8.6"})
    built_on_cpu = dict(report, gpu="none")
    assert "without a GPU" in trt_backend.plan_mismatch(built_on_cpu, "10.13", {"name": "x", "compute_capability": "8.9"})


def test_info_prints_layers_by_precision_and_rtx_note():
    from engine_builder.describe import describe_manifest

    manifest = {"spec": {"name": "demo", "architecture": "monai.networks.nets.UNet", "labels": [0, 1]},
                "backend": "tensorrt-rtx", "backend_version": "tensorrt_rtx_bindings 1.7", "precision": "int8",
                "batch_size": 1, "sizes": {"engine_bytes": 2, "fp32_onnx_bytes": 4},
                "runs_as": {"layers_by_precision": {"fp16": 30, "fp32": 4}, "convolutions_by_precision": {"fp16": 18},
                            "int8_note": trt_backend.RTX_INT8_NOTE},
                "build_seconds": 1.0, "machine": {"cpu": "x"}}
    text = describe_manifest(manifest)
    assert "30 fp16" in text and "18 fp16" in text and "16-bit" in text
