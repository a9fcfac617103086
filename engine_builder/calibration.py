"""Calibration set: an unlabeled folder of volumes -> preprocessed, cached, hashed ROI patches.

The patches are computed once and feed every backend's quantizer (NNCF for OpenVINO, ModelOpt for
TensorRT) and the build-time accuracy check. Patch centres are drawn mostly from the body (voxels
above -500 HU for CT windows) rather than air, with a fixed seed, so a rebuild sees the same patches.
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
from .io import Volume, read_volume
from .progress import track
from .preprocess import background_value, foreground_threshold, preprocess
from .sanity import check_volume
from .sources import find_volumes, hash_sources, source_name
from .spec import ModelSpec

log = logging.getLogger(__name__)

_FOREGROUND_FRACTION = 0.8  # share of patches centred on body voxels; the rest anywhere


@dataclass
class CalibrationSet:
    """Preprocessed patches ``(N, C, *roi)`` float32, split into quantizer and held-out parts.

    Attributes:
        patches: all patches; ``calibration`` and ``held_out`` are views of it.
        set_hash: SHA-256 over the sources' contents (what the set *is*, independent of paths).
        sources: the volumes used, relative to the folder.
        skipped: ``(name, reason)`` for every file left out.
    """

    patches: np.ndarray
    n_held_out: int
    set_hash: str
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def calibration(self) -> np.ndarray:
        return self.patches[: len(self.patches) - self.n_held_out]

    @property
    def held_out(self) -> np.ndarray:
        return self.patches[len(self.patches) - self.n_held_out :]


def sample_patches(image: np.ndarray, roi: tuple[int, int, int], count: int, rng: np.random.Generator,
                   foreground_above: float, pad_value: float) -> np.ndarray:
    """``count`` ROI patches (C, *roi) from a (C, X, Y, Z) image; centres mostly where channel 0 > threshold.

    An image smaller than the ROI is padded with ``pad_value`` (air), not rejected.
    """
    pad = [(0, 0)] + [((max(r - s, 0)) // 2, max(r - s, 0) - (max(r - s, 0)) // 2) for r, s in zip(roi, image.shape[1:])]
    if any(p != (0, 0) for p in pad):
        image = np.pad(image, pad, constant_values=pad_value)
    shape = np.array(image.shape[1:])
    half = np.array(roi) // 2
    body = np.argwhere(image[0, ::4, ::4, ::4] > foreground_above) * 4
    patches = np.empty((count, image.shape[0], *roi), dtype=np.float32)
    for n in range(count):
        if len(body) and rng.random() < _FOREGROUND_FRACTION:
            centre = body[rng.integers(len(body))]
        else:
            centre = rng.integers(0, shape)
        start = np.clip(centre - half, 0, shape - roi)
        patches[n] = image[(slice(None),) + tuple(slice(s, s + r) for s, r in zip(start, roi))]
    return patches


def build_calibration_set(folder: str | os.PathLike, spec: ModelSpec, patches_per_volume: int = 8,
                          held_out_fraction: float = 0.25, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                          progress: bool = True) -> CalibrationSet:
    """Read every usable volume under ``folder``, preprocess it for ``spec`` and sample patches.

    Unreadable images are reported by name and skipped; no usable volume is an error. The result is cached
    under ``cache_dir`` keyed by the set hash and the spec's preprocessing, so every backend reuses it.
    """
    candidates, skipped = find_volumes(folder)
    if not candidates:
        names = ", ".join(name for name, _ in skipped[:5])
        raise PTQError(f"no volume found in calibration folder {folder} (skipped non-image files: {names}); "
                       "put NIfTI, NRRD or DICOM volumes there")
    for name, reason in skipped:
        log.warning("calibration: skipped %s (%s)", name, reason)
    set_hash = hash_sources(candidates)
    key = hashlib.sha256(f"{set_hash}|{_preprocessing_key(spec)}|{patches_per_volume}|{held_out_fraction}|{seed}".encode()).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"calibration-{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        cached = np.load(cache_file, allow_pickle=False)
        return CalibrationSet(cached["patches"], int(cached["n_held_out"]), set_hash, list(cached["sources"]),
                              [tuple(s) for s in cached["skipped"].reshape(-1, 2)])

    rng = np.random.default_rng(seed)
    all_patches, sources = [], []
    for source in track(candidates, "calibration", enabled=progress, unit="vol"):
        name = source_name(source, folder)
        try:
            volume, warnings = check_volume(read_volume(source), spec, name)
            for warning in warnings:
                log.warning("calibration: %s", warning)
        except PTQError as exc:
            reason = without_subject(str(exc), source.path.name)
            log.warning("calibration: skipped %s (%s)", name, reason)
            skipped.append((name, reason))
            continue
        all_patches.append(_volume_patches(volume, spec, patches_per_volume, rng))
        sources.append(name)
    if not all_patches:
        bad = "; ".join(f"{name}: {reason}" for name, reason in skipped if reason != "not an image")
        raise PTQError(f"no usable volume in calibration folder {folder}: {bad[:300]}")

    # Interleave volumes so that the held-out tail covers several volumes, not only the last one.
    patches = np.stack([p for group in zip(*all_patches) for p in group]) if len(set(map(len, all_patches))) == 1 \
        else np.concatenate(all_patches)
    n_held_out = max(1, int(round(len(patches) * held_out_fraction))) if len(patches) > 1 else 0
    result = CalibrationSet(patches, n_held_out, set_hash, sources, skipped)
    if cache_file is not None:
        _save_atomically(cache_file, result)
    return result


def _volume_patches(volume: Volume, spec: ModelSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    image = preprocess(volume, spec).image.numpy()
    return sample_patches(image, spec.roi_size, count, rng, foreground_threshold(spec.intensity),
                          background_value(spec.intensity))


def _preprocessing_key(spec: ModelSpec) -> str:
    return f"{spec.roi_size}|{spec.spacing_mm}|{spec.orientation}|{spec.intensity}|{spec.in_channels}"


def _save_atomically(path: Path, calibration: CalibrationSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, patches=calibration.patches, n_held_out=calibration.n_held_out,
                     sources=np.array(calibration.sources), skipped=np.array(calibration.skipped, dtype=str).reshape(-1, 2))
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
