"""A patient's image is never overwritten, odd volumes get one clear line, and killed runs leave nothing behind.

- ``--output`` naming the input (the same path, through ``x/../``, a symbolic link or a hard link) is refused
  before anything runs, and the input's bytes are unchanged; so is an output folder equal to the input folder,
  while an output folder inside it works and its label maps are never read back as scans.
- The output suffix and writability are checked before the engine is even loaded (a damaged engine plus a bad
  suffix reports the suffix).
- A NaN-filled volume and a constant one are refused; a partly non-finite one is segmented with a warning that
  says how many voxels were replaced; a 40x40x30 volume of 60 mm voxels (a 1600^3 grid at 1.5 mm) is refused by
  the memory budget in well under a second, naming the grid and the budget.
- A DICOM folder with two series lists both UIDs and asks for one; ``--series UID`` and ``--series all`` work.
- Temporaries of killed runs (label maps, the calibration cache) are removed by the next run; GDCM's
  "No Series were found" noise does not reach the terminal; ``--quiet`` prints no progress bars (NNCF's included).
Real files, real engines, fresh processes where the user's experience is the point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli, write_dicom_series, write_phantom
from engine_builder.files import partial_path
from engine_builder.io import Volume, read_volume, write_volume
from engine_builder.phantom import make_phantom


def _segment(engine_dir, source, target, *extra):
    return run_cli("segment", "--engine", str(engine_dir), "--input", str(source), "--output", str(target), *extra)


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "ct" / "scan.nii.gz"
    path.parent.mkdir()
    write_phantom(path, 41, (48, 44, 20), (6.0, 6.0, 9.0))
    return path


@pytest.mark.parametrize("how", ["same path", "dot-dot", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(how, scan, int8_build, tmp_path):
    before = scan.read_bytes()
    if how == "same path":
        output = scan
    elif how == "dot-dot":
        output = scan.parent / ".." / scan.parent.name / scan.name
    elif how == "symlink":
        output = tmp_path / "link.nii.gz"
        output.symlink_to(scan)
    else:
        output = tmp_path / "hard.nii.gz"
        os.link(scan, output)
    result = _segment(int8_build.engine_dir, scan, output, "--quiet")
    assert_clean_error(result, "is the input", "never overwritten")
    assert scan.read_bytes() == before


def test_output_folder_equal_to_input_folder_is_refused(small_volumes, int8_build):
    before = {p.name: p.read_bytes() for p in small_volumes.iterdir()}
    result = _segment(int8_build.engine_dir, small_volumes, small_volumes, "--quiet")
    assert_clean_error(result, "is the input folder", "segmentations")
    assert {p.name: p.read_bytes() for p in small_volumes.iterdir()} == before


def test_output_folder_inside_the_input_folder_is_left_out_of_the_search(tmp_path, int8_build):
    source = tmp_path / "cohort"
    for seed in (51, 52):
        write_phantom(source / f"p{seed}.nii.gz", seed, (40, 40, 16), (6.0, 6.0, 10.0))
    target = source / "segmentations"
    first = _segment(int8_build.engine_dir, source, target)
    assert first.returncode == 0, first.stderr
    assert "segmented 2, skipped 0 already done, failed 0" in first.stdout
    assert "No Series were found" not in first.stderr  # GDCM's noise for folders without DICOM
    second = _segment(int8_build.engine_dir, source, target)
    assert second.returncode == 0, second.stderr
    assert "segmented 0, skipped 2 already done, failed 0" in second.stdout
    assert sorted(p.name for p in target.iterdir()) == ["p51_seg.nii.gz", "p52_seg.nii.gz"]


def test_output_is_checked_before_the_engine_is_loaded(scan, tmp_path):
    not_an_engine = tmp_path / "engine"
    not_an_engine.mkdir()
    result = _segment(not_an_engine, scan, tmp_path / "labels.txt")
    assert_clean_error(result, "labels.txt", "volume suffix")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(_segment(not_an_engine, scan, blocker / "labels.nii.gz"), "is a file")


def test_empty_input_folder_is_called_an_input_folder(tmp_path, int8_build):
    (tmp_path / "empty").mkdir()
    result = _segment(int8_build.engine_dir, tmp_path / "empty", tmp_path / "out")
    line = assert_clean_error(result, "input folder", "is empty")
    assert "calibration" not in line


def _float_phantom(path: Path, mutate) -> np.ndarray:
    hu, _, affine = make_phantom(42, shape=(48, 44, 20), spacing_mm=(6.0, 6.0, 9.0))
    array = hu.astype(np.float32)
    mutate(array)
    write_volume(Volume(array, affine), path)
    return array


def test_nan_filled_volume_is_refused(tmp_path, int8_build):
    _float_phantom(tmp_path / "nan.nii.gz", lambda a: a.fill(np.nan))
    result = _segment(int8_build.engine_dir, tmp_path / "nan.nii.gz", tmp_path / "seg.nii.gz")
    assert_clean_error(result, "nan.nii.gz", "100%", "not numbers")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_partly_non_finite_volume_is_segmented_with_a_warning(tmp_path, int8_build):
    def poke(array):
        array[:10] = np.nan
        array[-2:, :, :3] = np.inf

    array = _float_phantom(tmp_path / "holes.nii.gz", poke)
    bad = int((~np.isfinite(array)).sum())
    result = _segment(int8_build.engine_dir, tmp_path / "holes.nii.gz", tmp_path / "seg.nii.gz", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"{bad} voxels" in result.stderr and "NaN or infinite" in result.stderr and "-1000" in result.stderr
    labels = read_volume(tmp_path / "seg.nii.gz").array
    assert labels.shape == array.shape
    assert (labels[:10] == 0).mean() > 0.95  # the replaced slab is air, not "liver"


def test_constant_volume_is_refused(tmp_path, int8_build):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    write_volume(Volume(np.full((40, 40, 20), 55, np.int16), affine), tmp_path / "flat.nii.gz")
    assert_clean_error(_segment(int8_build.engine_dir, tmp_path / "flat.nii.gz", tmp_path / "s.nii.gz"),
                       "flat.nii.gz", "every voxel is 55", "nothing to segment")


def test_huge_resampled_grid_is_refused_by_the_memory_budget(tmp_path, int8_build):
    hu, _, _ = make_phantom(43, shape=(40, 40, 30), spacing_mm=(60.0, 60.0, 60.0))
    write_volume(Volume(hu, np.diag([60.0, 60.0, 60.0, 1.0])), tmp_path / "coarse.nii.gz")
    start = time.perf_counter()
    result = _segment(int8_build.engine_dir, tmp_path / "coarse.nii.gz", tmp_path / "s.nii.gz", "--max-memory-gb", "2")
    line = assert_clean_error(result, "coarse.nii.gz", "1600x1600x1200 grid", "2.0 GB budget", "--max-memory-gb")
    assert "GB" in line
    # Refused before resampling: the run is start-up plus a read, far from the minutes a 1600^3 grid would take.
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "s.nii.gz").exists()


@pytest.fixture
def two_series(tmp_path) -> tuple[Path, list[str]]:
    folder = tmp_path / "study"
    uids = ["1.2.826.0.1.3680043.2.1125.91.1", "1.2.826.0.1.3680043.2.1125.91.2"]
    for seed, uid, slices in ((61, uids[0], 14), (62, uids[1], 10)):
        hu, _, affine = make_phantom(seed, shape=(40, 40, slices), spacing_mm=(6.0, 6.0, 10.0))
        write_dicom_series(folder / "tmp", hu, affine, series_uid=uid)
        for path in (folder / "tmp").iterdir():
            path.rename(folder / f"{uid[-1]}_{path.name}")
        (folder / "tmp").rmdir()
    return folder, uids


def test_dicom_folder_with_two_series_asks_for_one(two_series, tmp_path, int8_build):
    folder, uids = two_series
    result = _segment(int8_build.engine_dir, folder, tmp_path / "seg.nii.gz", "--quiet")
    line = assert_clean_error(result, "2 DICOM series", uids[0], uids[1], "--series")
    assert "14 files" in line and "10 files" in line
    chosen = _segment(int8_build.engine_dir, folder, tmp_path / "seg.nii.gz", "--series", uids[1], "--quiet")
    assert chosen.returncode == 0, chosen.stderr
    assert read_volume(tmp_path / "seg.nii.gz").shape == (40, 40, 10)
    every = _segment(int8_build.engine_dir, folder, tmp_path / "all.nii.gz", "--series", "all", "--quiet")
    assert every.returncode == 0, every.stderr
    assert read_volume(tmp_path / f"all_{uids[0]}.nii.gz").shape == (40, 40, 14)
    assert read_volume(tmp_path / f"all_{uids[1]}.nii.gz").shape == (40, 40, 10)
    assert_clean_error(_segment(int8_build.engine_dir, folder, tmp_path / "x.nii.gz", "--series", "9.9"),
                       "no DICOM series 9.9")


def test_calibration_uses_every_series_of_a_folder(two_series):
    from engine_builder.models import get_spec
    from engine_builder.sources import find_volumes

    folder, uids = two_series
    sources, skipped = find_volumes(folder)
    assert sorted(s.series_uid for s in sources) == uids and skipped == []
    assert get_spec("demo")  # the set reads each series on its own: see test_calibration for the patches


def test_stale_partial_files_are_removed_by_the_next_run(scan, tmp_path, int8_build, calib_dir):
    dead = _dead_pid()
    outputs = tmp_path / "out"
    outputs.mkdir()
    stale_label = outputs / f".labels.nii.gz.partial-{dead}-x-1.nii.gz"
    stale_label.write_bytes(b"half a label map")
    live_label = partial_path(outputs / "other.nii.gz")  # this process: still writing
    live_label.write_bytes(b"in progress")
    result = _segment(int8_build.engine_dir, scan, outputs / "labels.nii.gz", "--quiet")
    assert result.returncode == 0, result.stderr
    assert not stale_label.exists() and live_label.exists()
    assert sorted(p.name for p in outputs.iterdir() if not p.name.startswith(".")) == ["labels.nii.gz"]

    cache = tmp_path / "cache"
    (cache / "calibration").mkdir(parents=True)
    stale_cache = cache / "calibration" / f".calibration-0123.npz.partial-{dead}-x-2.npz"
    stale_cache.write_bytes(b"half an npz")
    built = run_cli("build", "--model", "demo", "--random-init", "--precision", "fp32", "--calib", str(calib_dir),
                    "--patches", "1", "--cache", str(cache), "--quiet")
    assert built.returncode == 0, built.stderr
    assert not stale_cache.exists()
    assert [p.name for p in (cache / "calibration").iterdir() if p.name.startswith(".")] == []


def test_quiet_build_prints_no_progress_bars(tmp_path):
    calib_dir = tmp_path / "calib"  # two small phantoms: the estimate's two folds run too, and must be quiet
    calib_dir.mkdir()
    for seed in (41, 42):
        write_phantom(calib_dir / f"phantom_{seed}.nii.gz", seed, shape=(64, 64, 32), spacing=(3.0, 3.0, 4.0))
    result = run_cli("build", "--model", "demo", "--calib", str(calib_dir), "--patches", "1", "--out",
                     str(tmp_path / "e"), "--cache", str(tmp_path / "cache"), "--accuracy-control", "off", "--quiet")
    assert result.returncode == 0, result.stderr
    for noise in ("Statistics collection", "Applying", "calibration:", "it/s", "%|"):
        assert noise not in result.stdout + result.stderr, noise
    assert "built engine" in result.stdout
    assert "on 2 calibration volumes the engine was not calibrated on" in result.stdout  # the estimate ran, quietly
