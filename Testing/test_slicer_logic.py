"""The PTQSegment Logic on real MRML classes (the ``slicer-core`` wheel: Slicer's MRML, Segmentations and
Terminologies logic in plain Python, no Qt, no application).

A real scene, volume nodes with oblique anisotropic IJK-to-RAS matrices (and under parent transforms), a real CPU
INT8 engine of the demo model (shipped weights) built and run in ``ptqseg`` child processes, segmentations checked
voxel by voxel against ``ptqseg segment`` on the same volume written to disk; terminology against Slicer's General
Anatomy codes; the background process started through a stand-in for Slicer's ``PythonSlicer`` launcher (progress,
cancel of the whole process tree, clean-up by job token, scene close); failures as one panel line; stale-engine
flags and engine listing without any runtime imported; the one dependency list.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import oblique_affine

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides MRML in plain Python")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML classes (not slicer-core)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PTQSegment"))

from engine_builder.artifact import job_partials  # noqa: E402
from engine_builder.capabilities import BACKEND_NAMES, choose_backend, installed_runtime_versions  # noqa: E402
from PTQSegmentLib import dependency_handler  # noqa: E402
from PTQSegmentLib.engine_catalog import staleReasons  # noqa: E402
from PTQSegmentLib.logic import InputError, PTQSegmentLogic, deviceFor  # noqa: E402
from PTQSegmentLib.nodes import (labelsFromSegmentation, segmentationFromLabels, segmentTerminology,  # noqa: E402
                                 terminologyProblem, updateNodeFromVolume, volumeFromNode)
from PTQSegmentLib.panel import JobRunner, describeFailure, reportFailures  # noqa: E402
from PTQSegmentLib.process import PtqsegProcess  # noqa: E402

SHIPPED_DEMO_WEIGHTS = REPO / "engine_builder" / "models" / "weights" / "demo_unet.pt"
CALIB_SHAPE, CALIB_SPACING = (96, 96, 48), (4.0, 4.0, 6.0)
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
#: The demo labels' entries in Slicer's General Anatomy list (Slicer's
#: Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json):
#: name -> (category, type, modifier) as (scheme, code, meaning); bone is filed under Tissue, kidneys carry laterality.
ANATOMICAL_STRUCTURE, TISSUE = ("SCT", "123037004", "Anatomical Structure"), ("SCT", "85756007", "Tissue")
SLICER_GENERAL_ANATOMY = {
    "liver": (ANATOMICAL_STRUCTURE, ("SCT", "10200004", "Liver"), None),
    "spleen": (ANATOMICAL_STRUCTURE, ("SCT", "78961009", "Spleen"), None),
    "kidney_left": (ANATOMICAL_STRUCTURE, ("SCT", "64033007", "Kidney"), ("SCT", "7771000", "Left")),
    "kidney_right": (ANATOMICAL_STRUCTURE, ("SCT", "64033007", "Kidney"), ("SCT", "24028007", "Right")),
    "stomach": (ANATOMICAL_STRUCTURE, ("SCT", "69695003", "Stomach"), None),
    "lung": (ANATOMICAL_STRUCTURE, ("SCT", "39607008", "Lung"), None),
    "bone": (TISSUE, ("SCT", "272673000", "Bone"), None),
}
RUNTIME_MODULES = ("torch", "openvino", "nncf", "monai", "tensorrt", "tensorrt_rtx_bindings", "modelopt")


def oblique(spacing=(4.6, 5.3, 7.5), angles_deg=(12.0, -7.0, 21.0), flips=(-1, 1, -1), origin=(121.5, -37.25, 88.0)) -> np.ndarray:
    """A voxel-to-RAS affine with anisotropic spacing, axis flips and an oblique rotation (coarse, for speed)."""
    return oblique_affine(spacing, angles_deg, flips, origin)


def phantom_volume(seed: int, shape=(60, 56, 28), affine=None):
    """A phantom CT as ``Volume``: its voxels on an oblique, anisotropic grid (the body stays inside the field)."""
    from engine_builder.io import Volume
    from engine_builder.phantom import make_phantom

    hu, _, _ = make_phantom(seed, shape=shape, spacing_mm=(5.0, 5.5, 7.5))
    return Volume(hu, oblique() if affine is None else affine)


def add_volume_node(scene, volume, name="ct"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    updateNodeFromVolume(node, volume)
    return node


def rigid(angles_deg, translation_mm) -> np.ndarray:
    """A 4x4 rotation (x, y, z Euler angles in degrees) + translation (mm)."""
    return oblique_affine((1.0, 1.0, 1.0), angles_deg, (1, 1, 1), translation_mm)


def ptqseg_segment(engine_path: Path, volume, folder: Path):
    """``ptqseg segment`` on ``volume`` written to ``folder`` as NRRD (exact geometry); returns the label ``Volume``."""
    from engine_builder.io import read_volume, write_volume

    written, output = folder / "input.nrrd", folder / "labels.nii.gz"
    write_volume(volume, written)
    cli = subprocess.run([sys.executable, "-m", "engine_builder.cli", "segment", "--engine", str(engine_path), "--input",
                          str(written), "--output", str(output), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    return read_volume(output)


def coded(entry) -> tuple[str, str, str] | None:
    """(scheme, code, meaning) of a terminology coded entry, None when empty."""
    value = entry.GetCodeValue()
    return (entry.GetCodingSchemeDesignator(), value, entry.GetCodeMeaning()) if value else None


def general_anatomy_terminology(folder: Path) -> Path:
    """``SLICER_GENERAL_ANATOMY`` as a terminology file in Slicer's format, for ``LoadTerminologyFromFile``."""
    categories: dict[tuple, dict] = {}
    for category, type_, modifier in SLICER_GENERAL_ANATOMY.values():
        entry = categories.setdefault(category, {**_code_dict(category), "Type": []})
        existing = next((t for t in entry["Type"] if t["CodeValue"] == type_[1]), None)
        if existing is None:
            existing = {**_code_dict(type_), "Modifier": []}
            entry["Type"].append(existing)
        if modifier:
            existing["Modifier"].append(_code_dict(modifier))
    path = folder / "general-anatomy.term.json"
    path.write_text(json.dumps({"@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
                                "SegmentationCategoryTypeContextName": GENERAL_ANATOMY,
                                "SegmentationCodes": {"Category": list(categories.values())}}))
    return path


