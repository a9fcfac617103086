"""The PTQSegment Logic on real MRML classes (the ``slicer-core`` wheel: Slicer's MRML and Segmentations in plain
Python, no Qt, no application).

A real scene, volume nodes with oblique anisotropic IJK-to-RAS matrices, a real CPU INT8 engine of the demo model
(shipped weights), segmentations checked voxel by voxel against ``ptqseg segment`` on the same volume written to
disk; the background process (progress, cancel, errors), the panel's input checks and stale-engine flags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import oblique_affine

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides MRML in plain Python")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML classes (not slicer-core)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PTQSegment"))

from PTQSegmentLib import dependency_handler  # noqa: E402
from PTQSegmentLib.engine_catalog import GpuInfo, staleReasons  # noqa: E402
from PTQSegmentLib.logic import InputError, PTQSegmentLogic  # noqa: E402
from PTQSegmentLib.nodes import labelsFromSegmentation, updateNodeFromVolume, volumeFromNode  # noqa: E402
from PTQSegmentLib.process import PtqsegProcess  # noqa: E402

SHIPPED_DEMO_WEIGHTS = REPO / "engine_builder" / "models" / "weights" / "demo_unet.pt"
CALIB_SHAPE, CALIB_SPACING = (96, 96, 48), (4.0, 4.0, 6.0)


def oblique(spacing=(4.6, 5.3, 7.5), angles_deg=(12.0, -7.0, 21.0), flips=(-1, 1, -1), origin=(121.5, -37.25, 88.0)) -> np.ndarray:
    """A voxel-to-RAS affine with anisotropic spacing, axis flips and an oblique rotation (coarse, for speed)."""
    return oblique_affine(spacing, angles_deg, flips, origin)


def phantom_volume(seed: int, shape=(60, 56, 28), affine=None):
    """A phantom CT as ``Volume``: its voxels on an oblique, anisotropic grid (the body stays inside the field)."""
    from engine_builder.io import Volume
    from engine_builder.phantom import make_phantom

    hu, _, _ = make_phantom(seed, shape=shape, spacing_mm=(5.0, 5.5, 7.5))
    return Volume(hu, oblique() if affine is None else affine)


def terminology(segment) -> str:
    """The segment's serialized terminology entry ("" when it has none)."""
    import vtk

    value = vtk.reference("")
    segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    return str(value)


