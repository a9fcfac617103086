"""The ``ptqseg`` command line: bad inputs give one clear line and exit code 2; folder segmentation resumes.

Every case runs ``python -m engine_builder.cli`` in a fresh process, like a user's shell, and checks: exit
code 2, exactly one ``ptqseg: error:`` line on stderr naming the problem, no "Traceback", and nothing written
(no engine at --out, no temporaries, no label file). Cases: empty, missing and non-image calibration folders,
a corrupt .nii.gz in the calibration folder and as --input, 2D and 4D inputs, an unknown model (valid names
listed), an unknown --method (valid ones listed), weights that do not fit (missing and unexpected keys named),
an output path under a regular file (works as root too, unlike chmod), a pickled module and a custom-class
pickle as --weights (refused, never unpickled: a marker file proves it). A volume smaller than the ROI must
succeed with the input's shape. Folder mode: 3 volumes + 1 corrupt file -> 3 outputs with the input geometry,
the bad one reported, non-zero exit; a second run skips the finished outputs (mtimes unchanged).
Builds whose weights do not matter use ``--random-init`` so that each case tests what it names. Nothing is
mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import assert_clean_error, run_cli, write_phantom
from engine_builder.io import Volume, read_volume, write_volume
from engine_builder.models import get_spec


class Trap:
    """Unpickling this creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _assert_no_engine(out: Path, cache: Path | None = None):
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        assert not list(out.parent.glob(".*partial*")), list(out.parent.iterdir())
    if cache is not None and (cache / "engines").exists():
        assert not any((cache / "engines").iterdir())


def _build(tmp_path, *args, model="demo", random_init=True):
    out = tmp_path / "out" / "engine"
    argv = ["build", "--model", model, "--out", str(out), "--cache", str(tmp_path / "cache"), "--patches", "1", *args]
    return run_cli(*(argv + (["--random-init"] if random_init else []))), out


def _corrupt_nifti(path: Path):
    write_phantom(path.with_name("whole_" + path.name), 5, (40, 40, 20), (6.0, 6.0, 9.0))
    data = path.with_name("whole_" + path.name).read_bytes()
    path.with_name("whole_" + path.name).unlink()
    path.write_bytes(data[: len(data) // 2])


def test_empty_calibration_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result, out = _build(tmp_path, "--calib", str(tmp_path / "empty"))
    assert_clean_error(result, "empty", str(tmp_path / "empty"))
    _assert_no_engine(out, tmp_path / "cache")


def test_missing_calibration_folder(tmp_path):
    result, out = _build(tmp_path, "--calib", str(tmp_path / "nowhere"))
    assert_clean_error(result, "does not exist", "nowhere")
    _assert_no_engine(out, tmp_path / "cache")


def test_folder_of_non_images(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "report.pdf").write_bytes(b"%PDF-1.4")
    (folder / "notes.txt").write_text("hello")
    result, out = _build(tmp_path, "--calib", str(folder))
    assert_clean_error(result, "no volume found", "notes.txt")
    _assert_no_engine(out, tmp_path / "cache")


def test_corrupt_nifti_in_calibration_folder(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    _corrupt_nifti(folder / "broken.nii.gz")
    result, out = _build(tmp_path, "--calib", str(folder))
    assert_clean_error(result, "broken.nii.gz")
    _assert_no_engine(out, tmp_path / "cache")


def test_unknown_model_lists_valid_names(tmp_path, calib_dir):
    result, out = _build(tmp_path, "--calib", str(calib_dir), model="nnunet_magic")
    line = assert_clean_error(result, "unknown model 'nnunet_magic'")
    for name in ("demo", "unet", "segresnet"):
        assert name in line
    _assert_no_engine(out)


def test_accuracy_control_without_the_estimate_is_refused(tmp_path, calib_dir):
    result, out = _build(tmp_path, "--calib", str(calib_dir), "--no-estimate", "--max-drop", "0.01")
    assert_clean_error(result, "--max-drop", "--no-estimate")
    _assert_no_engine(out)


def test_unknown_method_lists_valid_ones(tmp_path, calib_dir):
    result, out = _build(tmp_path, "--calib", str(calib_dir), "--method", "magic")
    line = assert_clean_error(result, "unknown calibration method 'magic'")
    for method in ("minmax", "mean_minmax", "percentile", "histogram"):
        assert method in line
    _assert_no_engine(out)


def test_weights_that_do_not_fit(tmp_path, calib_dir):
    spleen = get_spec("unet").build_network().state_dict()
    torch.save(spleen, tmp_path / "spleen.pt")
    result, out = _build(tmp_path, "--calib", str(calib_dir), "--weights", str(tmp_path / "spleen.pt"), random_init=False)
    line = assert_clean_error(result, "spleen.pt", "does not fit model 'demo'", "missing keys", "unexpected keys")
    demo = get_spec("demo").build_network().state_dict()
    first_missing = sorted(set(demo) - set(spleen))[0]
    first_unexpected = sorted(set(spleen) - set(demo))[0]
    assert f"missing keys {first_missing}" in line and f"unexpected keys {first_unexpected}" in line
    _assert_no_engine(out)


@pytest.mark.parametrize("kind", ["module", "custom_class"])
def test_pickled_weights_are_refused_never_unpickled(tmp_path, calib_dir, kind):
    marker = tmp_path / "UNPICKLED"
    payload = get_spec("demo").build_network() if kind == "module" else {"state_dict": {}, "x": Trap(marker)}
    torch.save(payload, tmp_path / "checkpoint.pt")
    result, out = _build(tmp_path, "--calib", str(calib_dir), "--weights", str(tmp_path / "checkpoint.pt"), random_init=False)
    assert_clean_error(result, "checkpoint.pt is not a plain state dict")
    assert not marker.exists()
    _assert_no_engine(out)


def test_unwritable_out_under_a_regular_file(tmp_path, calib_dir):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("a regular file")
    out = blocker / "out"
    result = run_cli("build", "--model", "demo", "--random-init", "--precision", "fp32", "--calib", str(calib_dir),
                     "--out", str(out), "--cache", str(tmp_path / "cache"), "--patches", "1")
    assert_clean_error(result, "somefile.txt")
    assert blocker.read_text() == "a regular file"
    assert not (tmp_path / "cache" / "engines").exists() or not any((tmp_path / "cache" / "engines").iterdir())


def test_json_progress_reports_the_error(tmp_path):
    result = run_cli("--progress", "json", "build", "--model", "demo", "--random-init", "--calib", str(tmp_path / "x"),
                     "--out", str(tmp_path / "e"))
    assert_clean_error(result, "does not exist")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "error" and "does not exist" in events[-1]["message"]


# ---- segment -------------------------------------------------------------------------------------------------


def _segment(int8_build, source, target, *extra):
    return run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(source), "--output", str(target),
                   "--quiet", *extra)


def test_segment_corrupt_input(tmp_path, int8_build):
    _corrupt_nifti(tmp_path / "scan.nii.gz")
    result = _segment(int8_build, tmp_path / "scan.nii.gz", tmp_path / "seg.nii.gz")
    assert_clean_error(result, "scan.nii.gz")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_segment_2d_and_4d_inputs(tmp_path, int8_build):
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkInt16), str(tmp_path / "slice.nii.gz"))
    result = _segment(int8_build, tmp_path / "slice.nii.gz", tmp_path / "seg2d.nii.gz")
    assert_clean_error(result, "slice.nii.gz", "2D")
    sitk.WriteImage(sitk.Image([16, 16, 16, 4], sitk.sitkInt16), str(tmp_path / "dynamic.nii.gz"))
    result = _segment(int8_build, tmp_path / "dynamic.nii.gz", tmp_path / "seg4d.nii.gz")
    assert_clean_error(result, "dynamic.nii.gz", "4D")
    assert not list(tmp_path.glob("seg*"))


