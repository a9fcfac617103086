"""nnU-Net v2's own preprocessing and sliding window, for specs with ``pipeline="nnunet"``.

A model trained with nnU-Net gives its published results only on inputs prepared the way nnU-Net prepares
them, so these steps follow nnU-Net v2's inference (read from nnunetv2 2.8: ``DefaultPreprocessor``,
``default_resampling``, ``default_normalization_schemes``, ``nnUNetPredictor``), written here with numpy and
scipy only:

- no reorientation: the stored voxel array, in SimpleITK's ``[z, y, x]`` order permuted by the plans'
  ``transpose_forward`` (the spec's ``axis_order`` says which volume axis each network axis is);
- crop to the bounding box of the non-zero voxels (holes filled);
- normalise per nnU-Net's scheme (``Intensity`` kinds ``ct_clip_zscore``, ``nnunet_zscore``, ``none``) before
  resampling;
- resample to the target spacing with order-3 splines (edge mode, clipped to the input range), and when the
  voxels are anisotropic (largest / smallest spacing > 3) in-plane splines slice by slice and nearest
  neighbour along the low-resolution axis;
- tiles placed as nnU-Net places them (``tile_step_size`` 0.5 of the patch, steps spread evenly so that the
  last tile ends at the border), weighted by nnU-Net's Gaussian (a discrete Gaussian filter of a centred
  impulse, sigma 1/8 of the patch), zero padding where the image is smaller than a patch.

Deliberate differences, measured in ``Testing/test_byom_nnunet.py`` and ``docs/models.md``: logits are
accumulated in float32 (nnU-Net: float16), and labels go back to the input grid by nearest network voxel
(nnU-Net: linear resampling of every class's logits, then argmax), which keeps memory at one label volume
instead of classes x input volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from .spec import Intensity, ModelSpec

#: nnU-Net's ``ANISO_THRESHOLD``: spacing ratio above which resampling treats one axis separately.
ANISOTROPY_THRESHOLD = 3.0
#: nnU-Net's default ``tile_step_size`` (fraction of the patch between tile starts).
TILE_STEP = 0.5


@dataclass
class NetworkGrid:
    """The preprocessed image ``(C, *shape)`` float32 and its voxel -> RAS affine."""

    image: torch.Tensor
    affine: np.ndarray


def preprocess_nnunet(array: np.ndarray, affine: np.ndarray, spec: ModelSpec) -> NetworkGrid:
    """``array[i, j, k]`` with voxel -> RAS ``affine`` prepared as nnU-Net prepares it (module docstring)."""
    order = list(spec.axis_order)
    data = np.array(array, dtype=np.float32).transpose(order)  # a copy: normalisation works in place
    grid = np.asarray(affine, dtype=np.float64)[:, order + [3]]
    mask = ndimage.binary_fill_holes(data != 0)
    box = _bounding_box(mask)
    data, mask = data[box], mask[box]
    grid = grid.copy()
    grid[:3, 3] += grid[:3, :3] @ np.array([s.start for s in box], dtype=np.float64)
    data = normalize_nnunet(data, mask, spec.intensity)
    spacing = np.linalg.norm(grid[:3, :3], axis=0)
    new_shape = np.array([int(round(s / t * n)) for s, t, n in zip(spacing, spec.spacing_mm, data.shape)])
    if np.any(new_shape != data.shape):
        factors = np.asarray(data.shape, dtype=np.float64) / new_shape
        data = resample_image(data, tuple(new_shape), spacing, np.asarray(spec.spacing_mm))
        grid[:3, 3] += grid[:3, :3] @ (0.5 * factors - 0.5)  # voxel centres as skimage/scipy grid mode places them
        grid[:3, :3] = grid[:3, :3] @ np.diag(factors)
    return NetworkGrid(torch.from_numpy(np.ascontiguousarray(data))[None], grid)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel (the whole array when none is)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def normalize_nnunet(data: np.ndarray, mask: np.ndarray, intensity: Intensity) -> np.ndarray:
    """nnU-Net's normalisation schemes on float32 ``data`` (in place where nnU-Net works in place)."""
    if intensity.kind == "ct_clip_zscore":  # CTNormalization
        np.clip(data, intensity.a_min, intensity.a_max, out=data)
        data -= intensity.mean
        data /= max(intensity.std, 1e-8)
        return data
    if intensity.kind == "nnunet_zscore":  # ZScoreNormalization
        if intensity.use_mask:
            values = data[mask]
            data[mask] = (values - values.mean()) / max(values.std(), 1e-8)
            return data
        mean, std = data.mean(), data.std()
        data -= mean
        data /= max(std, 1e-8)
        return data
    if intensity.kind == "none":
        return data
    raise ValueError(f"intensity kind {intensity.kind!r} is not one of nnU-Net's schemes")


