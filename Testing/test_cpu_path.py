"""The CPU segmentation path computes what MONAI computes, without importing torch or MONAI.

- ``resample.reorient`` + ``zoom_linear`` + ``preprocess.normalize`` against MONAI ``Orientation`` + ``Zoom`` +
  ``ScaleIntensityRange`` (``preprocess_monai``): the same affine, the same grid, voxel values within 1e-5 of the
  normalised range, on phantoms stored RAS, LPS and with reversed slices, and on real CTs (skipped without
  ``../shared/data``).
- ``sliding_window`` against MONAI ``sliding_window_inference``: the same windows in the same order
  (``window_starts``), the same Gaussian weights (``importance_map``), and the same label map for a real
  convolutional network on a real CT, in one pass and when the streaming buffer is cut into slabs.
- A fresh ``ptqseg segment`` process with an OpenVINO engine imports neither torch, nor MONAI, nor NNCF.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, shared_data
from engine_builder.backends.torch_backend import TorchEngine
from engine_builder.inference import _predict_on_device, predict_labels
from engine_builder.io import Volume, read_volume
from engine_builder.models import get_spec
from engine_builder.phantom import make_phantom
from engine_builder.preprocess import preprocess, preprocess_monai
from engine_builder.sliding_window import importance_map, window_starts
from engine_builder.timing import StageTimer

DEMO = get_spec("demo")
SMALL = dataclasses.replace(DEMO, roi_size=(32, 32, 32), spacing_mm=(3.0, 3.0, 3.0))


def _compare_preprocessing(volume: Volume, spec) -> None:
    fast, reference = preprocess(volume, spec), preprocess_monai(volume, spec)
    assert fast.image.shape == reference.image.shape and fast.image.dtype == np.float32
    np.testing.assert_allclose(fast.affine, reference.affine, rtol=0, atol=1e-9)
    assert float(np.abs(fast.image - reference.image).max()) <= 1e-5


@pytest.mark.parametrize("seed", [2, 5, 9, 14])
def test_numpy_preprocessing_equals_monai_on_phantoms(seed):
    hu, _, affine = make_phantom(seed, shape=(60, 52, 24), spacing_mm=(2.7, 3.3, 6.5))
    _compare_preprocessing(Volume(hu, affine), SMALL)
    _compare_preprocessing(Volume(hu, affine), DEMO)


@pytest.mark.parametrize("relative", ["msd_spleen/sub-spleen2_ct.nii.gz", "totalsegmentator/example_ct.nii.gz",
                                      "real_ct/head_ct_invesalius.nii.gz"])
def test_numpy_preprocessing_equals_monai_on_real_ct(relative):
    _compare_preprocessing(read_volume(shared_data(relative)), DEMO)


@pytest.mark.parametrize("shape", [(32, 32, 32), (70, 50, 33), (20, 90, 40), (97, 96, 200)])
def test_windows_and_weights_are_monais(shape):
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    roi = (32, 32, 32) if max(shape) < 96 else (96, 96, 96)
    padded = [max(s, r) for s, r in zip(shape, roi)]
    interval = _get_scan_interval(padded, roi, 3, [0.25] * 3)
    expected = [tuple(s.start for s in window) for window in dense_patch_slices(padded, roi, interval)]
    assert window_starts(padded, roi, 0.25) == expected
    reference = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125).numpy()
    np.testing.assert_allclose(importance_map(roi), reference, rtol=1e-6, atol=0)


def test_sliding_window_labels_equal_monai_on_a_real_ct():
    """A small random convolutional network over the MSD spleen crop at 3 mm: the streamed numpy path and MONAI
    on the CPU give the same label map (ties aside), in one pass and cut into slabs."""
    volume = read_volume(shared_data("msd_spleen/sub-spleen2_ct.nii.gz"))
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 8, 3, padding=1))
    image = preprocess(volume, SMALL).image
    numpy_engine = TorchEngine(network, "fp32", 2)
    streamed = predict_labels(image, numpy_engine, SMALL, StageTimer())
    plane = len(SMALL.labels) * 2 * SMALL.roi_size[0] * image.shape[2] * 4
    slabbed = predict_labels(image, numpy_engine, SMALL, StageTimer(), max_logits_bytes=plane * 40)
    monai_engine = TorchEngine(network, "fp32", 2)
    monai_engine.stitch_device = torch.device("cpu")
    reference = _predict_on_device(torch.from_numpy(image), monai_engine, SMALL, StageTimer(), 1 << 30, False)
    assert len(np.unique(reference)) >= 4
    assert float((streamed == reference).mean()) >= 0.9999
    assert float((slabbed == streamed).mean()) >= 0.98  # slabs move window borders (a random net is border-sensitive)


def test_segment_process_imports_no_torch_monai_or_nncf(int8_build, small_volumes, tmp_path):
    code = ("import sys; from engine_builder.cli import main; "
            f"code = main(['segment', '--engine', {str(int8_build.engine_dir)!r}, '--input', "
            f"{str(small_volumes / 'case_21.nii.gz')!r}, '--output', {str(tmp_path / 'seg.nii.gz')!r}, '--quiet']); "
            "heavy = [m for m in ('torch', 'monai', 'nncf') if m in sys.modules]; print('HEAVY', heavy); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout
    assert (tmp_path / "seg.nii.gz").is_file()
