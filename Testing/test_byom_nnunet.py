"""Bring your own model, nnU-Net v2: fidelity against nnunetv2's own predictor, and the folder's bad cases.

The nnU-Net results folder is made in the test by nnunetv2's own code (``Testing/nnunet_reference.py``: a tiny
dataset from TotalSegmentator's example CT and its labels, nnU-Net's fingerprint + planner + preprocessor, two folds
of checkpoints written by ``nnUNetTrainer``; untrained weights with a balanced head bias, see that script). Needs
``nnunetv2`` (``Testing/requirements-nnunet.txt``; CI installs it in a venv layered on .venv) and the shared CTs;
skipped with the reason otherwise.

Fidelity, OpenVINO FP32 engine built with ``--nnunet`` vs ``nnUNetPredictor`` (step 0.5, Gaussian, no mirroring):
- the preprocessed network-grid image equals nnU-Net's (crop, CT normalisation, order-3 resampling with separate z);
- logits on the network grid: relative L2 below 1e-2 away from the image border (OpenVINO f32 vs torch); at the border nnU-Net's float16
  accumulation of Gaussian-weighted logits loses precision where the weight is tiny (the residual, measured);
- label maps: >= 0.99 of voxels equal on a CT at the plans' spacing (example_ct, 3 mm, both folds averaged); on the
  resampled MSD spleen crop, >= 0.999 on the network grid, and the input-grid map equals nnU-Net's network-grid
  labels mapped by nearest voxel (PTQSegment's design; nnU-Net interpolates every class's logits instead).
Bad folders: no plans.json, a missing fold, a cascade configuration, a 2D configuration: one line, exit 2, nothing
written. An INT8 engine builds and segments too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, run_cli, shared_data

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install -r Testing/requirements-nnunet.txt)")
pytest.importorskip("dynamic_network_architectures", reason="dynamic_network_architectures is not installed")

SCRIPT = REPO / "Testing" / "nnunet_reference.py"
FOLDER = "nnUNet_results/Dataset901_PTQTiny/nnUNetTrainer__nnUNetPlans__3d_fullres"


def _script(*args: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory) -> Path:
    data = shared_data("totalsegmentator/example_ct.nii.gz").parent
    root = tmp_path_factory.mktemp("nnunet")
    _script("make", str(root), str(data))
    return root


@pytest.fixture(scope="module")
def model_folder(nnunet_root) -> Path:
    return nnunet_root / FOLDER


def _reference(root: Path, ct: Path, folds: str) -> dict:
    out = root / f"reference_{ct.name.split('.')[0]}_{folds.replace(',', '_')}.npz"
    if not out.exists():
        _script("predict", str(root), str(ct), str(out), folds)
    return dict(np.load(out))


def _engine(tmp_path_factory, folder: Path, folds: list[str], precision: str = "fp32", calib=None):
    from engine_builder.model_source import CustomModel
    from engine_builder.pipeline import BuildRequest, build_engine, open_engine

    out = tmp_path_factory.mktemp("engines") / f"nnunet_{'_'.join(folds)}_{precision}"
    request = BuildRequest(model=CustomModel("nnunet", folder, folds=tuple(folds)), precision=precision, calib=calib,
                           patches_per_volume=2, accuracy_control="off", progress=False)
    result = build_engine(request, out=out, cache_root=out.parent / "cache")
    return result, open_engine(result.engine_dir)


def _network_grid(volume, spec, engine):
    """Preprocessed image and our logits (classes, *grid) from the engine with nnU-Net's tiles."""
    import torch

    from engine_builder.nnunet_steps import sliding_window_nnunet
    from engine_builder.preprocess import preprocess

    prepared = preprocess(volume, spec)
    slabs = {}
    with torch.inference_mode():
        sliding_window_nnunet(torch.as_tensor(np.asarray(prepared.image)), spec.roi_size, len(spec.labels), engine.batch_size,
                              lambda b: engine.infer_torch(b).clone(), lambda s, l: slabs.setdefault(s, l), 1 << 40)
    return prepared, torch.cat([slabs[k] for k in sorted(slabs)], -1).numpy()


def _relative_l2(reference, value, mask=None):
    if mask is not None:
        reference, value = reference[:, mask], value[:, mask]
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def _interior(shape, margin: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(margin, max(margin, s - margin)) for s in shape)] = True
    return mask


@pytest.mark.parametrize("ct_name, folds", [("totalsegmentator/example_ct.nii.gz", ["0", "1"]),
                                            ("msd_spleen/sub-spleen2_ct.nii.gz", ["0"])])
