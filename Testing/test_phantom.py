"""Tests of the synthetic CT phantom generator (engine_builder.phantom)."""

from __future__ import annotations

import numpy as np
import pytest

from engine_builder.phantom import LABELS, make_phantom

# A field of view big enough (480 x 480 x 800 mm) to hold every organ whatever the seed draws.
BIG_SHAPE = (96, 96, 100)
BIG_SPACING = (5.0, 5.0, 8.0)

LIVER, SPLEEN, KIDNEY_L, KIDNEY_R, STOMACH, LUNG, BONE = range(1, 8)


def _world_centroid(labels: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    ijk = np.argwhere(labels == value).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


@pytest.fixture(scope="module")
def big():
    return [make_phantom(seed, BIG_SHAPE, BIG_SPACING) for seed in range(4)]


def test_deterministic_per_seed():
    a = make_phantom(3, (64, 64, 40), (4.0, 4.0, 6.0))
    b = make_phantom(3, (64, 64, 40), (4.0, 4.0, 6.0))
    c = make_phantom(4, (64, 64, 40), (4.0, 4.0, 6.0))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_shapes_dtypes_and_requested_spacing():
    hu, lab, aff = make_phantom(1, (80, 72, 50), (1.5, 1.25, 3.5))
    assert hu.shape == lab.shape == (80, 72, 50)
    assert hu.dtype == np.int16 and lab.dtype == np.uint8
    assert aff.shape == (4, 4) and aff.dtype == np.float64
    np.testing.assert_array_equal(aff[3], [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [1.5, 1.25, 3.5], rtol=1e-12)
    assert abs(np.linalg.det(aff[:3, :3])) == pytest.approx(1.5 * 1.25 * 3.5)
    assert set(np.unique(lab)) <= set(LABELS)
    assert hu.min() >= -1024 and hu.max() <= 3071


def test_default_geometry_drawn_from_seed_and_orientations_vary():
    signs = set()
    for seed in range(12):
        hu, lab, aff = make_phantom(seed)
        assert 96 <= hu.shape[0] <= 256 and 96 <= hu.shape[1] <= 256 and 40 <= hu.shape[2] <= 160
        sp = np.abs(np.diag(aff[:3, :3]))
        np.testing.assert_allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3])))  # axis-aligned
        assert 0.7 <= sp[0] <= 1.5 and sp[0] == sp[1] and 1.5 <= sp[2] <= 5.0
        signs.add(tuple(np.sign(np.diag(aff[:3, :3])).astype(int)))
    assert (1, 1, 1) in signs and (-1, -1, 1) in signs  # RAS-like and LPS-like storage both occur


def test_every_label_present(big):
    for hu, lab, _ in big:
        counts = np.bincount(lab.ravel(), minlength=8)
        assert (counts[1:] > 0).all(), counts
        assert counts[LIVER] > counts[SPLEEN]  # the liver is the largest abdominal organ


def test_hu_ranges_per_tissue(big):
    for hu, lab, _ in big:
        med = {v: float(np.median(hu[lab == v])) for v in range(1, 8)}
        assert 30 <= med[LIVER] <= 130
        assert 20 <= med[SPLEEN] <= 120
        for k in (KIDNEY_L, KIDNEY_R):
            assert 0 <= med[k] <= 180
        assert -950 <= med[STOMACH] <= 80
        assert -900 <= med[LUNG] <= -700
        assert med[BONE] >= 150
        assert np.percentile(hu[lab == BONE], 95) >= 300
        # air outside the body: the corners of the volume
        assert np.median(hu[:4, :4, :]) <= -900
        # some fat (about -100 HU) in the body
        assert ((hu > -150) & (hu < -50) & (lab == 0)).sum() > 1000


def test_noise_level_in_air():
    hu, lab, aff = make_phantom(2, (96, 96, 60), (4.0, 4.0, 8.0))
    # anterior corners (largest world y, extreme x) lie outside the body and away from the table
    j = slice(-6, None) if aff[1, 1] > 0 else slice(0, 6)
    air = hu[:6, j, :].astype(np.float64)
    assert (lab[:6, j, :] == 0).all()
    assert -1024 <= np.median(air) <= -960
    assert 3.0 <= air.std() <= 35.0


def test_anatomy_in_ras(big):
    """RAS x grows towards the patient's Right: liver and right kidney at larger x than spleen/left kidney."""
    for _, lab, aff in big:
        c = {v: _world_centroid(lab, aff, v) for v in (LIVER, SPLEEN, KIDNEY_L, KIDNEY_R, LUNG, BONE)}
        assert c[LIVER][0] > c[SPLEEN][0] + 50.0
        assert c[KIDNEY_R][0] > c[KIDNEY_L][0] + 50.0
        assert c[LUNG][2] > c[LIVER][2]  # lungs above the liver (superior)
        assert c[KIDNEY_L][1] < c[LIVER][1]  # kidneys posterior to the liver


def test_orientation_variants_describe_the_same_anatomy():
    """Whatever the stored orientation, world positions of organs stay anatomically ordered."""
    flipped = 0
    for seed in range(10):
        hu, lab, aff = make_phantom(seed, BIG_SHAPE, BIG_SPACING)
        flipped += aff[0, 0] < 0
        if (lab == LIVER).any() and (lab == SPLEEN).any():
            assert _world_centroid(lab, aff, LIVER)[0] > _world_centroid(lab, aff, SPLEEN)[0]
    assert 0 < flipped < 10


def test_invalid_geometry_rejected():
    with pytest.raises(ValueError):
        make_phantom(0, (10, 10), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        make_phantom(0, (10, 10, 10), (1.0, 0.0, 1.0))
