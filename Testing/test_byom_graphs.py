"""Bring your own model, graph kinds: an ONNX file or a TorchScript file + a spec file, through the whole pipeline.

The graphs are the demo network with its SHIPPED trained weights, written by torch (ONNX with dynamic batch and
spatial dimensions and non-canonical I/O names; TorchScript by ``torch.jit.trace``), described by a spec file with
the demo's preprocessing. Checks:
- ``ptqseg build --onnx/--torchscript --spec`` builds FP32 and INT8 OpenVINO engines; ``ptqseg segment`` on a real CT
  (the MSD spleen crop) gives the same label map as the registry demo model's FP32 engine (>= 0.999 of voxels:
  same network, same preprocessing), INT8 agrees with FP32 on >= 0.95 of voxels; ``ptqseg info`` names the source
  and the manifest records the graph's and spec file's SHA-256;
- bad input, each one line, exit 2, nothing written: a spec whose label count differs from the graph's outputs, a
  2D network, a graph with two inputs, a TorchScript file that is really a pickle of a Python class (a marker file
  proves nothing was unpickled), a spec with an unknown field, no spec file, the torch backend for a graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, run_cli, shared_data
from engine_builder.models import get_spec

DEMO = get_spec("demo")


class Trap:
    """Unpickling this creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class TwoInputs(torch.nn.Module):
    def forward(self, image, mask):
        return torch.cat([image, mask], 1)


def demo_spec_file(path: Path, **changes) -> Path:
    """The demo model's data fields as a user's spec file."""
    spec = {"name": "my_demo", "roi_size": list(DEMO.roi_size), "spacing_mm": list(DEMO.spacing_mm),
            "orientation": "RAS", "intensity": {"kind": "window", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1},
            "labels": [{"value": l.value, "name": l.name, "color": list(l.color)} for l in DEMO.labels],
            "overlap": DEMO.overlap, "in_channels": 1, "modality": "CT", **changes}
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def demo_network(demo_weights):
    from engine_builder.weights import load_network

    return load_network(DEMO, demo_weights)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, demo_network) -> dict:
    """The demo network as a dynamic-shape ONNX file and as TorchScript, plus its spec file."""
    folder = tmp_path_factory.mktemp("graphs")
    onnx_path = folder / "my_net.onnx"
    example = torch.zeros(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.onnx.export(demo_network, example, str(onnx_path), input_names=["ct"], output_names=["scores"], opset_version=17,
                          dynamo=False, dynamic_axes={"ct": {0: "n", 2: "x", 3: "y", 4: "z"}, "scores": {0: "n", 2: "x", 3: "y", 4: "z"}})
        traced = torch.jit.trace(demo_network, torch.zeros(1, 1, *DEMO.roi_size))
    torchscript_path = folder / "my_net.pt"
    torch.jit.save(traced, str(torchscript_path))
    return {"onnx": onnx_path, "torchscript": torchscript_path, "spec": demo_spec_file(folder / "my_net.json")}


def _build(tmp_path, *args, precision="fp32"):
    out = tmp_path / f"engine_{precision}"
    result = run_cli("build", *args, "--precision", precision, "--out", str(out), "--cache", str(tmp_path / "cache"),
                     "--patches", "2", "--no-estimate", "--quiet")
    return result, out


def _segment(engine: Path, ct: Path, output: Path) -> np.ndarray:
    from engine_builder.io import read_volume

    result = run_cli("segment", "--engine", str(engine), "--input", str(ct), "--output", str(output), "--quiet")
    assert result.returncode == 0, result.stderr
    return read_volume(output).array


@pytest.fixture(scope="module")
def registry_labels(tmp_path_factory, fp32_build):
    """The registry demo FP32 engine's label map of the MSD spleen crop (the reference)."""
    ct = shared_data("msd_spleen/sub-spleen2_ct.nii.gz")
    return _segment(fp32_build.engine_dir, ct, tmp_path_factory.mktemp("ref") / "demo.nii.gz")


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_graph_builds_fp32_and_int8_and_segments_like_the_registry_model(tmp_path, kind, graphs, calib_dir,
                                                                         registry_labels):
    ct = shared_data("msd_spleen/sub-spleen2_ct.nii.gz")
    labels = {}
    for precision in ("fp32", "int8"):
        result, out = _build(tmp_path, f"--{kind}", str(graphs[kind]), "--spec", str(graphs["spec"]), "--calib",
                             str(calib_dir), precision=precision)
        assert result.returncode == 0, result.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["source"]["kind"] == kind and manifest["spec"]["architecture"] == ""
        assert set(manifest["source"]["files"]) == {"graph", "spec_file"}
        assert manifest["input_shape"] == [1, 1, *DEMO.roi_size]
        labels[precision] = _segment(out, ct, tmp_path / f"{precision}.nii.gz")
    agreement = float((labels["fp32"] == registry_labels).mean())
    int8_agreement = float((labels["int8"] == labels["fp32"]).mean())
    print(f"{kind}: FP32 vs registry demo FP32 {agreement:.5f}, INT8 vs FP32 {int8_agreement:.4f}")
    assert agreement >= 0.999
    assert int8_agreement >= 0.95
    assert len(np.unique(labels["fp32"])) >= 4  # a real segmentation, not a constant map
    info = run_cli("info", str(tmp_path / "engine_int8"))
    assert info.returncode == 0 and f"source     {kind}" in info.stdout, info.stdout


def _assert_refused(tmp_path, result, out, *fragments):
    assert_clean_error(result, *fragments)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
    assert not (tmp_path / "cache" / "engines").exists() or not any((tmp_path / "cache" / "engines").iterdir())


def test_label_count_differs_from_graph_outputs(tmp_path, graphs):
    spec = demo_spec_file(tmp_path / "spec.json", labels=[{"value": 0, "name": "background"}, {"value": 1, "name": "liver"}])
    for kind in ("onnx", "torchscript"):
        result, out = _build(tmp_path, f"--{kind}", str(graphs[kind]), "--spec", str(spec))
        _assert_refused(tmp_path, result, out, "labels")


def test_2d_network_is_refused(tmp_path):
    network = torch.nn.Conv2d(1, 8, 3, padding=1)
    path = tmp_path / "net2d.onnx"
    torch.onnx.export(network, torch.zeros(1, 1, 96, 96), str(path), dynamo=False, opset_version=17)
    result, out = _build(tmp_path, "--onnx", str(path), "--spec", str(demo_spec_file(tmp_path / "spec.json")))
    _assert_refused(tmp_path, result, out, "net2d.onnx", "2D network")


def test_graph_with_two_inputs_is_refused(tmp_path):
    path = tmp_path / "two.onnx"
    torch.onnx.export(TwoInputs(), (torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8)), str(path),
                      input_names=["image", "mask"], dynamo=False, opset_version=17)
    result, out = _build(tmp_path, "--onnx", str(path), "--spec", str(demo_spec_file(tmp_path / "spec.json")))
    _assert_refused(tmp_path, result, out, "two.onnx", "2 inputs", "image, mask")


