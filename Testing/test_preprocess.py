"""engine_builder.preprocess: the network grid (spacing, orientation, intensities) and the exact inverse.

Covers: the output spacing and orientation equal the spec's for RAS-, LPS- and slice-reversed inputs; the
intensity window; ``labels_to_input_grid`` returns exactly the input shape and maps a thresholded network-grid
image back onto the input grid in agreement with thresholding the original; the separable (axis-aligned) path
equals the general path voxel for voxel; an oblique input is handled (general path). Nothing is mocked.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from conftest import oblique_affine
from engine_builder.io import Volume
from engine_builder.models import get_spec
from engine_builder.phantom import make_phantom
from engine_builder.preprocess import (_axis_permutation, _general_map, background_value, foreground_threshold,
                                       labels_to_input_grid, preprocess)
from engine_builder.spec import Intensity

DEMO = get_spec("demo")


def _phantom(seed, shape=(96, 96, 48), spacing=(4.0, 4.0, 6.0)) -> tuple[Volume, np.ndarray]:
    hu, labels, affine = make_phantom(seed, shape=shape, spacing_mm=spacing)
    return Volume(hu, affine), labels


def _column_spacing(affine):
    return np.linalg.norm(affine[:3, :3], axis=0)


@pytest.mark.parametrize("seed", [11, 12, 5])
def test_output_grid_has_spec_spacing_and_orientation(seed):
    volume, _ = _phantom(seed)
    prepared = preprocess(volume, DEMO)
    assert prepared.image.shape[0] == 1 and prepared.image.dtype == np.float32
    np.testing.assert_allclose(_column_spacing(prepared.affine), DEMO.spacing_mm, rtol=1e-5)
    assert "".join(nib.aff2axcodes(prepared.affine)) == DEMO.orientation
    # Positive diagonal: RAS storage, whatever the input's storage order was.
    assert (np.diag(prepared.affine)[:3] > 0).all()
    # The field of view is kept: the world extent (R, A, S) / the spec's spacing, axis by axis.
    extent = np.abs(volume.affine[:3, :3]) @ np.array(volume.shape, float)
    expected = extent / np.array(DEMO.spacing_mm)
    assert np.allclose(prepared.image.shape[1:], expected, atol=1.5), (prepared.image.shape, expected)


def test_same_spacing_lps_input_is_only_flipped_and_windowed():
    """No resampling at the spec's spacing: the network image is the input with i and j reversed, windowed."""
    hu, _, affine = make_phantom(2, shape=(40, 36, 20), spacing_mm=DEMO.spacing_mm)
    assert affine[0, 0] < 0 and affine[1, 1] < 0  # seed 2 is stored LPS-like
    prepared = preprocess(Volume(hu, affine), DEMO)
    flipped = hu[::-1, ::-1, :] if affine[2, 2] > 0 else hu[::-1, ::-1, ::-1]
    expected = np.clip((flipped.astype(np.float64) + 1000.0) / 2000.0, 0.0, 1.0)
    np.testing.assert_allclose(prepared.image[0], expected, atol=1e-6)
    # The affine maps the same world points: network voxel 0 is input voxel (39, 35, 0).
    np.testing.assert_allclose(prepared.affine[:3, 3], (affine @ [39, 35, 0, 1])[:3], atol=1e-4)


def test_intensity_helpers():
    window = DEMO.intensity
    assert background_value(window) == 0.0
    assert foreground_threshold(window) == pytest.approx(0.25)  # -500 HU in a [-1000, 1000] window
    zscore = Intensity(kind="zscore")
    spec = dataclasses.replace(DEMO, intensity=zscore, spacing_mm=(4.0, 4.0, 6.0))
    volume, _ = _phantom(7)
    shifted = Volume(volume.array.astype(np.float32) + 1000.0, volume.affine)  # MR-like: air is 0
    image = preprocess(shifted, spec).image[0]
    nonzero = image[image != 0]
    assert nonzero.size > 0.3 * image.size
    assert abs(float(nonzero.mean())) < 0.05 and abs(float(nonzero.std()) - 1.0) < 0.05


@pytest.mark.parametrize("seed, shape, spacing", [(11, (96, 96, 48), (4.0, 4.0, 6.0)), (3, (77, 61, 33), (1.7, 2.3, 5.1)),
                                                  (12, (50, 90, 41), (6.1, 3.3, 2.2))])
def test_labels_back_on_input_grid_agree_with_thresholding_the_original(seed, shape, spacing):
    volume, _ = _phantom(seed, shape, spacing)
    prepared = preprocess(volume, DEMO)
    network_labels = (prepared.image[0] > foreground_threshold(DEMO.intensity)).astype(np.uint8)
    back = labels_to_input_grid(network_labels, prepared.affine, volume.shape, volume.affine)
    assert back.shape == volume.shape and back.dtype == np.uint8
    truth = volume.array > -500
    agreement = float((back.astype(bool) == truth).mean())
    assert agreement > 0.97, agreement
    # The body is where it should be (not mirrored): Dice of the body masks is high.
    dice = 2 * np.logical_and(back, truth).sum() / (back.sum() + truth.sum())
    assert dice > 0.95, dice


