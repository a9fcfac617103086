"""Calibration set: an unlabeled folder of volumes -> preprocessed, cached, hashed ROI patches, per volume.

The patches are computed once and feed every backend's quantizer (NNCF for OpenVINO, ModelOpt for
TensorRT). They stay grouped by volume: the build-time estimate holds out whole volumes (``estimate.py``),
because patches of a volume the quantizer saw say little about a scan it has not seen. Patch centres are
drawn, with a fixed seed so a rebuild sees the same patches, by one of three ``SAMPLING`` rules:

- ``body`` (default): 80 % centred on body voxels (above -500 HU for CT windows), the rest anywhere;
- ``tissue``: 80 % centred on soft-tissue voxels (-150..250 HU: where organs are), the rest anywhere;
- ``fov``: anywhere in the field of view, air included.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PTQError, without_subject
from .files import partial_path, remove_path, remove_stale_partials
from .io import Source, read_volume
from .progress import track
from .preprocess import background_value, foreground_threshold, normalised_hu, preprocess
from .sanity import check_volume
from .sources import find_volumes, hash_sources, source_name
from .spec import ModelSpec

log = logging.getLogger(__name__)

_FOREGROUND_FRACTION = 0.8  # share of patches centred on the sampling rule's voxels; the rest anywhere
SAMPLING = ("body", "tissue", "fov")
_TISSUE_HU = (-150.0, 250.0)


@dataclass
class CalibrationVolume:
    """One usable volume of the folder: its name (relative to the folder), where it is, its patches (n, C, *roi)."""

    name: str
    source: Source
    patches: np.ndarray


@dataclass
class CalibrationSet:
    """The calibration patches of a folder, grouped by volume.

    Attributes:
        volumes: every usable volume with its patches (in the folder's sorted order).
        set_hash: SHA-256 over the sources' contents (what the set *is*, independent of paths).
        skipped: ``(name, reason)`` for every file left out.
    """

    volumes: list[CalibrationVolume]
    set_hash: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [volume.name for volume in self.volumes]

    @property
    def patches(self) -> np.ndarray:
        """All patches, volumes interleaved (so any prefix covers several volumes)."""
        return self.patches_of(self.names)

    def patches_of(self, names) -> np.ndarray:
        """The patches of the named volumes, interleaved round-robin."""
        groups = [v.patches for v in self.volumes if v.name in set(names)]
        order = [group[i] for i in range(max(map(len, groups), default=0)) for group in groups if i < len(group)]
        return np.stack(order) if order else np.empty((0,), np.float32)


def sample_patches(image: np.ndarray, roi: tuple[int, int, int], count: int, rng: np.random.Generator,
                   foreground_above: float, pad_value: float, foreground_below: float = np.inf) -> np.ndarray:
    """``count`` ROI patches (C, *roi) from a (C, X, Y, Z) image; centres mostly where channel 0 lies in
    (``foreground_above``, ``foreground_below``) (-inf: anywhere).

    An image smaller than the ROI is padded with ``pad_value`` (air), not rejected.
    """
    pad = [(0, 0)] + [((max(r - s, 0)) // 2, max(r - s, 0) - (max(r - s, 0)) // 2) for r, s in zip(roi, image.shape[1:])]
    if any(p != (0, 0) for p in pad):
        image = np.pad(image, pad, constant_values=pad_value)
    shape = np.array(image.shape[1:])
    half = np.array(roi) // 2
    coarse = image[0, ::4, ::4, ::4]
    body = np.argwhere((coarse > foreground_above) & (coarse < foreground_below)) * 4
    patches = np.empty((count, image.shape[0], *roi), dtype=np.float32)
    for n in range(count):
        if len(body) and rng.random() < _FOREGROUND_FRACTION:
            centre = body[rng.integers(len(body))]
        else:
            centre = rng.integers(0, shape)
        start = np.clip(centre - half, 0, shape - roi)
        patches[n] = image[(slice(None),) + tuple(slice(s, s + r) for s, r in zip(start, roi))]
    return patches


def build_calibration_set(folder: str | os.PathLike, spec: ModelSpec, patches_per_volume: int = 8, seed: int = 0,
                          cache_dir: str | os.PathLike | None = None, progress: bool = True,
                          sampling: str = "body") -> CalibrationSet:
    """Read every usable volume under ``folder``, preprocess it for ``spec`` and sample patches from it.

    Unreadable images are reported by name and skipped; no usable volume is an error. The patches are cached
    under ``cache_dir`` keyed by the set hash, the spec's preprocessing and the sampling, so every backend
    (and every rebuild) reuses them.
    """
    if sampling not in SAMPLING:
        raise PTQError(f"unknown patch sampling '{sampling}': choose one of {', '.join(SAMPLING)}")
    candidates, skipped = find_volumes(folder)
    if not candidates:
        names = ", ".join(name for name, _ in skipped[:5])
        raise PTQError(f"no volume found in calibration folder {folder} (skipped non-image files: {names}); "
                       "put NIfTI, NRRD or DICOM volumes there")
    for name, reason in skipped:
        log.warning("calibration: skipped %s (%s)", name, reason)
    set_hash = hash_sources(candidates)
    key = hashlib.sha256(f"{set_hash}|{_preprocessing_key(spec)}|{patches_per_volume}|{seed}|{sampling}|v2".encode()).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"calibration-{key}.npz" if cache_dir else None
    by_name = {source_name(source, folder): source for source in candidates}
    if cache_file is not None and cache_file.exists():
        return _load(cache_file, by_name, set_hash)

    rng = np.random.default_rng(seed)
    volumes = []
    for name, source in track(list(by_name.items()), "calibration", enabled=progress, unit="vol"):
        try:
            volume, warnings = check_volume(read_volume(source), spec, name)
            for warning in warnings:
                log.warning("calibration: %s", warning)
        except PTQError as exc:
            reason = without_subject(str(exc), source.path.name)
            log.warning("calibration: skipped %s (%s)", name, reason)
            skipped.append((name, reason))
            continue
        patches = sample_volume(preprocess(volume, spec).image, spec, patches_per_volume, rng, sampling)
        volumes.append(CalibrationVolume(name, source, patches))
    if not volumes:
        bad = "; ".join(f"{name}: {reason}" for name, reason in skipped if reason != "not an image")
        raise PTQError(f"no usable volume in calibration folder {folder}: {bad[:300]}")
    result = CalibrationSet(volumes, set_hash, skipped)
    if cache_file is not None:
        _save_atomically(cache_file, result)
    return result


def sample_volume(image: np.ndarray, spec: ModelSpec, count: int, rng: np.random.Generator,
                  sampling: str = "body") -> np.ndarray:
    """``count`` patches of a preprocessed (C, X, Y, Z) image by the ``sampling`` rule (module docstring)."""
    intensity = spec.intensity
    low, high = foreground_threshold(intensity), np.inf
    if sampling == "tissue" and intensity.kind == "window":
        low, high = (normalised_hu(hu, intensity) for hu in _TISSUE_HU)
    elif sampling == "fov":
        low = -np.inf
    return sample_patches(image, spec.roi_size, count, rng, low, background_value(intensity), high)


def _preprocessing_key(spec: ModelSpec) -> str:
    return (f"{spec.roi_size}|{spec.spacing_mm}|{spec.orientation}|{spec.intensity}|{spec.in_channels}|"
            f"{spec.pipeline}|{tuple(spec.axis_order)}")


def _load(cache_file: Path, by_name: dict, set_hash: str) -> CalibrationSet:
    cached = np.load(cache_file, allow_pickle=False)
    names, counts = [str(n) for n in cached["names"]], cached["counts"]
    starts = np.concatenate([[0], np.cumsum(counts)])
    volumes = [CalibrationVolume(name, by_name[name], cached["patches"][a:b])
               for name, a, b in zip(names, starts[:-1], starts[1:])]
    return CalibrationSet(volumes, set_hash, [tuple(s) for s in cached["skipped"].reshape(-1, 2)])


def _save_atomically(path: Path, calibration: CalibrationSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, patches=np.concatenate([v.patches for v in calibration.volumes]),
                     counts=np.array([len(v.patches) for v in calibration.volumes]),
                     names=np.array(calibration.names), skipped=np.array(calibration.skipped, dtype=str).reshape(-1, 2))
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