def add_volume_node(scene, volume, name="ct"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    updateNodeFromVolume(node, volume)
    return node


@pytest.fixture(scope="module")
def weights() -> Path | None:
    """None: the shipped demo weights (the model's packaged file). Missing shipped weights fail the suite."""
    if SHIPPED_DEMO_WEIGHTS.is_file():
        return None
    if os.environ.get("DEVONLY_WEIGHTS"):  # DEV-ONLY remove
        return Path(os.environ["DEVONLY_WEIGHTS"])  # DEV-ONLY remove
    pytest.fail(f"the shipped demo weights are missing: {SHIPPED_DEMO_WEIGHTS}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slicer-logic")


@pytest.fixture(scope="module")
def calibration(workdir) -> Path:
    from engine_builder.io import Volume, write_volume
    from engine_builder.phantom import make_phantom

    folder = workdir / "calibration"
    for seed in (31, 32):
        hu, _, affine = make_phantom(seed, shape=CALIB_SHAPE, spacing_mm=CALIB_SPACING)
        write_volume(Volume(hu, affine), folder / f"phantom_{seed}.nii.gz")
    return folder


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(scope="module")
def logic(workdir) -> PTQSegmentLogic:
    return PTQSegmentLogic(scene=slicer.vtkMRMLScene(), cacheRoot=workdir / "cache", python=sys.executable)


@pytest.fixture(scope="module")
def engine(logic, calibration, weights):
    """The CPU INT8 OpenVINO engine of the demo model, built once through the Logic (in-process)."""
    return logic.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino", patchesPerVolume=2)


def test_volume_node_round_trip_keeps_voxels_and_oblique_geometry(scene):
    volume = phantom_volume(1)
    node = add_volume_node(scene, volume)
    back = volumeFromNode(node)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
    k_j_i = slicer.util.arrayFromVolume(node)  # Slicer's own view: [k, j, i]
    assert k_j_i.shape == volume.shape[::-1]
    assert k_j_i[5, 7, 9] == volume.array[9, 7, 5]
    assert back.spacing_mm == pytest.approx((4.6, 5.3, 7.5))


def test_segment_matches_ptqseg_cli_voxel_by_voxel(engine, logic, workdir):
    from engine_builder.io import read_volume, write_volume

    volume = phantom_volume(2)
    node = add_volume_node(logic.scene, volume)
    segmentation, timings = logic.segment(node, engine)

    spec_labels = [label for label in engine.manifest["spec"]["labels"] if label["value"]]
    segments = segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == len(spec_labels) == 7
    for index, label in enumerate(spec_labels):
        segment = segments.GetNthSegment(index)
        assert segment.GetName() == label["name"]
        assert segment.GetColor() == pytest.approx([c / 255 for c in label["color"]])
        assert (label["terminology"] or "") in terminology(segment)
    assert "SCT^7771000^Left" in terminology(segments.GetSegment("kidney_left"))
    assert terminology(segments.GetSegment("liver")).startswith("Segmentation category and type - 3D Slicer General Anatomy list~")

    written = workdir / "cli" / "input.nrrd"  # NRRD keeps the oblique matrix exactly; NIfTI stores it as float32
    write_volume(volume, written)
    output = workdir / "cli" / "labels.nii.gz"
    cli = subprocess.run([sys.executable, "-m", "engine_builder.cli", "segment", "--engine", str(engine.path), "--input",
                          str(written), "--output", str(output), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    reference = read_volume(output)

    labels = labelsFromSegmentation(logic.scene, segmentation, node)
    assert labels.shape == volume.shape
    np.testing.assert_array_equal(labels, reference.array)
    np.testing.assert_allclose(reference.affine, volume.affine, atol=1e-4)
    assert len(np.unique(labels)) > 2, "a trained demo model finds several organs in a phantom"
    assert {"preprocess", "inference", "argmax", "inverse_resample", "read_volume_node", "create_segments"} <= set(timings)
    assert logic.formatTimings(timings).startswith("total ")


def test_segmentation_geometry_is_the_input_volume_geometry(engine, logic):
    volume = phantom_volume(3, shape=(48, 52, 24))
    node = add_volume_node(logic.scene, volume)
    segmentation, _ = logic.segment(node, engine)
    geometry = segmentation.GetSegmentation().GetConversionParameter("Reference image geometry").strip(";").split(";")
    np.testing.assert_allclose(np.array(geometry[:16], float).reshape(4, 4), volume.affine, atol=1e-9)
    assert [int(v) for v in geometry[16:]] == [0, 47, 0, 51, 0, 23]
    # a second run refills the same node instead of adding segments
    again, _ = logic.segment(node, engine, segmentation)
    assert again is segmentation and segmentation.GetSegmentation().GetNumberOfSegments() == 7


def test_background_segment_equals_in_process(engine, logic):
    volume = phantom_volume(4, shape=(50, 50, 20))
    node = add_volume_node(logic.scene, volume)
    expected = labelsFromSegmentation(logic.scene, logic.segment(node, engine)[0], node)

    job = logic.startSegment(node, engine)
    assert job.wait(timeout=600) == "succeeded", job.process.details
    segmentation, timings = logic.finishSegment(job)
    np.testing.assert_array_equal(labelsFromSegmentation(logic.scene, segmentation, node), expected)
    assert {"write_input", "read", "inference", "write", "create_segments"} <= set(timings)
    assert not job.workDir.exists()


def test_background_build_reports_progress_and_lists_the_engine(engine, logic, calibration, weights):
    job = logic.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino",
                            patchesPerVolume=3, background=True)
    events, stages = [], set()
    while job.running:
        events += job.poll()
        stages.add(job.stageTitle)
    events += job.poll()
    assert job.process.status == "succeeded", job.process.details
    assert any(e["event"] == "progress" and e["stage"] == "calibration" for e in events)
    assert {"Calibrating", "Quantizing (INT8)"} <= stages
    record = logic.finishBuild(job)
    assert record.path.parent == logic.cacheRoot / "engines" and record.manifest["calibration"]["patches"] > 0
    listed = logic.listEngines()
    assert {engine.path, record.path} <= {r.path for r in listed}
    assert not any(r.stale for r in listed), [r.title for r in listed]
    assert listed[0].path == record.path  # newest first
    assert not job.workDir.exists()

    again = logic.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino",
                              patchesPerVolume=3, background=True)  # the same request: the cache answers
    assert again.wait(timeout=300) == "succeeded"
    assert again.process.result["cache_hit"] and logic.finishBuild(again).path == record.path


def test_cancelled_build_leaves_no_engine(logic, calibration, weights, workdir):
    engines_before = set((logic.cacheRoot / "engines").iterdir())
    job = logic.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino",
                            patchesPerVolume=4, background=True)  # a new request: a real build to interrupt
    while job.running and job.process.progress.stage == "starting":
        job.poll()
    job.cancel()
    assert job.wait(timeout=60) == "cancelled"
    with pytest.raises(InputError, match="cancelled"):
        logic.finishBuild(job)
    assert set((logic.cacheRoot / "engines").iterdir()) == engines_before
    assert not list(logic.cacheRoot.rglob("*.partial-*")), list(logic.cacheRoot.rglob("*.partial-*"))
    assert not job.workDir.exists()


