"""Shared fixtures for the engine_builder test suite.

Everything runs for real: SimpleITK writes and reads files in tmp dirs, OpenVINO compiles, NNCF quantizes.
Session-scoped fixtures keep the suite fast on 2 cores: one calibration folder of three small phantoms,
one INT8 and one FP32 OpenVINO engine of the demo model (built once, with the SHIPPED demo weights) and
one engine cache root. Data from ``../shared/data`` is used where present and skipped (with the reason)
where absent; it is never copied into the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHIPPED_DEMO_WEIGHTS = REPO / "engine_builder" / "models" / "weights" / "demo_unet.pt"

# Geometry of the calibration phantoms: small files (96 x 96 x 48 voxels of 4 x 4 x 6 mm, a 384 x 384 x 288 mm
# field of view) so that writing, reading and preprocessing stay cheap, yet larger than one 96^3 window at the
# demo model's spacing.
PHANTOM_SHAPE = (96, 96, 48)
PHANTOM_SPACING = (4.0, 4.0, 6.0)
CALIB_SEEDS = (11, 12, 13)


def pytest_configure(config):
    # torch's TorchScript ONNX exporter warns about MONAI's shape checks being traced as constants: expected,
    # the exported graphs are static by design.
    config.addinivalue_line("filterwarnings", "ignore::torch.jit.TracerWarning")


def shared_data(relative: str) -> Path:
    """A file or folder under ../shared/data; the test is skipped with the reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


def write_phantom(path: Path, seed: int, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING):
    """Write ``make_phantom(seed)`` as a CT volume at ``path``; returns (hu, labels, affine)."""
    from engine_builder.io import Volume, write_volume
    from engine_builder.phantom import make_phantom

    hu, labels, affine = make_phantom(seed, shape=shape, spacing_mm=spacing)
    write_volume(Volume(hu, affine), path)
    return hu, labels, affine


def oblique_affine(spacing=(0.8, 1.3, 2.5), angles_deg=(17.0, -9.0, 23.0), flips=(-1, 1, -1), origin=(-101.5, 37.25, -412.0)):
    """A voxel-to-RAS affine with anisotropic spacing, axis flips and an oblique rotation."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(np.asarray(flips, float) * np.asarray(spacing, float))
    affine[:3, 3] = origin
    return affine


def write_dicom_series(folder: Path, array: np.ndarray, affine: np.ndarray, series_uid: str = "1.2.826.0.1.3680043.2.1125.77.1") -> list[Path]:
    """Write ``array[i, j, k]`` with voxel-to-RAS ``affine`` as a real DICOM CT series, one file per slice k.

    The geometry goes into the usual tags (Image Position/Orientation (Patient), Pixel Spacing, Series Instance
    UID, Instance Number), in DICOM's LPS frame; slice files are written in shuffled order so that the reader
    must sort them by position.
    """
    import SimpleITK as sitk

    from engine_builder.io import affine_to_geometry

    folder.mkdir(parents=True, exist_ok=True)
    spacing, origin, direction = affine_to_geometry(affine)
    direction = np.asarray(direction).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    order = np.random.default_rng(0).permutation(array.shape[2])
    for k in order:
        plane = sitk.GetImageFromArray(np.ascontiguousarray(array[:, :, k].T.astype(np.int16))[None])  # [1, j, i]
        position = np.asarray(origin) + k * spacing[2] * direction[:, 2]
        orientation = list(direction[:, 0]) + list(direction[:, 1])
        plane.SetSpacing((spacing[0], spacing[1], spacing[2]))  # GDCM takes Pixel Spacing from the image itself
        plane.SetOrigin(tuple(position))
        plane.SetDirection(tuple(direction.ravel()))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0010|0010": "Phantom^Test",
            "0010|0020": "PTQSEG-TEST",
            "0020|000d": series_uid + ".0",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.8f}" for v in orientation),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",  # row spacing (j), column spacing (i)
            "0018|0050": f"{spacing[2]:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        path = folder / f"slice_{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(plane)
        paths.append(path)
    return paths


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m engine_builder.cli ARGS`` in a fresh process (what a user's shell does)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine_builder.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, one clear ``ptqseg: error:`` line on stderr naming ``fragments``, and no traceback."""
    stderr = result.stderr
    assert result.returncode == 2, f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("ptqseg: error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ptqseg-cache")


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """Three small phantoms written as NIfTI: the calibration folder of every engine built here."""
    folder = tmp_path_factory.mktemp("calib")
    for seed in CALIB_SEEDS:
        write_phantom(folder / f"phantom_{seed}.nii.gz", seed)
    return folder


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    """The demo weights that ship with the package. Missing is a FAILURE (they are part of the product)."""
    if not SHIPPED_DEMO_WEIGHTS.is_file():
        pytest.fail(f"the shipped demo weights are missing: {SHIPPED_DEMO_WEIGHTS} (they ship with the project; "
                    "train them with scripts/train_demo_model.py)")
    return SHIPPED_DEMO_WEIGHTS


@pytest.fixture(scope="session")
def demo_request(calib_dir, demo_weights) -> dict:
    """BuildRequest arguments of the session's demo engines (add ``precision=``)."""
    return dict(model="demo", calib=calib_dir, weights=None if demo_weights == SHIPPED_DEMO_WEIGHTS else demo_weights,
                patches_per_volume=2, progress=False)


@pytest.fixture(scope="session")
def int8_build(tmp_path_factory, demo_request, cache_root):
    """The INT8 OpenVINO engine of the demo model (shipped weights), built once."""
    from engine_builder.pipeline import BuildRequest, build_engine

    out = tmp_path_factory.mktemp("engines") / "demo_int8"
    return build_engine(BuildRequest(precision="int8", **demo_request), out=out, cache_root=cache_root)


@pytest.fixture(scope="session")
def fp32_build(tmp_path_factory, demo_request, cache_root):
    """The FP32 OpenVINO engine of the demo model (shipped weights), built once."""
    from engine_builder.pipeline import BuildRequest, build_engine

    out = tmp_path_factory.mktemp("engines") / "demo_fp32"
    return build_engine(BuildRequest(precision="fp32", **demo_request), out=out, cache_root=cache_root)


@pytest.fixture(scope="session")
def int8_engine(int8_build):
    from engine_builder.pipeline import open_engine

    return open_engine(int8_build.engine_dir)


@pytest.fixture(scope="session")
def fp32_engine(fp32_build):
    from engine_builder.pipeline import open_engine

    return open_engine(fp32_build.engine_dir)


@pytest.fixture(scope="session")
def small_volumes(tmp_path_factory) -> Path:
    """Three small phantom CTs (one LPS-stored, one with a reversed slice axis) for segment tests."""
    folder = tmp_path_factory.mktemp("inputs")
    for seed, shape, spacing in ((21, (64, 60, 30), (5.0, 5.5, 7.0)), (22, (70, 64, 26), (4.5, 4.5, 8.0)),
                                 (23, (60, 66, 28), (5.0, 5.0, 7.5))):
        write_phantom(folder / f"case_{seed}.nii.gz", seed, shape, spacing)
    return folder
