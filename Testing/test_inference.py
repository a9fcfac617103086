"""engine_builder.inference: sliding windows, the running argmax, slabs, and the label map on the input grid.

Covers: ``running_argmax`` equals ``torch.argmax`` including ties; ``count_windows`` equals the windows MONAI
really visits; the bounded-memory slab path gives the same labels as one pass; ``segment_volume`` returns the
input's exact shape and affine (also for oblique and smaller-than-ROI inputs) with per-stage timings;
``segment_file`` writes a label file whose geometry equals the input's voxel for voxel. A pointwise "engine"
(logits from each voxel's own intensity) stands in for a network where the test needs labels that are known in
advance; it is a real Engine subclass, not a mock of the code under test. A real TorchEngine of the demo
architecture is used for the slab comparison.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import oblique_affine, write_dicom_series, write_phantom
from engine_builder.backends.base import Engine
from engine_builder.backends.torch_backend import TorchEngine
from engine_builder.inference import (count_windows, label_dtype, predict_labels, running_argmax, segment_file,
                                      segment_volume, StageTimer)
from engine_builder.io import Volume, read_volume
from engine_builder.models import get_spec
from engine_builder.phantom import make_phantom
from engine_builder.preprocess import preprocess

SMALL = dataclasses.replace(get_spec("demo"), roi_size=(32, 32, 32), spacing_mm=(3.0, 3.0, 3.0))  # cheap
LEVELS = np.linspace(0.0, 1.0, len(SMALL.labels))  # label c <=> normalised intensity nearest LEVELS[c]


class PointwiseEngine(Engine):
    """Logits that depend on each voxel alone: label = the nearest of 8 intensity levels."""

    backend, precision = "pointwise", "fp32"

    def __init__(self, batch_size=1):
        self.batch_size = batch_size
        self.calls = 0
        self.windows = 0

    def infer(self, batch):
        self.calls += 1
        self.windows += len(batch)
        assert batch.shape[2:] == SMALL.roi_size and len(batch) <= self.batch_size
        return -((batch - LEVELS[None, :, None, None, None]) ** 2).astype(np.float32)

    def save(self, folder: Path):
        return []


def _expected_labels(image: np.ndarray) -> np.ndarray:
    return np.abs(image[None] - LEVELS[:, None, None, None]).argmin(0)


def test_running_argmax_equals_argmax_with_ties():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.integers(0, 4, size=(8, 20, 21, 22)).astype(np.float32))  # many ties
    for dtype in (np.uint8, np.uint16):
        labels = running_argmax(logits, np.dtype(dtype))
        assert labels.dtype == dtype
        np.testing.assert_array_equal(labels, torch.argmax(logits, 0).numpy())
    assert label_dtype(8) == np.uint8 and label_dtype(256) == np.uint8 and label_dtype(257) == np.uint16


@pytest.mark.parametrize("shape", [(32, 32, 32), (70, 50, 33), (20, 90, 40)])
def test_count_windows_matches_monai(shape):
    engine = PointwiseEngine()
    image = torch.rand(1, *shape)
    predict_labels(image, engine, SMALL, StageTimer())
    assert engine.windows == count_windows(shape, SMALL.roi_size, SMALL.overlap)


def test_labels_are_the_pointwise_truth_and_slabs_change_nothing():
    image = torch.rand(1, 60, 50, 150)
    one_pass = predict_labels(image, PointwiseEngine(batch_size=2), SMALL, StageTimer())
    np.testing.assert_array_equal(one_pass, _expected_labels(image[0].numpy()))
    plane = len(SMALL.labels) * 60 * 50 * 4
    slabbed = predict_labels(image, PointwiseEngine(), SMALL, StageTimer(), max_logits_bytes=plane * 70)
    np.testing.assert_array_equal(slabbed, one_pass)


def test_slabs_agree_with_one_pass_for_a_real_network():
    """A small random conv net (translation-equivariant, receptive field 7): the window layout of the slabs
    differs from one pass, so only voxels near window borders may differ; the slab bookkeeping must not."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 8, 3, padding=1),
                                  torch.nn.ReLU(), torch.nn.Conv3d(8, 8, 3, padding=1))
    engine = TorchEngine(network, "fp32", 2)
    hu, _, affine = make_phantom(3, shape=(40, 40, 50), spacing_mm=(4.0, 4.0, 6.0))
    image = preprocess(Volume(hu, affine), SMALL).image
    assert image.shape[-1] > 90
    one_pass = predict_labels(image, engine, SMALL, StageTimer())
    plane = len(SMALL.labels) * image.shape[1] * image.shape[2] * 4
    slabbed = predict_labels(image, engine, SMALL, StageTimer(), max_logits_bytes=plane * 40)
    assert len(np.unique(one_pass)) > 2
    assert float((slabbed == one_pass).mean()) > 0.99


@pytest.mark.parametrize("kind", ["lps", "oblique", "smaller_than_roi"])
def test_segment_volume_returns_the_input_grid(kind):
    if kind == "smaller_than_roi":
        hu, _, affine = make_phantom(5, shape=(12, 9, 7), spacing_mm=(3.0, 3.0, 3.0))
    else:
        hu, _, affine = make_phantom(2, shape=(50, 44, 30), spacing_mm=(4.0, 4.5, 5.0))
        if kind == "oblique":
            affine = oblique_affine(spacing=(1, 1, 1), angles_deg=(10.0, 5.0, -25.0), flips=(1, 1, 1), origin=(0, 0, 0)) @ affine
    volume = Volume(hu, affine)
    result = segment_volume(volume, PointwiseEngine(), SMALL)
    assert result.labels.shape == volume.shape
    assert result.labels.array.dtype == np.uint8
    np.testing.assert_array_equal(result.labels.affine, volume.affine)
    assert set(result.timings_ms) == {"preprocess", "inference", "argmax", "inverse_resample"}
    assert all(ms >= 0 for ms in result.timings_ms.values())
    # The labels are the pointwise truth of each input voxel's window level (up to resampling at boundaries).
    window = np.clip((hu.astype(np.float64) + 1000) / 2000, 0, 1)
    truth = _expected_labels(window)
    agreement = float((result.labels.array == truth).mean())
    assert agreement > (0.99 if kind == "smaller_than_roi" else 0.8), agreement


def test_segment_file_keeps_geometry_exactly(tmp_path):
    write_phantom(tmp_path / "ct.nrrd", 8, (45, 40, 22), (4.2, 4.2, 7.0))
    result = segment_file(tmp_path / "ct.nrrd", tmp_path / "out" / "seg.nii.gz", PointwiseEngine(), SMALL)
    source = read_volume(tmp_path / "ct.nrrd")
    written = read_volume(tmp_path / "out" / "seg.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    np.testing.assert_array_equal(written.array, result.labels.array)
    assert list(result.timings_ms) == ["read", "preprocess", "inference", "argmax", "inverse_resample", "write"]
    assert result.windows == count_windows(preprocess(source, SMALL).image.shape[1:], SMALL.roi_size, SMALL.overlap)


def test_segment_dicom_series_folder(tmp_path):
    hu, _, affine = make_phantom(9, shape=(48, 44, 14), spacing_mm=(5.0, 5.0, 8.0))
    write_dicom_series(tmp_path / "series", hu, affine)
    result = segment_file(tmp_path / "series", tmp_path / "seg.nrrd", PointwiseEngine(), SMALL)
    written = read_volume(tmp_path / "seg.nrrd")
    assert written.shape == hu.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(written.array, result.labels.array)