def test_failed_process_gives_one_line_and_details(workdir):
    process = PtqsegProcess(["segment", "--engine", str(workdir / "nowhere"), "--input", "x.nii.gz", "--output", "y.nii.gz"],
                            python=sys.executable).start()
    assert process.wait(timeout=120) == "failed"
    assert "not an engine directory" in process.errorMessage and "\n" not in process.errorMessage
    assert "ptqseg: error:" in process.details


def test_input_checks_give_panel_messages(logic, calibration, weights, workdir, scene, monkeypatch):
    with pytest.raises(InputError, match="Select an input volume"):
        logic.checkSegmentInputs(None, "anything")
    node = add_volume_node(scene, phantom_volume(5, shape=(20, 20, 10)))
    with pytest.raises(InputError, match="Build an engine first"):
        logic.checkSegmentInputs(node, None)
    with pytest.raises(InputError, match="not an engine directory"):
        logic.checkSegmentInputs(node, workdir)

    empty = workdir / "empty-calibration"
    empty.mkdir()
    with pytest.raises(InputError, match="is empty"):
        logic.checkBuildInputs("demo", weightsPath=weights, calibrationFolder=empty, backend="openvino")
    (empty / "notes.txt").write_text("no scans here")
    with pytest.raises(InputError, match="No volume found"):
        logic.checkBuildInputs("demo", weightsPath=weights, calibrationFolder=empty, backend="openvino")
    with pytest.raises(InputError, match="choose a folder of unlabeled volumes"):
        logic.checkBuildInputs("demo", weightsPath=weights, calibrationFolder="", backend="openvino")
    with pytest.raises(InputError, match="No volume is loaded in the scene"):
        PTQSegmentLogic(scene=slicer.vtkMRMLScene()).checkBuildInputs("demo", weightsPath=weights, useSceneVolumes=True,
                                                                     backend="openvino")

    with pytest.raises(InputError, match="not found"):
        logic.checkBuildInputs("demo", weightsPath=workdir / "missing.pt", calibrationFolder=calibration, backend="openvino")
    import engine_builder.weights

    monkeypatch.setattr(engine_builder.weights, "PACKAGED_WEIGHTS", workdir / "no-weights-here")
    with pytest.raises(InputError, match="missing from this installation"):
        logic.checkBuildInputs("demo", calibrationFolder=calibration, backend="openvino")
    with pytest.raises(InputError, match="architecture your custom weights"):
        logic.checkBuildInputs("custom", calibrationFolder=calibration)
    monkeypatch.undo()

    import engine_builder.backends
    import PTQSegmentLib.logic as logic_module

    monkeypatch.setattr(engine_builder.backends, "backend_names", lambda: ["openvino", "torch", "tensorrt"])
    monkeypatch.setattr(logic_module, "detectGpu", lambda: None)
    with pytest.raises(InputError, match="needs an NVIDIA GPU"):
        logic.checkBuildInputs("demo", weightsPath=weights, calibrationFolder=calibration, backend="tensorrt")
    assert logic.checkBuildInputs("demo", weightsPath=weights, calibrationFolder=calibration, backend="auto") == "openvino"