def _separate_axis(current: np.ndarray, target: np.ndarray) -> int | None:
    """The low-resolution axis nnU-Net resamples on its own (nearest neighbour), or None."""
    for spacing in (current, target):
        if np.max(spacing) / np.min(spacing) > ANISOTROPY_THRESHOLD:
            axes = np.flatnonzero(np.max(spacing) / spacing == 1)
            return int(axes[0]) if len(axes) == 1 else None
    return None


def resample_image(data: np.ndarray, new_shape: tuple[int, ...], spacing: np.ndarray, target: np.ndarray) -> np.ndarray:
    """nnU-Net's image resampling (order 3; separate nearest-neighbour z for anisotropic data), float32 out."""
    source = data.astype(np.float64)
    axis = _separate_axis(spacing, target)
    if axis is None:
        return _spline_resize(source, new_shape).astype(np.float32)
    in_plane = tuple(n for a, n in enumerate(new_shape) if a != axis)
    slices = [_spline_resize(np.take(source, index, axis=axis), in_plane) for index in range(source.shape[axis])]
    stacked = np.stack(slices, axis=axis)
    if stacked.shape[axis] == new_shape[axis]:
        return stacked.astype(np.float32)
    coordinates = np.meshgrid(*[(stacked.shape[a] / n) * (np.arange(n) + 0.5) - 0.5 for a, n in enumerate(new_shape)],
                              indexing="ij")
    return ndimage.map_coordinates(stacked, coordinates, order=0, mode="nearest").astype(np.float32)


