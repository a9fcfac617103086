"""What a benchmark runs on: the calibration folder, each model's weights, the whole-volume input, the engines.

Defaults come from ``../shared/data`` beside the repository when present: the 512x512x141 chest CT as the
whole volume, two other real CTs added to synthetic phantoms for calibration (never the whole-volume input).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import PTQError
from .common import BUILDS, LABELS, OV_BF16, RANDOM_WEIGHTS, REPO_ROOT, say

_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CHEST_CT = _SHARED_DATA / "chest_ct" / "lung_ct_phase00.nii.gz"
REAL_CALIBRATION_CTS = (_SHARED_DATA / "totalsegmentator" / "example_ct.nii.gz",
                        _SHARED_DATA / "msd_spleen" / "sub-spleen2_ct.nii.gz")
CALIBRATION_SEEDS = (101, 102, 103, 104)
CHEST_CT_KIND = "chest CT (real; a training volume of the demo model, not in its calibration)"


@dataclass(frozen=True)
class Weights:
    """A registry model's weights for the benchmark: ``path`` None means random init (speed and size only)."""

    spec: object
    path: Path | None
    note: str

    @property
    def trained(self) -> bool:
        return self.path is not None


def weights_for(name: str) -> Weights:
    """Packaged weights, or a MONAI bundle already in the cache (no download during a benchmark), else random."""
    from ..artifact import default_cache_root
    from ..files import file_sha256
    from ..models import get_spec
    from ..weights import find_bundle, resolve_weights

    spec = get_spec(name)
    if spec.weights.kind == "packaged":
        try:
            path = resolve_weights(spec)
            return Weights(spec, path, f"{path.name} (sha256 {file_sha256(path)[:12]})")
        except PTQError:
            pass
    elif spec.weights.kind == "monai_bundle":
        if (default_cache_root() / "bundles" / spec.weights.name / spec.weights.path).is_file():
            return Weights(spec, find_bundle(spec) / spec.weights.path, f"MONAI bundle {spec.weights.name}")
    return Weights(spec, None, RANDOM_WEIGHTS)


def calibration_folder(calib, cache_root: Path, volume) -> tuple[Path, dict]:
    """The user's folder, or synthetic phantoms + the shared real CTs other than the whole-volume input."""
    if calib is not None:
        folder = Path(calib)
        if not folder.is_dir():
            raise PTQError(f"calibration folder {folder} does not exist")
        return folder, {"folder": str(folder), "kind": "user folder"}
    from ..demo import make_phantom_files

    folder = cache_root / "bench-calibration"
    make_phantom_files(folder, CALIBRATION_SEEDS)
    excluded = Path(volume).resolve() if volume else CHEST_CT.resolve()
    real = []
    for path in REAL_CALIBRATION_CTS:
        if path.is_file() and path.resolve() != excluded:
            copy = folder / f"real_{path.name}"
            if not copy.exists():
                shutil.copyfile(path, copy)
            real.append(path.name)
    return folder, {"folder": str(folder), "kind": "default",
                    "synthetic_phantoms": [f"phantom seed {s}" for s in CALIBRATION_SEEDS], "real_ct": real}


def volume_input(volume, cache_root: Path) -> tuple[Path, str]:
    """(path, kind) of the whole-volume input: the user's, else the chest CT, else a 512x512x141 phantom."""
    if volume is not None:
        path = Path(volume)
        if not path.exists():
            raise PTQError(f"volume {path} not found")
        real = CHEST_CT.exists() and path.resolve() == CHEST_CT.resolve()
        return path, CHEST_CT_KIND if real else "user volume"
    if CHEST_CT.is_file():
        return CHEST_CT, CHEST_CT_KIND
    from ..io import Volume, write_volume
    from ..phantom import make_phantom

    path = cache_root / "bench-volume" / "phantom_512x512x141.nii.gz"
    if not path.exists():
        say("the chest CT is not here: making a 512x512x141 phantom instead")
        hu, _, affine = make_phantom(7, shape=(512, 512, 141))
        write_volume(Volume(hu, affine), path)
    return path, "synthetic phantom (the chest CT was not found)"


def backend_keys() -> list[str]:
    """The engines compared on this machine: bf16 only where OpenVINO's CPU plugin offers it."""
    from ..backends.openvino import cpu_has_bf16

    return [key for key in BUILDS if key != OV_BF16 or cpu_has_bf16()]


def build_engines(weights: Weights, calib_folder: Path, keys: list[str], threads: int | None, cache_root: Path,
                  progress: bool, options: dict | None = None) -> dict:
    """``ptqseg build`` of each engine (the engine cache reuses finished ones): {key: BuildResult}.

    OpenVINO engines get the calibration folder (INT8 needs it; bf16 gets the held-out agreement estimate);
    the torch FP32 engine is the network's state dict, what a user runs without this project. ``options``:
    further ``BuildRequest`` fields (none: what ``ptqseg build`` does by default).
    """
    from ..pipeline import BuildRequest, build_engine

    builds = {}
    for key in keys:
        backend, precision = BUILDS[key]
        request = BuildRequest(model=weights.spec.name, calib=calib_folder if backend == "openvino" else None,
                               weights=weights.path, backend=backend, precision=precision, threads=threads,
                               allow_random_weights=not weights.trained, progress=progress, **(options or {}))
        started = time.perf_counter()
        builds[key] = build_engine(request, cache_root=cache_root)
        say(f"  {weights.spec.name} {LABELS[key]}: {'cache hit' if builds[key].cache_hit else 'built'} in "
            f"{time.perf_counter() - started:.1f} s ({builds[key].engine_dir})")
    return builds