def test_exact_shape_for_odd_and_tiny_grids():
    labels = np.random.default_rng(0).integers(0, 8, size=(30, 31, 17)).astype(np.uint8)
    labels_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for shape, spacing in (((1, 1, 1), 1.0), ((101, 3, 57), 0.93), ((7, 200, 2), 2.1)):
        input_affine = np.diag([spacing, -spacing, 1.3 * spacing, 1.0])
        input_affine[:3, 3] = (5.0, 60.0, -2.0)
        assert labels_to_input_grid(labels, labels_affine, shape, input_affine).shape == shape


def test_voxels_outside_the_network_grid_get_background():
    labels = np.full((10, 10, 10), 5, dtype=np.uint8)
    out = labels_to_input_grid(labels, np.eye(4), (30, 10, 10), np.eye(4) @ _translate(-10, 0, 0))
    assert (out[:10] == 0).all() and (out[10:20] == 5).all() and (out[20:] == 0).all()


def _translate(x, y, z):
    t = np.eye(4)
    t[:3, 3] = (x, y, z)
    return t


def _axis_aligned(rng, permutation, signs, scales, offset):
    affine = np.zeros((4, 4))
    for input_axis, world_axis in enumerate(permutation):
        affine[world_axis, input_axis] = signs[input_axis] * scales[input_axis]
    affine[:3, 3] = offset
    affine[3, 3] = 1.0
    return affine


@pytest.mark.parametrize("case", range(6))
def test_separable_path_equals_general_path(case):
    rng = np.random.default_rng(100 + case)
    labels = rng.integers(0, 8, size=tuple(rng.integers(12, 30, 3))).astype(np.uint8)
    labels_affine = _axis_aligned(rng, rng.permutation(3), rng.choice([-1, 1], 3), rng.uniform(2.0, 4.0, 3),
                                  rng.uniform(-40, 40, 3))
    input_affine = _axis_aligned(rng, rng.permutation(3), rng.choice([-1, 1], 3), rng.uniform(0.6, 3.0, 3),
                                 rng.uniform(-40, 40, 3))
    input_shape = tuple(int(s) for s in rng.integers(20, 70, 3))
    # Centre the input grid on the label grid (plus a non-integer shift) so that they overlap.
    label_centre = (labels_affine @ np.r_[(np.array(labels.shape) - 1) / 2, 1])[:3]
    input_affine[:3, 3] = label_centre - input_affine[:3, :3] @ ((np.array(input_shape) - 1) / 2) + rng.uniform(-5, 5, 3)
    voxel_map = np.linalg.inv(labels_affine) @ input_affine
    assert _axis_permutation(voxel_map[:3, :3]) is not None  # the fast path is the one under test
    fast = labels_to_input_grid(labels, labels_affine, input_shape, input_affine)
    general = _general_map(np.pad(labels, 1), voxel_map, input_shape)
    assert fast.shape == general.shape == input_shape
    np.testing.assert_array_equal(fast, general)
    assert len(np.unique(fast)) == 8  # the grids overlap: the comparison is not between two empty maps


def test_oblique_input_round_trips():
    """An oblique scan: the network grid keeps its direction (RAS-closest axes, the spec's spacing)."""
    hu, _, phantom_affine = make_phantom(4, shape=(80, 80, 40), spacing_mm=(4.0, 4.0, 6.0))
    rotation = oblique_affine(spacing=(1, 1, 1), angles_deg=(8.0, -6.0, 20.0), flips=(1, 1, 1), origin=(0, 0, 0))
    affine = rotation @ phantom_affine
    volume = Volume(hu, affine)
    prepared = preprocess(volume, DEMO)
    np.testing.assert_allclose(_column_spacing(prepared.affine), DEMO.spacing_mm, rtol=1e-5)
    assert "".join(nib.aff2axcodes(prepared.affine)) == "RAS"
    directions = prepared.affine[:3, :3] / _column_spacing(prepared.affine)
    assert np.abs(directions - np.eye(3)).max() > 0.1  # still oblique: not resampled onto world axes
    network_labels = (prepared.image[0] > foreground_threshold(DEMO.intensity)).astype(np.uint8)
    back = labels_to_input_grid(network_labels, prepared.affine, volume.shape, volume.affine)
    assert back.shape == volume.shape
    agreement = float((back.astype(bool) == (hu > -500)).mean())
    assert agreement > 0.97, agreement


def _ball(affine, shape, centre, radius):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(world - centre, axis=1) < radius).reshape(shape).astype(np.uint8)


def test_general_path_maps_between_differently_rotated_grids():
    """A ball drawn on one grid, mapped onto an obliquely rotated grid, equals the ball drawn there directly."""
    labels_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    labels_affine[:3, 3] = (-60.0, -60.0, -60.0)
    labels = _ball(labels_affine, (41, 41, 41), np.zeros(3), 35.0)
    input_affine = oblique_affine(spacing=(1.7, 2.2, 2.6), angles_deg=(25.0, -15.0, 35.0), flips=(1, -1, 1), origin=(0, 0, 0))
    shape = (50, 45, 40)
    input_affine[:3, 3] = -input_affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    voxel_map = np.linalg.inv(labels_affine) @ input_affine
    assert _axis_permutation(voxel_map[:3, :3]) is None
    mapped = labels_to_input_grid(labels, labels_affine, shape, input_affine)
    direct = _ball(input_affine, shape, np.zeros(3), 35.0)
    assert mapped.shape == shape and direct.sum() > 1000
    dice = 2 * np.logical_and(mapped, direct).sum() / (mapped.sum() + direct.sum())
    assert dice > 0.95, dice
