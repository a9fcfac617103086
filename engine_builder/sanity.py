"""Checks of an input volume before any work: values a network can read, and a grid that fits in memory.

- **Non-finite voxels** (NaN, ±inf: e.g. the padding of a resampled export) are replaced by the spec's
  background value (air for CT windows, 0 for z-scored MR) with a warning that says how many; a network fed NaN
  returns confident nonsense. A volume that is mostly (over half) non-finite is refused instead: there is
  not enough image to segment.
- **A constant volume** (every voxel the same, e.g. an empty export) is refused: there is nothing to segment.
- **The resampled grid** must fit a memory budget: a small volume with a huge voxel size (a 40x40x30 volume at
  60 mm resamples to 1600^3 at 1.5 mm) would otherwise allocate tens of GB before failing. The estimate covers
  the image on the network grid, the bounded logits buffer and the label maps; the budget defaults to 8 GB or
  80 % of this machine's memory, whichever is smaller, and ``--max-memory-gb`` raises it.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import PTQError
from .io import Volume
from .spec import ModelSpec

DEFAULT_BUDGET_BYTES = 8 << 30
MAX_LOGITS_BYTES = 1 << 30  # the sliding window's logits buffer is bounded to this (inference.py)
_MOSTLY = 0.5


def default_memory_budget() -> int:
    """8 GiB or 80 % of the physical memory, whichever is smaller (bytes)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return DEFAULT_BUDGET_BYTES
    return int(min(DEFAULT_BUDGET_BYTES, 0.8 * physical))


def network_grid_shape(volume: Volume, spec: ModelSpec) -> tuple[int, int, int]:
    """The (approximate) grid size after resampling ``volume`` to the spec's spacing (voxels per axis)."""
    extent_mm = np.asarray(volume.shape) * np.asarray(volume.spacing_mm)
    target = min(spec.spacing_mm)  # the finest target axis: an upper bound whatever the orientation
    return tuple(int(max(np.ceil(e / target), 1)) for e in extent_mm)


def estimated_peak_bytes(volume: Volume, spec: ModelSpec) -> int:
    """Peak memory of segmenting ``volume``: input copies, the network-grid image (resampled, normalised),
    the bounded logits buffer with its weights map, and the label maps (bytes)."""
    grid = int(np.prod(network_grid_shape(volume, spec), dtype=np.int64))
    inputs = int(volume.array.size) * (volume.array.dtype.itemsize + 4 + 2)
    logits = min(grid * 4 * (len(spec.labels) + 1), MAX_LOGITS_BYTES + grid * 4)
    return inputs + grid * (3 * 4 + 2) + logits


def check_volume(volume: Volume, spec: ModelSpec, name: str, memory_budget: int | None = None) -> tuple[Volume, list[str]]:
    """``volume`` ready to segment with ``spec``, and the warnings to show; PTQError when it cannot be.

    Non-finite voxels are replaced (a new array; the caller's is untouched).
    """
    warnings = []
    array = volume.array
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        bad = int(array.size - np.count_nonzero(finite))
        if bad > _MOSTLY * array.size:
            raise PTQError(f"{name}: {bad / array.size:.0%} of its voxels are not numbers (NaN or infinite): "
                           "export the scan again; there is not enough image to segment")
        if bad:
            fill = background_intensity(spec)
            array = np.where(finite, array, np.asarray(fill, dtype=array.dtype))
            volume = Volume(array, volume.affine)
            warnings.append(f"{name}: {bad} voxels ({bad / array.size:.2%}) were NaN or infinite and were set to "
                            f"{fill:g} (background) before segmenting")
    low, high = array.min(), array.max()
    if low == high:
        raise PTQError(f"{name}: every voxel is {low:g}: there is nothing to segment (an empty or blank export?)")
    check_memory(volume, spec, name, memory_budget)
    return volume, warnings


def check_memory(volume: Volume, spec: ModelSpec, name: str, memory_budget: int | None = None) -> None:
    """PTQError when resampling ``volume`` to the spec's grid would exceed the memory budget."""
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    need = estimated_peak_bytes(volume, spec)
    if need > budget:
        grid = "x".join(map(str, network_grid_shape(volume, spec)))
        spacing = "x".join(f"{s:g}" for s in volume.spacing_mm)
        raise PTQError(f"{name}: resampling its {'x'.join(map(str, volume.shape))} voxels of {spacing} mm to "
                       f"{spec.spacing_mm[0]:g} mm gives a {grid} grid that needs about {need / 2**30:.1f} GB, over the "
                       f"{budget / 2**30:.1f} GB budget: check the voxel spacing in the file, or raise --max-memory-gb")


def background_intensity(spec: ModelSpec) -> float:
    """The raw intensity that means "nothing here": the window's lower end for CT (air), -1000 HU for a z-scored CT,
    0 for z-scored MR."""
    if spec.intensity.kind in ("window", "ct_clip_zscore"):
        return float(spec.intensity.a_min)
    return -1000.0 if spec.modality == "CT" and spec.intensity.kind == "zscore_minmax" else 0.0