def _code_dict(code: tuple[str, str, str]) -> dict:
    return dict(zip(("CodingSchemeDesignator", "CodeValue", "CodeMeaning"), code))


def launcher_script(folder: Path) -> str:
    """An executable that runs ``Testing/stand_in_launcher.py`` with this interpreter: the stand-in for PythonSlicer."""
    script = folder / "PythonSlicer-stand-in"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).parent / "stand_in_launcher.py"}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def poll_until(job_or_runner, condition, timeout_s=600.0) -> None:
    """Poll until ``condition()`` holds (the job still running) or the job ends; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while job_or_runner.running and not condition():
        job_or_runner.poll()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def alive(pids: list[int]) -> list[int]:
    import psutil

    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            pass
    return living


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
def launcher(workdir) -> str:
    if os.name == "nt":
        pytest.skip("the stand-in launcher is a POSIX shell script")
    return launcher_script(workdir)


@pytest.fixture(scope="module")
def engine(logic, calibration, weights):
    """The CPU INT8 OpenVINO engine of the demo model, built once through the Logic (a ptqseg child process)."""
    return logic.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino", patchesPerVolume=2)


def fake_capabilities(**backends) -> dict:
    """A capabilities answer with the given backends' entries over a CPU-only machine's."""
    usable = {"installed": True, "usable": True, "reason": None}
    answer = {"backends": {"openvino": {**usable, "precisions": ["int8", "fp32"]}, "torch": {**usable, "precisions": ["fp32"]},
                           "tensorrt": {"installed": False, "usable": False, "precisions": [], "reason": "not installed"},
                           "tensorrt-rtx": {"installed": False, "usable": False, "precisions": [], "reason": "not installed"}},
              "gpu": None, "cpu_bf16": False}
    answer["backends"].update(backends)
    answer["auto_backend"] = choose_backend(answer)
    return answer


# ------------------------------------------------------------------------------------------- nodes and geometry
def test_panel_lists_the_study_networks_with_their_label_sets():
    """The model list of the panel is the registry: the study's eight networks, each with its label set and where
    its weights come from in the summary the panel shows."""
    from engine_builder.models import get_spec
    from registry_small import SEEDS

    names = PTQSegmentLogic.modelNames()
    assert set(SEEDS) <= set(names) and len(SEEDS) == 8
    for name in SEEDS:
        spec = get_spec(name)
        summary = PTQSegmentLogic.modelSummary(name)
        foreground = [label.name for label in sorted(spec.labels, key=lambda label: label.value) if label.value != 0]
        assert f"Labels ({len(foreground)}): {foreground[0]}" in summary, (name, summary[:300])
        assert "Weights: " in summary


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

    reference = ptqseg_segment(engine.path, volume, workdir / "cli")
    labels = labelsFromSegmentation(logic.scene, segmentation, node)
    assert labels.shape == volume.shape
    np.testing.assert_array_equal(labels, reference.array)
    np.testing.assert_allclose(reference.affine, volume.affine, atol=1e-4)
    assert len(np.unique(labels)) > 2, "a trained demo model finds several organs in a phantom"
    assert {"write_input", "preprocess", "inference", "argmax", "inverse_resample", "create_segments"} <= set(timings)
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


def test_volume_under_a_rigid_parent_transform_segments_where_ptqseg_puts_the_hardened_volume(engine, logic, workdir):
    import nibabel as nib

    from engine_builder.io import Volume

    volume = phantom_volume(6, shape=(50, 48, 22))
    transform = rigid((6.0, -4.0, 9.0), (23.5, -41.0, 12.25))
    hardened = Volume(volume.array, transform @ volume.affine)
    # same nearest axes: ptqseg resamples both volumes the same way, so its labels must agree voxel for voxel
    assert nib.aff2axcodes(hardened.affine) == nib.aff2axcodes(volume.affine)

    scene = logic.scene
    node = add_volume_node(scene, volume, "ct under a transform")
    transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rigid")
    slicer.util.updateTransformMatrixFromArray(transformNode, transform)
    node.SetAndObserveTransformNodeID(transformNode.GetID())
    segmentation, _ = logic.segment(node, engine)

    assert segmentation.GetTransformNodeID() == transformNode.GetID()
    geometry = segmentation.GetSegmentation().GetConversionParameter("Reference image geometry").strip(";").split(";")
    np.testing.assert_allclose(np.array(geometry[:16], float).reshape(4, 4), volume.affine, atol=1e-6,
                               err_msg="the transform is folded into the reference geometry and then applied again")
    reference = ptqseg_segment(engine.path, hardened, workdir / "cli-hardened")
    hardenedNode = add_volume_node(scene, hardened, "hardened ct")  # no transform: the world frame
    labels = labelsFromSegmentation(scene, segmentation, hardenedNode)
    np.testing.assert_array_equal(labels, reference.array)
    assert len(np.unique(labels)) > 2


def test_nonlinear_parent_transform_is_refused_with_a_clear_message(scene, logic):
    node = add_volume_node(scene, phantom_volume(7, shape=(20, 20, 10)))
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear transform .*harden"):
        PTQSegmentLogic(scene=scene).checkSegmentInputs(node, "any engine")


def test_terminology_is_slicer_general_anatomy_with_laterality_and_distinct_colours(scene, tmp_path):
    from engine_builder.io import Volume
    from engine_builder.models import get_spec

    labels = get_spec("demo").labels
    volume = Volume(np.arange(8, dtype=np.uint8).repeat(4).reshape(2, 4, 4) % 8, np.eye(4))
    node = add_volume_node(scene, Volume(volume.array.astype(np.float32), volume.affine))
    segments = segmentationFromLabels(scene, volume, labels, node).GetSegmentation()

    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminologies.LoadTerminologyFromFile(str(general_anatomy_terminology(tmp_path))) == GENERAL_ANATOMY
    for name, (category, type_, modifier) in SLICER_GENERAL_ANATOMY.items():
        entry = segmentTerminology(segments.GetSegment(name))
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed), entry
        assert parsed.GetTerminologyContextName() == GENERAL_ANATOMY
        assert (coded(parsed.GetCategoryObject()), coded(parsed.GetTypeObject()), coded(parsed.GetTypeModifierObject())) == \
            (category, type_, modifier), name
        assert terminologyProblem(terminologies, entry) is None, name
    misfiled = segmentTerminology(segments.GetSegment("bone")).replace("SCT^85756007^Tissue", "SCT^123037004^Anatomical Structure")
    assert "not in category" in terminologyProblem(terminologies, misfiled)

    colours = np.array([label.color for label in labels if label.value], float)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(len(colours)) * 1e3
    assert distances.min() >= 40, "two segments are hard to tell apart"


def test_older_manifest_labels_without_category_still_load():
    from engine_builder.models import get_spec
    from engine_builder.spec import ModelSpec

    data = get_spec("demo").to_dict()
    for label in data["labels"]:
        label.pop("terminology_category"), label.pop("terminology_modifier")
    spec = ModelSpec.from_dict(data)
    assert spec.labels[7].terminology == "SCT^272673000^Bone" and spec.labels[7].terminology_category is None


# ------------------------------------------------------------------------------ background process and cancel
def test_background_build_reports_progress_and_lists_the_engine(engine, logic, calibration, weights):
    job = logic.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino",
                            patchesPerVolume=3, background=True)
    assert "--out" not in job.process.arguments  # the engine is written once, into the cache
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


@pytest.mark.parametrize("grace_s", [5.0, 0.0], ids=["interrupt-then-kill", "kill-at-once-as-on-windows"])
def test_cancel_through_a_launcher_stops_every_process_and_leaves_no_temporary(logic, launcher, calibration, weights, grace_s):
    import psutil

    launched = PTQSegmentLogic(scene=logic.scene, cacheRoot=logic.cacheRoot, python=launcher)
    engines_before = set((logic.cacheRoot / "engines").iterdir())
    job = launched.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino",
                               patchesPerVolume=4, background=True)  # a new request: a real build to interrupt
    engines = logic.cacheRoot / "engines"
    poll_until(job, lambda: job_partials(engines, job.process.token))
    assert job.running, job.process.details
    tree = [job.process.pid] + [p.pid for p in psutil.Process(job.process.pid).children(recursive=True)]
    assert len(tree) >= 2, "the stand-in launcher runs the interpreter as its child"
    partial = job_partials(engines, job.process.token)[0]
    assert str(tree[1]) in partial.name and job.process.token in partial.name

    job.cancel(grace_s)
    assert job.wait(timeout=120) == "cancelled"
    assert alive(tree) == [], "a process of the cancelled job still runs"
    with pytest.raises(InputError, match="cancelled"):
        launched.finishBuild(job)
    assert set(engines.iterdir()) == engines_before
    assert not list(logic.cacheRoot.rglob("*.partial-*")), list(logic.cacheRoot.rglob("*.partial-*"))
    assert not job.workDir.exists()


def test_scene_close_and_module_cleanup_cancel_the_running_job_without_an_exception(logic, launcher, calibration, weights, engine):
    import psutil

    scene = slicer.vtkMRMLScene()
    launched = PTQSegmentLogic(scene=scene, cacheRoot=logic.cacheRoot, python=launcher)
    outcomes = []
    runner = JobRunner(launched, scene, outcomes.append)
    engines = logic.cacheRoot / "engines"

    build = launched.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino",
                                 patchesPerVolume=5, background=True)
    runner.start(build)
    poll_until(runner, lambda: job_partials(engines, build.process.token))
    scene.Clear(0)  # what File > Close Scene does: StartCloseEvent, nodes removed, EndCloseEvent
    poll_until(runner, lambda: False, timeout_s=120)
    assert [(o.kind, o.status) for o in outcomes] == [("build", "cancelled")], [o.message for o in outcomes]
    assert "cancelled" in outcomes[0].message and "\n" not in outcomes[0].message
    assert job_partials(engines, build.process.token) == [] and not build.workDir.exists()

    node = add_volume_node(scene, phantom_volume(8, shape=(40, 40, 20)))
    segmentJob = launched.startSegment(node, engine)
    runner.start(segmentJob)
    scene.Clear(0)
    poll_until(runner, lambda: False, timeout_s=120)
    assert [(o.kind, o.status) for o in outcomes[1:]] == [("segment", "cancelled")]
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert not segmentJob.workDir.exists()

    closing = launched.buildEngine("demo", calibrationFolder=calibration, weightsPath=weights, backend="openvino",
                                   patchesPerVolume=5, background=True)
    runner.start(closing)
    poll_until(runner, lambda: job_partials(engines, closing.process.token))
    tree = [closing.process.pid] + [p.pid for p in psutil.Process(closing.process.pid).children(recursive=True)]
    runner.close()  # the module is cleaned up (Slicer exits) while a build runs: no timer polls any more
    assert alive(tree) == [] and job_partials(engines, closing.process.token) == [] and not closing.workDir.exists()


def test_failed_process_gives_one_line_and_details(workdir):
    process = PtqsegProcess(["segment", "--engine", str(workdir / "nowhere"), "--input", "x.nii.gz", "--output", "y.nii.gz"],
                            python=sys.executable).start()
    assert process.wait(timeout=120) == "failed"
    assert "input not found: x.nii.gz" in process.errorMessage and "\n" not in process.errorMessage  # checked first
    assert "ptqseg: error:" in process.details


def test_torch_fp16_runs_on_cuda_and_fails_in_one_line_without_it(logic, monkeypatch):
    """The device reaches the child (without it torch fp16 could never build); on this CPU machine it fails cleanly."""
    assert deviceFor("torch", "fp16") == "cuda" and deviceFor("openvino", "int8") == "cpu"
    cuda_torch = fake_capabilities(torch={"installed": True, "usable": True, "reason": None, "precisions": ["fp32", "fp16"]})
    monkeypatch.setattr(PTQSegmentLogic, "capabilities", lambda self, refresh=False: cuda_torch)
    job = logic.buildEngine("demo", backend="torch", precision="fp16", background=True)
    arguments = job.process.arguments
    assert arguments[arguments.index("--device") + 1] == "cuda" and "--out" not in arguments
    job.wait(timeout=300)
    if job.process.status != "succeeded":  # no CUDA here: torch says so, in one line
        with pytest.raises(InputError, match="Build failed: .*CUDA") as failure:
            logic.finishBuild(job)
        assert "\n" not in str(failure.value)


# ---------------------------------------------------------------------------------------- checks and failures
def test_input_checks_give_panel_messages(logic, calibration, weights, workdir, scene, monkeypatch):
    cpu = fake_capabilities()
    with pytest.raises(InputError, match="Select an input volume"):
        logic.checkSegmentInputs(None, "anything")
    node = add_volume_node(scene, phantom_volume(5, shape=(20, 20, 10)))
    with pytest.raises(InputError, match="Build an engine first"):
        logic.checkSegmentInputs(node, None)
    with pytest.raises(InputError, match="not an engine directory"):
        logic.checkSegmentInputs(node, workdir)

    empty = workdir / "empty-calibration"
    empty.mkdir()
    check = {"weightsPath": weights, "backend": "openvino", "capabilities": cpu}
    with pytest.raises(InputError, match="is empty"):
        logic.checkBuildInputs("demo", calibrationFolder=empty, **check)
    (empty / "notes.txt").write_text("no scans here")
    with pytest.raises(InputError, match="No volume found"):
        logic.checkBuildInputs("demo", calibrationFolder=empty, **check)
    for unset in ("", Path()):  # the parameter node stores an unset path as Path(".")
        with pytest.raises(InputError, match="choose a folder of unlabeled volumes"):
            logic.checkBuildInputs("demo", calibrationFolder=unset, **check)
    with pytest.raises(InputError, match="No volume is loaded in the scene"):
        PTQSegmentLogic(scene=slicer.vtkMRMLScene()).checkBuildInputs("demo", useSceneVolumes=True, **check)
    with pytest.raises(InputError, match="unknown model 'no-such-model'"):
        logic.checkBuildInputs("no-such-model", calibrationFolder=calibration, **check)
    with pytest.raises(InputError, match="architecture your custom weights"):
        logic.checkBuildInputs("custom", calibrationFolder=calibration, **check)
    with pytest.raises(InputError, match="not found"):
        logic.checkBuildInputs("demo", calibrationFolder=calibration, **{**check, "weightsPath": workdir / "missing.pt"})
    import engine_builder.models

    monkeypatch.setattr(engine_builder.models, "PACKAGED_WEIGHTS", workdir / "no-weights-here")
    with pytest.raises(InputError, match="missing from this installation"):
        logic.checkBuildInputs("demo", calibrationFolder=calibration, backend="openvino", capabilities=cpu)
    monkeypatch.undo()

    no_gpu = {"installed": True, "usable": False, "precisions": [], "reason": "needs an NVIDIA GPU that torch can use, and none was found"}
    with pytest.raises(InputError, match="Backend tensorrt cannot run here: needs an NVIDIA GPU"):
        logic.checkBuildInputs("demo", calibrationFolder=calibration, **{**check, "backend": "tensorrt",
                                                                          "capabilities": fake_capabilities(tensorrt=no_gpu)})
    with pytest.raises(InputError, match="builds fp32 here, not int8"):
        logic.checkBuildInputs("demo", calibrationFolder=calibration, **{**check, "backend": "torch"})
    with pytest.raises(InputError, match="builds int8, fp32 here, not bf16"):
        logic.checkBuildInputs("demo", precision="bf16", **check)
    assert logic.checkBuildInputs("demo", calibrationFolder=calibration, **{**check, "backend": "auto"}) == "openvino"


def test_every_panel_failure_becomes_one_line_plus_details(logic, engine, workdir, scene):
    shown = []

    def show(line, details=""):
        shown.append((line, details))

    damaged = workdir / "damaged-engine"
    shutil.copytree(engine.path, damaged)
    (damaged / "manifest.json").write_text("{ not json")
    with reportFailures("Segmentation", show):
        logic.checkSegmentInputs(add_volume_node(scene, phantom_volume(9, shape=(20, 20, 10))), damaged)
    blocked = workdir / "a-file"  # an unwritable place for the scene's volumes: a file where a folder must be
    blocked.write_text("")
    with reportFailures("Build", show):
        blockedLogic = PTQSegmentLogic(scene=scene, cacheRoot=blocked / "cache", python=sys.executable)
        blockedLogic.buildEngine("demo", useSceneVolumes=True, backend="openvino", background=True)
    with reportFailures("Listing engines", show):  # a fault, not a user mistake: a manifest without what the panel reads
        logic.engineSummary(type(engine)(engine.path, {"spec": {"name": "demo"}}))
    assert [line.split(":")[0] for line, _ in shown] == [
        f"engine {damaged}",
        f"Cannot create a work folder in {blocked / 'cache' / 'slicer-jobs'}",
        "Listing engines failed"]
    assert all("\n" not in line for line, _ in shown)
    assert "manifest.json is damaged (Expecting property name enclosed in double quotes)" in shown[0][0]
    assert shown[0][1] == "" and "Traceback" in shown[2][1] and "KeyError" in shown[2][0]
    line, details = describeFailure("Build", RuntimeError("first\nsecond " + "x" * 1000))
    assert line.startswith("Build failed: RuntimeError: first second") and len(line) < 340 and "x" * 1000 in details


# --------------------------------------------------------------------------- engines, staleness, capabilities
def test_listing_and_checking_engines_imports_no_runtime(engine, logic, calibration):
    """Listing, staleness, summaries and input checks read JSON and package metadata only (a fresh interpreter)."""
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO / "PTQSegment")!r})
import slicer
from PTQSegmentLib.logic import PTQSegmentLogic
from PTQSegmentLib.nodes import updateNodeFromVolume
from engine_builder.io import read_volume
logic = PTQSegmentLogic(scene=slicer.vtkMRMLScene(), cacheRoot={str(logic.cacheRoot)!r})
records = logic.listEngines()
summaries = [logic.engineSummary(record) for record in records]
node = logic.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
updateNodeFromVolume(node, read_volume(sorted(__import__("pathlib").Path({str(calibration)!r}).iterdir())[0]))
warnings = logic.checkSegmentInputs(node, records[0])
capabilities = json.loads({json.dumps(fake_capabilities())!r})
backend = logic.checkBuildInputs("demo", calibrationFolder={str(calibration)!r}, backend="auto", capabilities=capabilities)
print(json.dumps({{"engines": len(records), "stale": [r.staleReasons for r in records], "backend": backend,
                  "imported": sorted(m for m in {RUNTIME_MODULES!r} if m in sys.modules)}}))
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["engines"] >= 1 and report["backend"] == "openvino"
    assert report["stale"][0] == [] and report["imported"] == [], report


def test_capabilities_come_from_a_child_are_cached_and_refreshed_after_an_install(logic, monkeypatch):
    from engine_builder.backends import backend_names

    assert list(BACKEND_NAMES) == backend_names()  # named without importing engine_builder.backends
    logic.forgetCapabilities()
    started = []
    original_start = PtqsegProcess.start
    monkeypatch.setattr(PtqsegProcess, "start", lambda self: started.append(self.arguments) or original_start(self))
    answer = logic.capabilities()
    assert started == [["capabilities", "--json"]]
    versions = installed_runtime_versions()
    for name in ("openvino", "torch"):  # the metadata mapping says what the runtime itself says
        backend = answer["backends"][name]
        assert backend["usable"] and backend["version"] == versions[name] == answer["runtime_versions"][name]
    assert answer["auto_backend"] == "openvino" and answer["gpu"] is None and "fp32" in answer["backends"]["torch"]["precisions"]
    assert not answer["backends"]["tensorrt"]["installed"] and answer["backends"]["tensorrt"]["reason"]

    assert logic.capabilities() is answer and len(started) == 1  # cached for the session
    missing = dependency_handler.requirementsFor("openvino")[:1]
    monkeypatch.setattr(dependency_handler, "slicerPipInstall", lambda specifiers: None)
    assert logic.installDependencies(missing, confirm=lambda text: True)
    assert logic.knownCapabilities() is None  # an install changes what works here
    assert logic.capabilities() is not answer and len(started) == 2


def test_auto_backend_resolution():
    assert PTQSegmentLogic.resolveBackend("auto", fake_capabilities()) == "openvino"
    usable = {"installed": True, "usable": True, "reason": None, "precisions": ["int8", "fp16", "fp32"]}
    assert PTQSegmentLogic.resolveBackend("auto", fake_capabilities(**{"tensorrt-rtx": usable})) == "tensorrt-rtx"
    assert PTQSegmentLogic.resolveBackend("auto", fake_capabilities(tensorrt=usable, **{"tensorrt-rtx": usable})) == "tensorrt"
    assert PTQSegmentLogic.resolveBackend("torch", fake_capabilities()) == "torch"
    from engine_builder.capabilities import gpu_reason

    assert gpu_reason("tensorrt", None).startswith("needs an NVIDIA GPU")
    assert "7.5 or newer" in gpu_reason("tensorrt", {"name": "Tesla P100", "compute_capability": "6.0"})
    assert gpu_reason("tensorrt-rtx", {"name": "NVIDIA H100", "compute_capability": "9.0"}).startswith("runs on RTX-class")
    assert gpu_reason("tensorrt-rtx", {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}) is None


def test_stale_engines_are_flagged(engine, workdir):
    manifest = json.loads(json.dumps(engine.manifest))
    assert staleReasons(manifest) == []
    other_version = {**manifest, "backend_version": "openvino 2024.0.0, nncf 2.9.0"}
    assert "built with openvino 2024.0.0" in staleReasons(other_version)[0]
    plan = {**manifest, "backend": "tensorrt", "runs_as": {"library_version": "10.9.0.34",
                                                           "gpu": {"name": "NVIDIA RTX A6000", "compute_capability": "8.6"}}}
    here = {"tensorrt": "10.9.0.34"}
    assert staleReasons(plan, runtimeVersions=here) == []  # the GPU is not compared until the child has said which is here
    rtx4090 = {"gpu": {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}}
    assert "built on NVIDIA RTX A6000" in staleReasons(plan, runtimeVersions=here, capabilities=rtx4090)[0]
    assert staleReasons(plan, runtimeVersions=here, capabilities={"gpu": {"name": "NVIDIA RTX A6000", "compute_capability": "8.6"}}) == []
    assert "this machine has 10.13" in staleReasons(plan, runtimeVersions={"tensorrt": "10.13.0.35"})[0]
    changed = workdir / "changed_weights.pt"
    changed.write_bytes(b"other weights")
    assert "changed since the build" in staleReasons(manifest, weightsPath=changed)[0]
    missing_backend = {**manifest, "backend": "no-such-backend"}
    assert "not installed here" in staleReasons(missing_backend)[0]


def test_engine_summary_says_size_precision_and_agreement(engine):
    summary = PTQSegmentLogic.engineSummary(engine)
    assert "MB FP32" in summary["size"] and "smaller" in summary["size"]
    assert "in int8" in summary["precision"] and "convolutions" in summary["precision"]
    share = engine.manifest["runs_as"]["int8_conv_time_share"]
    assert summary["precision"].endswith(f"; {share:.0%} of convolution time in int8")  # by time, not by count
    accuracy = engine.manifest["accuracy"]
    assert f"{accuracy['foreground_agreement']:.2%} of foreground voxels get the FP32 label" in summary["agreement"]
    assert "not calibrated on" in summary["agreement"]  # held-out volumes, said next to the number
    assert summary["stale"] == ""


# -------------------------------------------------------------------------------------------- dependencies
def test_one_dependency_list_for_pyproject_and_the_handler():
    import tomllib

    dynamic = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    resources = "PTQSegment/Resources/"
    handler = {backend: [resources + name for name in names] for backend, names in dependency_handler.REQUIREMENT_FILES.items()}
    assert dynamic["dependencies"]["file"][0] == handler["openvino"][0]
    for extra in ("tensorrt", "tensorrt-rtx"):
        assert [handler[extra][0], *dynamic["optional-dependencies"][extra]["file"]] == handler[extra]
    for path in {p for files in handler.values() for p in files}:
        for line in (REPO / path).read_text().splitlines():
            assert line == "" or line.startswith("#") or " " not in line, f"{path}: pip and setuptools take one requirement per line: {line!r}"
    modelopt = {r.distribution: r for r in dependency_handler.requirementsFor("tensorrt")}
    assert "nvidia-modelopt" in modelopt and modelopt["nvidia-modelopt"].versions == ">=0.40"  # no [onnx] extra: it replaces CPU onnxruntime
    assert "onnxruntime" in modelopt and "psutil" in {r.distribution for r in dependency_handler.requirementsFor("auto")}


def test_dependencies_are_checked_and_installed_only_with_consent(monkeypatch):
    assert dependency_handler.missingRequirements("openvino") == []
    assert {r.distribution for r in dependency_handler.requirementsFor("tensorrt")} >= {"tensorrt", "nvidia-modelopt"}
    core = dependency_handler.requirementsFor("openvino")
    assert all(r.versions for r in core) and {r.purpose for r in core} >= {"the CPU INT8 runtime"}
    assert not dependency_handler.isSatisfied(dependency_handler.Requirement("monai", "<1.0"))
    assert dependency_handler.isSatisfied(dependency_handler.Requirement("torch", ">=2.2"))  # 2.x+cpu local versions count

    missing = [r for r in core if r.distribution in ("torch", "monai")]
    installed: list[list[str]] = []
    assert not dependency_handler.installRequirements(missing, confirm=lambda text: False, pipInstall=installed.append)
    assert installed == []
    questions: list[str] = []
    assert dependency_handler.installRequirements(missing, confirm=lambda text: questions.append(text) or True,
                                                  pipInstall=installed.append)
    assert installed == [["torch>=2.2", "monai<2,>=1.4"]] and "monai<2,>=1.4  (networks and preprocessing)" in questions[0]

    class FakePyTorchUtilsLogic:
        calls: list = []

        def installTorch(self, **kwargs):
            FakePyTorchUtilsLogic.calls.append(kwargs)
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = FakePyTorchUtilsLogic
    installed.clear()
    dependency_handler.installRequirements(missing, confirm=lambda text: True, pipInstall=installed.append)
    assert installed == [["monai<2,>=1.4"]]
    assert FakePyTorchUtilsLogic.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.2"}]


def test_installer_is_slicer_packaging_where_slicer_has_it(monkeypatch):
    calls = []
    packaging = type(sys)("slicer.packaging")
    packaging.pip_install = lambda specifiers, **options: calls.append(("packaging", specifiers, options))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    dependency_handler.slicerPipInstall(["monai<2,>=1.4"])
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer 5.8-5.10: no slicer.packaging
    monkeypatch.delattr(slicer, "packaging")
    monkeypatch.setattr(slicer.util, "pip_install", lambda specifiers: calls.append(("util", specifiers)), raising=False)
    dependency_handler.slicerPipInstall(["monai<2,>=1.4"])
    assert calls == [("packaging", ["monai<2,>=1.4"], {"requester": "PTQSegment"}), ("util", ["monai<2,>=1.4"])]