def test_segment_output_under_a_regular_file(tmp_path, int8_build, small_volumes):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("x")
    result = _segment(int8_build, small_volumes / "case_21.nii.gz", blocker / "seg.nii.gz")
    assert_clean_error(result, "somefile.txt")


def test_segment_with_something_that_is_not_an_engine(tmp_path, small_volumes):
    result = run_cli("segment", "--engine", str(tmp_path), "--input", str(small_volumes / "case_21.nii.gz"),
                     "--output", str(tmp_path / "seg.nii.gz"))
    assert_clean_error(result, "is not an engine directory")


def test_volume_smaller_than_roi_is_padded_and_succeeds(tmp_path, int8_build):
    hu = np.full((30, 25, 12), -1000, dtype=np.int16)
    hu[8:22, 6:20, 3:9] = 50
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[:3, 3] = (30.0, 20.0, -15.0)
    write_volume(Volume(hu, affine), tmp_path / "tiny.nii.gz")
    result = _segment(int8_build, tmp_path / "tiny.nii.gz", tmp_path / "tiny_seg.nii.gz", "--json", str(tmp_path / "t.json"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    seg = read_volume(tmp_path / "tiny_seg.nii.gz")
    assert seg.shape == hu.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-6)
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["windows"] == 1 and report["total_ms"] > 0


def test_folder_segment_with_failure_and_resume(tmp_path, int8_build, small_volumes):
    source = tmp_path / "in"
    shutil.copytree(small_volumes, source)
    _corrupt_nifti(source / "bad.nii.gz")
    (source / "notes.txt").write_text("not an image")
    target = tmp_path / "out"
    first = _segment(int8_build, source, target, "--json", str(tmp_path / "first.json"))
    assert first.returncode != 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    assert "segmented 3, skipped 0 already done, failed 1" in first.stdout
    assert "failed: bad.nii.gz" in first.stdout
    outputs = sorted(p.name for p in target.iterdir())
    assert outputs == ["case_21_seg.nii.gz", "case_22_seg.nii.gz", "case_23_seg.nii.gz"]
    report = json.loads((tmp_path / "first.json").read_text())
    assert [f[0] for f in report["failed"]] == ["bad.nii.gz"] and len(report["segmented"]) == 3

    for name in ("case_21", "case_22", "case_23"):
        image = read_volume(source / f"{name}.nii.gz")
        labels = read_volume(target / f"{name}_seg.nii.gz")
        assert labels.shape == image.shape
        np.testing.assert_array_equal(labels.affine, image.affine)
        assert labels.array.dtype == np.uint8 and labels.array.max() < 8

    mtimes = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    second = _segment(int8_build, source, target)
    assert second.returncode != 0  # the corrupt file still fails
    assert "segmented 0, skipped 3 already done, failed 1" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == mtimes