def test_scene_volumes_calibrate_a_build(logic, weights, monkeypatch):
    scene = slicer.vtkMRMLScene()
    for seed in (41, 42):
        add_volume_node(scene, phantom_volume(seed, shape=(64, 64, 32)), f"scan {seed}")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")  # not an image: left out
    sceneLogic = PTQSegmentLogic(scene=scene, cacheRoot=logic.cacheRoot)
    assert len(sceneLogic.sceneVolumes()) == 2
    folder = sceneLogic._writeSceneVolumes(logic.cacheRoot / "scene-check")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["000_scan_41.nii.gz", "001_scan_42.nii.gz"]
    shutil.rmtree(folder)


def test_auto_backend_resolution(logic):
    assert logic.resolveBackend("auto", gpu=None, available=["openvino", "torch"]) == "openvino"
    no_trt_packages = logic.resolveBackend("auto", gpu=GpuInfo("NVIDIA GeForce RTX 4090", "8.9"),
                                           available=["openvino", "torch", "tensorrt", "tensorrt-rtx"])
    assert no_trt_packages == "openvino"  # neither tensorrt nor tensorrt_rtx_bindings is installed here
    assert logic.resolveBackend("torch") == "torch"


def test_stale_engines_are_flagged(engine, workdir):
    manifest = json.loads(json.dumps(engine.manifest))
    assert staleReasons(manifest) == []
    other_version = {**manifest, "backend_version": "openvino 2024.0.0, nncf 2.9.0"}
    assert "built with openvino 2024.0.0" in staleReasons(other_version)[0]
    other_gpu = {**manifest, "runs_as": {"gpu": {"name": "NVIDIA RTX A6000", "compute_capability": "8.6"}}}
    assert "built on NVIDIA RTX A6000" in staleReasons(other_gpu, gpu=GpuInfo("NVIDIA GeForce RTX 4090", "8.9"))[0]
    assert staleReasons(other_gpu, gpu=GpuInfo("NVIDIA RTX A6000", "8.6")) == []
    changed = workdir / "changed_weights.pt"
    changed.write_bytes(b"other weights")
    assert "changed since the build" in staleReasons(manifest, weightsPath=changed)[0]
    missing_backend = {**manifest, "backend": "no-such-backend"}
    assert "not installed here" in staleReasons(missing_backend)[0]


def test_engine_summary_says_size_precision_and_agreement(engine):
    summary = PTQSegmentLogic.engineSummary(engine)
    assert "MB FP32" in summary["size"] and "smaller" in summary["size"]
    assert "in int8" in summary["precision"] and "convolutions" in summary["precision"]
    assert "same label as FP32" in summary["agreement"] and "%" in summary["agreement"]
    assert summary["stale"] == ""


def test_dependencies_are_checked_pinned_and_installed_only_with_consent(monkeypatch):
    assert dependency_handler.missingRequirements("openvino") == []
    assert {r.importName for r in dependency_handler.requirementsFor("tensorrt")} >= {"tensorrt", "modelopt"}
    assert all(r.versions for r in dependency_handler.REQUIRED)
    assert dependency_handler.versionMatches("2.13.0+cpu", ">=2.2") and not dependency_handler.versionMatches("1.3", ">=1.4,<2")

    missing = [r for r in dependency_handler.REQUIRED if r.importName in ("torch", "monai")]
    installed: list[str] = []
    assert not dependency_handler.installRequirements(missing, confirm=lambda text: False, pipInstall=installed.append)
    assert installed == []

    questions: list[str] = []
    assert dependency_handler.installRequirements(missing, confirm=lambda text: questions.append(text) or True,
                                                  pipInstall=installed.append)
    assert installed == ["torch>=2.2", "monai>=1.4,<2"] and "monai>=1.4,<2" in questions[0]

    class FakePyTorchUtilsLogic:
        calls: list = []

        def installTorch(self, **kwargs):
            FakePyTorchUtilsLogic.calls.append(kwargs)
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = FakePyTorchUtilsLogic
    installed.clear()
    dependency_handler.installRequirements(missing, confirm=lambda text: True, pipInstall=installed.append)
    assert installed == ["monai>=1.4,<2"]
    assert FakePyTorchUtilsLogic.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.2"}]