def test_torchscript_that_is_a_pickled_class_is_never_unpickled(tmp_path):
    marker = tmp_path / "UNPICKLED"
    for name, write in (("saved.pt", lambda p: torch.save(Trap(marker), p)),
                        ("pickled.pt", lambda p: p.write_bytes(__import__("pickle").dumps(Trap(marker))))):
        path = tmp_path / name
        write(path)
        result, out = _build(tmp_path, "--torchscript", str(path), "--spec", str(demo_spec_file(tmp_path / "spec.json")))
        _assert_refused(tmp_path, result, out, name, "not")
        assert not marker.exists(), "the file was unpickled"


def test_spec_file_problems_name_the_field(tmp_path, graphs):
    unknown = demo_spec_file(tmp_path / "unknown.json", architecture="os.system")
    result, out = _build(tmp_path, "--onnx", str(graphs["onnx"]), "--spec", str(unknown))
    _assert_refused(tmp_path, result, out, "unknown.json", "architecture")
    roi = demo_spec_file(tmp_path / "roi.json", roi_size=[96, 96])
    result, out = _build(tmp_path, "--onnx", str(graphs["onnx"]), "--spec", str(roi))
    _assert_refused(tmp_path, result, out, "roi.json", "roi_size")
    result, out = _build(tmp_path, "--onnx", str(graphs["onnx"]))
    _assert_refused(tmp_path, result, out, "--spec")


def test_torch_backend_refuses_a_graph(tmp_path, graphs):
    result, out = _build(tmp_path, "--onnx", str(graphs["onnx"]), "--spec", str(graphs["spec"]), "--backend", "torch")
    _assert_refused(tmp_path, result, out, "torch backend needs a network definition", "--backend openvino")