def test_fp32_engine_matches_nnunet_predictor(tmp_path_factory, nnunet_root, model_folder, ct_name, folds):
    from engine_builder.inference import segment_volume
    from engine_builder.io import read_volume
    from engine_builder.preprocess import labels_to_input_grid

    ct = shared_data(ct_name)
    reference = _reference(nnunet_root, ct, ",".join(folds))
    build, (engine, spec, manifest) = _engine(tmp_path_factory, model_folder, folds)
    assert manifest["source"]["kind"] == "nnunet" and manifest["spec"]["arch_args"]["folds"] == len(folds)
    assert {f"fold_{f}" for f in folds} <= set(manifest["source"]["files"])
    volume = read_volume(ct)
    original = volume.array.copy()
    prepared, logits = _network_grid(volume, spec, engine)
    assert np.array_equal(volume.array, original), "preprocessing changed the input volume"
    image_error = _relative_l2(reference["preprocessed"], np.asarray(prepared.image))
    interior = _interior(logits.shape[1:], 16)
    logits_l2, interior_l2 = _relative_l2(reference["logits"], logits), _relative_l2(reference["logits"], logits, interior)
    grid_agreement = float((logits.argmax(0) == reference["logits"].argmax(0)).mean())
    ours = segment_volume(volume, engine, spec).labels.array
    theirs = reference["labels"].transpose(2, 1, 0)  # nnU-Net's [z, y, x] -> [i, j, k]
    agreement = float((ours == theirs).mean())
    nearest = labels_to_input_grid(reference["logits"].argmax(0).astype(np.uint8), prepared.affine, volume.shape,
                                   volume.affine)
    same_as_nearest = float((ours == nearest).mean())
    shares = np.bincount(theirs.ravel(), minlength=len(spec.labels)) / theirs.size
    print(f"\n{ct.name} folds {folds}: image rel L2 {image_error:.2e}, logits rel L2 {logits_l2:.2e} "
          f"(interior {interior_l2:.2e}), grid argmax agreement {grid_agreement:.5f}, label agreement {agreement:.4f}, "
          f"vs nnU-Net grid labels mapped by nearest voxel {same_as_nearest:.5f}, nnU-Net label shares {np.round(shares, 3)}")
    assert image_error < 1e-6
    assert sorted(shares)[-2] > 0.05, "the reference label map is (nearly) constant: the test would mean nothing"
    assert interior_l2 < 1e-2 and logits_l2 < 0.05
    assert grid_agreement >= 0.99
    assert same_as_nearest >= 0.99
    if np.allclose(volume.spacing_mm, spec.spacing_mm):  # no resampling: the label maps themselves must agree
        assert agreement >= 0.99


def test_int8_engine_builds_and_segments(tmp_path_factory, model_folder, calib_dir):
    from engine_builder.inference import segment_volume
    from engine_builder.io import read_volume

    build, (engine, spec, manifest) = _engine(tmp_path_factory, model_folder, ["0"], "int8", calib_dir)
    assert manifest["precision"] == "int8"
    assert manifest["runs_as"]["convolutions_by_precision"].get("u8", 0) + \
        manifest["runs_as"]["convolutions_by_precision"].get("i8", 0) > 0
    labels = segment_volume(read_volume(shared_data("totalsegmentator/example_ct.nii.gz")), engine, spec).labels.array
    assert len(np.unique(labels)) >= 3


def _broken_copy(tmp_path, model_folder, name="nnUNetTrainer__nnUNetPlans__3d_fullres") -> Path:
    copy = tmp_path / "Dataset901_PTQTiny" / name
    shutil.copytree(model_folder, copy)
    return copy


def _build(tmp_path, folder, *args):
    out = tmp_path / "engine"
    return run_cli("build", "--nnunet", str(folder), "--precision", "fp32", "--out", str(out), "--cache",
                   str(tmp_path / "cache"), "--quiet", *args), out


def test_bad_nnunet_folders(tmp_path, model_folder):
    folder = _broken_copy(tmp_path, model_folder)
    result, out = _build(tmp_path, folder, "--fold", "3")
    assert_clean_error(result, "fold_3", "folds present: 0, 1")
    assert not out.exists()

    plans = json.loads((folder / "plans.json").read_text())
    cascade = _broken_copy(tmp_path, model_folder, "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres")
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (cascade / "plans.json").write_text(json.dumps(plans))
    result, out = _build(tmp_path, cascade)
    assert_clean_error(result, "cascade")
    assert not out.exists()

    flat = _broken_copy(tmp_path, model_folder, "nnUNetTrainer__nnUNetPlans__2d")
    plans["configurations"]["2d"] = {"inherits_from": "3d_fullres", "patch_size": [128, 128]}
    (flat / "plans.json").write_text(json.dumps(plans))
    result, out = _build(tmp_path, flat)
    assert_clean_error(result, "2D network")
    assert not out.exists()

    (folder / "plans.json").unlink()
    result, out = _build(tmp_path, folder)
    assert_clean_error(result, "no plans.json")
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