def _spline_resize(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """skimage ``resize(order=3, mode="edge", anti_aliasing=False)``: grid-mode spline zoom clipped to the input range."""
    zoom = [n / o for n, o in zip(shape, image.shape)]
    out = ndimage.zoom(image, zoom, order=3, mode="nearest", grid_mode=True)
    return np.clip(out, image.min(), image.max(), out=out)


# ------------------------------------------------------------------------------------------ sliding window
def tile_starts(size: int, tile: int, step: float = TILE_STEP) -> list[int]:
    """nnU-Net's tile positions along one axis of ``size`` voxels (``size >= tile``): evenly spread, first at 0,
    last ending at the border."""
    count = int(np.ceil((size - tile) / (tile * step))) + 1
    if count == 1:
        return [0]
    spacing = (size - tile) / (count - 1)
    return [int(np.round(spacing * i)) for i in range(count)]


@lru_cache(maxsize=4)
def gaussian_weights(tile: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net's importance map: a Gaussian filter (sigma ``sigma_scale`` of the tile) of an impulse at ``n // 2``,
    scaled to a maximum of 1, zeros replaced by the smallest non-zero value. float32."""
    impulse = np.zeros(tile)
    impulse[tuple(n // 2 for n in tile)] = 1
    weights = ndimage.gaussian_filter(impulse, [n * sigma_scale for n in tile], 0, mode="constant", cval=0)
    weights /= weights.max()
    weights[weights == 0] = weights[weights != 0].min()
    return torch.from_numpy(weights.astype(np.float32))


def count_tiles(shape, tile) -> int:
    """How many tiles nnU-Net visits for a grid of ``shape`` (padded to at least one tile)."""
    return int(np.prod([len(tile_starts(max(s, t), t)) for s, t in zip(shape, tile)]))


def sliding_window_nnunet(image: torch.Tensor, tile: tuple[int, int, int], n_classes: int, batch_size: int, predictor,
                          on_slab, max_slab_bytes: int) -> None:
    """Run ``predictor`` over nnU-Net's tiles of ``image`` (C, X, Y, Z) and hand finished logits to ``on_slab``.

    Tiles are visited in order of their start on the last axis; logits are Gaussian-weighted sums divided by the
    summed weights, as nnU-Net computes them. Memory stays bounded: a plane ``z`` is final once the next row of
    tiles starts above it, so finished slabs of at least ``max_slab_bytes`` (or the rest) go to
    ``on_slab(start, logits (classes, X, Y, z1 - z0))`` in order and are dropped. Images smaller than a tile are
    zero-padded (centred, as nnU-Net pads) and the padding is cut off again.
    """
    shape = image.shape[1:]
    padded_shape = [max(s, t) for s, t in zip(shape, tile)]
    before = [(p - s) // 2 for p, s in zip(padded_shape, shape)]
    if padded_shape != list(shape):
        padded = torch.zeros((image.shape[0], *padded_shape), dtype=image.dtype)
        padded[(slice(None), *[slice(b, b + s) for b, s in zip(before, shape)])] = image
        image = padded
    starts = [tile_starts(p, t) for p, t in zip(padded_shape, tile)]
    weights = gaussian_weights(tuple(tile))
    plane_bytes = n_classes * padded_shape[0] * padded_shape[1] * 4
    finisher = _SlabFinisher(on_slab, before, shape, plane_bytes, max_slab_bytes)
    buffer_start, logits, weight_sum = 0, None, None
    for z in starts[2]:
        if logits is not None and z > buffer_start:
            finisher.add(buffer_start, logits[..., : z - buffer_start], weight_sum[..., : z - buffer_start])
            logits, weight_sum = logits[..., z - buffer_start:], weight_sum[..., z - buffer_start:]
            buffer_start = z
        logits, weight_sum = _grow(logits, weight_sum, n_classes, padded_shape, z + tile[2] - buffer_start)
        windows = [(x, y) for x in starts[0] for y in starts[1]]
        for first in range(0, len(windows), batch_size):
            group = windows[first : first + batch_size]
            batch = torch.stack([image[:, x : x + tile[0], y : y + tile[1], z : z + tile[2]] for x, y in group])
            outputs = predictor(batch)
            for (x, y), output in zip(group, outputs):
                region = (slice(x, x + tile[0]), slice(y, y + tile[1]), slice(z - buffer_start, z - buffer_start + tile[2]))
                logits[(slice(None), *region)] += output.float() * weights
                weight_sum[region] += weights
    finisher.add(buffer_start, logits, weight_sum)
    finisher.flush()


def _grow(logits, weight_sum, n_classes: int, shape, depth: int):
    """The accumulators extended (with zeros) to ``depth`` planes on the last axis."""
    if logits is None:
        return (torch.zeros((n_classes, shape[0], shape[1], depth)), torch.zeros((shape[0], shape[1], depth)))
    extra = depth - logits.shape[-1]
    if extra <= 0:
        return logits, weight_sum
    return (torch.cat([logits, torch.zeros((*logits.shape[:-1], extra))], dim=-1),
            torch.cat([weight_sum, torch.zeros((*weight_sum.shape[:-1], extra))], dim=-1))


class _SlabFinisher:
    """Collects finished planes (padded coordinates), divides by the weights, cuts the padding, hands slabs on."""

    def __init__(self, on_slab, before, shape, plane_bytes: int, max_slab_bytes: int):
        self.on_slab, self.before, self.shape = on_slab, before, shape
        self.min_planes = max(1, max_slab_bytes // max(plane_bytes, 1))
        self.pending: list[torch.Tensor] = []
        self.pending_start = None

    def add(self, start: int, logits: torch.Tensor, weight_sum: torch.Tensor) -> None:
        lo = max(start, self.before[2])
        hi = min(start + logits.shape[-1], self.before[2] + self.shape[2])
        if hi <= lo:
            return
        core = (slice(None), slice(self.before[0], self.before[0] + self.shape[0]),
                slice(self.before[1], self.before[1] + self.shape[1]), slice(lo - start, hi - start))
        finished = logits[core] / weight_sum[core[1:]]
        if self.pending_start is None:
            self.pending_start = lo - self.before[2]
        self.pending.append(finished)
        if sum(p.shape[-1] for p in self.pending) >= self.min_planes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            slab = torch.cat(self.pending, dim=-1) if len(self.pending) > 1 else self.pending[0]
            self.on_slab(self.pending_start, slab)
            self.pending_start = self.pending_start + slab.shape[-1]
            self.pending = []
