"""The PTQSegment Logic builds from a user's own ONNX graph + spec file (``customModel``), on slicer-core.

An ONNX export of the demo network (shipped weights, dynamic spatial dimensions) and a spec file with its
preprocessing: ``buildEngine(customModel={"kind": "onnx", ...})`` builds an OpenVINO FP32 engine in process and, in the
background, INT8 through a ``ptqseg build --onnx`` child process; ``segment`` turns a phantom volume node into a
segmentation node whose segments are the spec file's labels; the panel's input checks refuse a missing spec file and
the torch backend for a graph, each with one readable line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides MRML in plain Python")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML classes (not slicer-core)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PTQSegment"))

from PTQSegmentLib.logic import InputError, PTQSegmentLogic  # noqa: E402
from PTQSegmentLib.nodes import labelsFromSegmentation, updateNodeFromVolume  # noqa: E402

from conftest import write_phantom  # noqa: E402
from engine_builder.models import get_spec  # noqa: E402

DEMO = get_spec("demo")


@pytest.fixture(scope="module")
def custom(tmp_path_factory, demo_weights) -> dict:
    from engine_builder.weights import load_network

    folder = tmp_path_factory.mktemp("custom")
    network = load_network(DEMO, demo_weights)
    with torch.no_grad():
        torch.onnx.export(network, torch.zeros(1, 1, 64, 64, 64), str(folder / "net.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {2: "a", 3: "b", 4: "c"}, "y": {2: "a", 3: "b", 4: "c"}})
    spec = {"name": "my_onnx_model", "roi_size": list(DEMO.roi_size), "spacing_mm": list(DEMO.spacing_mm),
            "intensity": {"kind": "window", "a_min": -1000, "a_max": 1000},
            "labels": [{"value": l.value, "name": f"my_{l.name}", "color": list(l.color)} for l in DEMO.labels]}
    (folder / "net.json").write_text(json.dumps(spec))
    return {"kind": "onnx", "path": str(folder / "net.onnx"), "specFile": str(folder / "net.json")}


@pytest.fixture(scope="module")
def logic(tmp_path_factory) -> PTQSegmentLogic:
    return PTQSegmentLogic(scene=slicer.vtkMRMLScene(), cacheRoot=tmp_path_factory.mktemp("cache"), python=sys.executable)


def test_logic_builds_and_segments_a_custom_onnx_model(logic, custom, calib_dir, tmp_path):
    from engine_builder.io import read_volume

    record = logic.buildEngine("", precision="fp32", backend="openvino", customModel=custom)
    assert record.manifest["source"]["kind"] == "onnx" and record.model == "my_onnx_model"
    hu, _, affine = write_phantom(tmp_path / "ct.nii.gz", 31, (64, 60, 30), (5.0, 5.0, 7.0))
    node = logic.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    updateNodeFromVolume(node, read_volume(tmp_path / "ct.nii.gz"))
    segmentation, timings = logic.segment(node, record)
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names and all(name.startswith("my_") for name in names)
    labels = labelsFromSegmentation(logic.scene, segmentation, node)
    assert "inference" in timings and timings["inference"] > 0
    assert labels.shape == hu.shape and len(np.unique(labels)) >= 2

    job = logic.buildEngine("", calibrationFolder=calib_dir, precision="int8", backend="openvino", patchesPerVolume=1,
                            background=True, customModel=custom)
    assert job.wait(600) == "succeeded", job.process.errorMessage
    int8 = logic.finishBuild(job)
    assert int8.manifest["precision"] == "int8" and int8.manifest["source"]["kind"] == "onnx"


def test_custom_model_input_checks(logic, custom, calib_dir):
    with pytest.raises(InputError, match="spec file"):
        logic.checkBuildInputs("", precision="fp32", backend="openvino", customModel={**custom, "specFile": None})
    with pytest.raises(InputError, match="torch backend"):
        logic.checkBuildInputs("", precision="fp32", backend="torch", customModel=custom)
    with pytest.raises(InputError, match="not found"):
        logic.checkBuildInputs("", precision="fp32", backend="openvino", customModel={**custom, "path": "/nowhere.onnx"})
