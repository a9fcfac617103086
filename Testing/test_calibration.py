"""engine_builder.calibration: the calibration set built from a folder of unlabeled volumes.

Covers: recursive search (NIfTI, NRRD and a DICOM series folder in sub-folders); non-images skipped with a
warning; a truncated .nii.gz reported by name and skipped; only non-images / only corrupt files, an empty and
a missing folder raise PTQError; patches are centred mostly on the body (on a volume that is mostly air, where
uniform sampling would mostly miss it); the same seed gives the same patches; the set hash depends on the
contents, not on paths; the cache file is reused without reading any volume. ``read_volume`` is replaced by a
failing stub only in the cache test, to prove that nothing is read (the real reader is used everywhere else).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pytest

import engine_builder.calibration as calibration
from conftest import write_dicom_series, write_phantom
from engine_builder.calibration import build_calibration_set, sample_patches
from engine_builder.sources import find_volumes
from engine_builder.errors import PTQError
from engine_builder.io import Volume, write_volume
from engine_builder.models import get_spec
from engine_builder.phantom import make_phantom
from engine_builder.preprocess import foreground_threshold

DEMO = get_spec("demo")
# The demo's intensity window with a small ROI at 3 mm: cheap, and smaller than the phantoms' grids.
SMALL = dataclasses.replace(DEMO, roi_size=(32, 32, 32), spacing_mm=(3.0, 3.0, 3.0))


@pytest.fixture
def mixed_folder(tmp_path):
    """phantoms in the top folder and in sub/deeper, a DICOM series in sub/series, and non-images."""
    root = tmp_path / "calib"
    write_phantom(root / "a.nii.gz", 31, (60, 60, 30), (5.0, 5.0, 8.0))
    write_phantom(root / "sub" / "deeper" / "b.nrrd", 32, (50, 56, 28), (6.0, 6.0, 8.0))
    hu_c, _, affine_c = make_phantom(33, shape=(48, 48, 12), spacing_mm=(6.0, 6.0, 10.0))
    write_dicom_series(root / "sub" / "series", hu_c, affine_c)
    (root / "README.txt").write_text("unlabeled CTs")
    (root / "sub" / "notes.json").write_text("{}")
    return root


def test_recursive_search_finds_files_and_dicom_series(mixed_folder):
    candidates, skipped = find_volumes(mixed_folder)
    names = sorted(str(p.path.relative_to(mixed_folder)) for p in candidates)
    assert names == ["a.nii.gz", "sub/deeper/b.nrrd", "sub/series"]
    assert sorted(name for name, _ in skipped) == ["README.txt", "sub/notes.json"]


def test_non_images_are_skipped_with_a_warning(mixed_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="engine_builder.calibration"):
        result = build_calibration_set(mixed_folder, SMALL, patches_per_volume=3, progress=False)
    assert sorted(result.names) == ["a.nii.gz", "sub/deeper/b.nrrd", "sub/series"]
    assert result.patches.shape == (9, 1, 32, 32, 32)
    assert result.patches.dtype == np.float32
    assert 0.0 <= result.patches.min() and result.patches.max() <= 1.0
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "README.txt" in warned and "notes.json" in warned
    assert {name for name, _ in result.skipped} == {"README.txt", "sub/notes.json"}
    # Patches stay grouped by volume (the estimate holds whole volumes out); the set interleaves them.
    assert [len(v.patches) for v in result.volumes] == [3, 3, 3]
    np.testing.assert_array_equal(result.patches[0], result.volumes[0].patches[0])
    np.testing.assert_array_equal(result.patches[1], result.volumes[1].patches[0])
    rest = result.patches_of(["a.nii.gz", "sub/series"])
    assert rest.shape == (6, 1, 32, 32, 32)
    np.testing.assert_array_equal(rest[1], result.volumes[2].patches[0])


def test_truncated_nifti_is_reported_by_name_and_skipped(tmp_path, caplog):
    folder = tmp_path / "calib"
    write_phantom(folder / "good.nii.gz", 41, (60, 60, 30), (5.0, 5.0, 8.0))
    write_phantom(tmp_path / "whole.nii.gz", 42, (60, 60, 30), (5.0, 5.0, 8.0))
    data = (tmp_path / "whole.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) * 2 // 3])
    with caplog.at_level(logging.WARNING, logger="engine_builder.calibration"):
        result = build_calibration_set(folder, SMALL, patches_per_volume=2, progress=False)
    assert result.names == ["good.nii.gz"]
    assert len(result.patches) == 2
    assert [name for name, _ in result.skipped] == ["truncated.nii.gz"]
    assert any("truncated.nii.gz" in r.getMessage() for r in caplog.records)


def test_only_corrupt_volumes_is_an_error_naming_them(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(PTQError, match="bad.nii.gz"):
        build_calibration_set(tmp_path, SMALL, progress=False)


def test_only_non_images_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.csv").write_text("1,2")
    with pytest.raises(PTQError, match="no volume found") as info:
        build_calibration_set(tmp_path, SMALL, progress=False)
    assert "a.txt" in str(info.value)


def test_empty_and_missing_folders_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PTQError, match="empty"):
        build_calibration_set(tmp_path / "empty", SMALL, progress=False)
    with pytest.raises(PTQError, match="does not exist"):
        build_calibration_set(tmp_path / "missing", SMALL, progress=False)


def test_patches_are_mostly_on_the_body():
    """A 200^3 mostly-air volume with a small block of tissue: uniform sampling would hit it ~3% of the time."""
    image = np.zeros((1, 200, 200, 200), dtype=np.float32)
    image[0, 150:180, 20:50, 100:130] = 0.52  # soft tissue in a [-1000, 1000] window
    patches = sample_patches(image, (32, 32, 32), 60, np.random.default_rng(0), foreground_threshold(DEMO.intensity), 0.0)
    on_body = (patches.reshape(60, -1) > 0.25).mean(axis=1) > 0.05
    assert on_body.mean() >= 0.6, on_body.mean()
    # The same draw without the body bias misses the block almost always.
    uniform = sample_patches(image, (32, 32, 32), 60, np.random.default_rng(0), foreground_above=2.0, pad_value=0.0)
    assert ((uniform.reshape(60, -1) > 0.25).mean(axis=1) > 0.05).mean() < 0.2


def test_phantom_patches_have_body_means(calib_dir):
    result = build_calibration_set(calib_dir, SMALL, patches_per_volume=8, progress=False)
    means = result.patches.reshape(len(result.patches), -1).mean(axis=1)
    assert (means > 0.05).mean() >= 0.7  # air is 0.0 after the window


def test_small_volume_is_padded_with_air():
    image = np.full((1, 10, 12, 8), 0.6, dtype=np.float32)
    patches = sample_patches(image, (16, 16, 16), 3, np.random.default_rng(1), 0.25, 0.0)
    assert patches.shape == (3, 1, 16, 16, 16)
    for patch in patches:
        assert np.isclose(patch.sum(), 0.6 * 10 * 12 * 8)  # the whole volume, centred, the rest air


def test_same_seed_same_patches_other_seed_other_patches(calib_dir):
    first = build_calibration_set(calib_dir, SMALL, patches_per_volume=3, seed=7, progress=False)
    again = build_calibration_set(calib_dir, SMALL, patches_per_volume=3, seed=7, progress=False)
    other = build_calibration_set(calib_dir, SMALL, patches_per_volume=3, seed=8, progress=False)
    np.testing.assert_array_equal(first.patches, again.patches)
    assert first.set_hash == again.set_hash == other.set_hash
    assert not np.array_equal(first.patches, other.patches)


def test_set_hash_follows_contents_not_paths(tmp_path, calib_dir):
    copy = tmp_path / "copy"
    shutil.copytree(calib_dir, copy)
    original = build_calibration_set(calib_dir, SMALL, patches_per_volume=1, progress=False).set_hash
    assert build_calibration_set(copy, SMALL, patches_per_volume=1, progress=False).set_hash == original
    name = sorted(p.name for p in copy.iterdir())[0]
    write_phantom(copy / name, 99)  # same name, other contents
    changed = build_calibration_set(copy, SMALL, patches_per_volume=1, progress=False).set_hash
    assert changed != original and len(changed) == 64


def test_cache_file_is_reused_without_reading(tmp_path, calib_dir, monkeypatch):
    cache = tmp_path / "cache"
    first = build_calibration_set(calib_dir, SMALL, patches_per_volume=2, cache_dir=cache, progress=False)
    files = list(cache.glob("calibration-*.npz"))
    assert len(files) == 1
    assert not list(cache.glob(".*partial*"))

    def no_reading(path):
        raise AssertionError(f"read_volume({path}) called although the calibration set is cached")

    monkeypatch.setattr(calibration, "read_volume", no_reading)
    second = build_calibration_set(calib_dir, SMALL, patches_per_volume=2, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(second.patches, first.patches)
    assert second.set_hash == first.set_hash and second.names == first.names
    assert [v.source for v in second.volumes] == [v.source for v in first.volumes]
    # Another patch count is another cache entry, which needs reading: the stub proves it is not reused.
    with pytest.raises(AssertionError, match="cached"):
        build_calibration_set(calib_dir, SMALL, patches_per_volume=3, cache_dir=cache, progress=False)


def test_volume_smaller_than_roi_calibrates(tmp_path):
    hu = np.full((20, 20, 10), 40, dtype=np.int16)
    hu[0, 0, 0] = 42  # not a constant volume (those are refused)
    write_volume(Volume(hu, np.diag([*DEMO.spacing_mm, 1.0])), tmp_path / "tiny.nii.gz")  # no resampling
    result = build_calibration_set(tmp_path, DEMO, patches_per_volume=2, progress=False)
    assert result.patches.shape == (2, 1, 96, 96, 96)
    assert np.isclose(result.patches[0].sum(), 20 * 20 * 10 * 0.52, rtol=1e-4)


@pytest.mark.parametrize("rule, expected", [("tissue", {"tissue": 0.7}), ("body", {"body": 0.7}), ("fov", {"air": 0.3})])
def test_sampling_rules_centre_patches_where_they_say(rule, expected):
    """Half air, a quarter soft tissue, a quarter bone: where do patch centres land?"""
    from engine_builder.calibration import sample_volume
    from engine_builder.preprocess import normalised_hu

    values = {name: normalised_hu(hu, SMALL.intensity) for name, hu in (("air", -1000.0), ("tissue", 40.0), ("bone", 700.0))}
    image = np.full((1, 128, 128, 128), values["air"], np.float32)
    image[0, 64:96] = values["tissue"]
    image[0, 96:] = values["bone"]
    patches = sample_volume(image, SMALL, 200, np.random.default_rng(0), rule)
    half = np.array(SMALL.roi_size) // 2
    centres = patches[:, 0, half[0], half[1], half[2]]
    share = {name: float(np.isclose(centres, value).mean()) for name, value in values.items()}
    share["body"] = share["tissue"] + share["bone"]
    for name, at_least in expected.items():
        assert share[name] >= at_least, share
    if rule == "tissue":
        assert share["bone"] < 0.2, share
