"""Spec -> preprocessing (MONAI's, or its numpy equal), and its exact inverse for the predicted label map.

Forward: reorient to the spec's axis codes (or keep the stored order), resample to the spec's spacing
(linear), normalise intensities, then put the axes in the spec's ``axis_order``; specs with
``pipeline="nnunet"`` go through nnU-Net's own steps instead (``nnunet_steps``). Axis-aligned scans (all that
are not oblique) take the numpy path of ``resample.py`` + the normalisation below, which computes what MONAI's
``Orientation``, ``Zoom`` and ``ScaleIntensityRange`` / ``NormalizeIntensity(nonzero=True)`` compute (tested
against them on real CTs) without importing torch or MONAI; oblique ones go through MONAI (``Spacing``'s grid
sampling). Inverse: every voxel of the *input* grid takes the label of the nearest voxel of the network grid.
The result therefore has exactly the input's shape and affine by construction, with no second resampling of
the image. When the two grids differ only by axis permutation, flips and scaling (every reorient + respacing
does), the nearest-voxel map is separable and costs one fancy index; an oblique pair of grids falls back to a
slab-wise general mapping.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .io import Volume
from .resample import axis_codes, reorient, zoom_linear
from .spec import STORED, Intensity, ModelSpec


@dataclass
class Preprocessed:
    """The network-grid image: ``image`` (C, X, Y, Z) float32 array and its voxel -> RAS ``affine``."""

    image: np.ndarray
    affine: np.ndarray


def preprocess(volume: Volume, spec: ModelSpec) -> Preprocessed:
    """Reorient, resample to ``spec.spacing_mm`` and normalise ``volume`` (numpy, MONAI for oblique grids, or
    nnU-Net's steps for ``pipeline="nnunet"`` specs)."""
    if spec.pipeline == "nnunet":
        from .nnunet_steps import preprocess_nnunet

        grid = preprocess_nnunet(volume.array, volume.affine, spec)
        return Preprocessed(np.asarray(grid.image), grid.affine)
    image = np.asarray(volume.array, dtype=np.float32)[None]
    affine = volume.affine
    if spec.orientation != STORED:
        if axis_codes(affine) is None:
            return preprocess_monai(volume, spec)
        image, affine = reorient(image, affine, spec.orientation)
    current = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(current, spec.spacing_mm, rtol=1e-3):
        if _axis_permutation(affine[:3, :3]) != (0, 1, 2):
            return preprocess_monai(volume, spec)
        image, affine = zoom_linear(image, affine, current / np.asarray(spec.spacing_mm))
    image = normalize(np.ascontiguousarray(image, dtype=np.float32), spec.intensity)
    return _axis_order(image, affine, spec)


def preprocess_monai(volume: Volume, spec: ModelSpec) -> Preprocessed:
    """The same with MONAI's transforms (oblique grids, and the reference the numpy path is tested against).

    Axis-aligned grids resample with MONAI ``Zoom`` (``torch.nn.functional.interpolate`` over the whole field of
    view: about 10x faster than ``Spacing``'s grid sampling); the output size is rounded, so the spacing is within
    half a voxel over the extent of the target; the affine records the exact value, which the inverse uses.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import NormalizeIntensity, Orientation, ScaleIntensity, ScaleIntensityRange, Spacing, Zoom

    image = MetaTensor(torch.from_numpy(np.asarray(volume.array, dtype=np.float32))[None], affine=torch.from_numpy(volume.affine))
    if spec.orientation != STORED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI's notice about Orientation's label default
            image = Orientation(axcodes=spec.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
    linear = image.affine.numpy()[:3, :3]
    current = np.linalg.norm(linear, axis=0)
    if not np.allclose(current, spec.spacing_mm, rtol=1e-3):
        if _axis_permutation(linear) == (0, 1, 2):
            image = Zoom(zoom=tuple(current / np.asarray(spec.spacing_mm)), keep_size=False, mode="trilinear")(image)
        else:
            image = Spacing(pixdim=spec.spacing_mm, mode="bilinear", padding_mode="border")(image)
    affine = image.affine.numpy().astype(np.float64)
    intensity = spec.intensity
    data = image.as_tensor().float()
    if intensity.kind == "window":
        data = ScaleIntensityRange(intensity.a_min, intensity.a_max, intensity.b_min, intensity.b_max, clip=True)(data)
    elif intensity.kind == "zscore":
        data = NormalizeIntensity(nonzero=True)(data)
    elif intensity.kind == "zscore_minmax":
        data = ScaleIntensity(minv=intensity.b_min, maxv=intensity.b_max)(NormalizeIntensity(nonzero=True)(data))
    else:
        return _axis_order(normalize(np.ascontiguousarray(data.numpy()), intensity), affine, spec)
    return _axis_order(np.ascontiguousarray(data.numpy()), affine, spec)


def _axis_order(image: np.ndarray, affine: np.ndarray, spec: ModelSpec) -> Preprocessed:
    """Put the network grid's axes in the spec's ``axis_order`` (affine columns follow)."""
    if tuple(spec.axis_order) != (0, 1, 2):
        order = list(spec.axis_order)
        image, affine = np.ascontiguousarray(image.transpose(0, *[a + 1 for a in order])), affine[:, order + [3]]
    return Preprocessed(image, np.asarray(affine, dtype=np.float64))


def normalize(image: np.ndarray, intensity: Intensity) -> np.ndarray:
    """Intensity normalisation of the spec, in float32 as MONAI computes it (in place where it can); nnU-Net's
    schemes through ``nnunet_steps``."""
    if intensity.kind == "window":
        image -= np.float32(intensity.a_min)
        image /= np.float32(intensity.a_max - intensity.a_min)
        image *= np.float32(intensity.b_max - intensity.b_min)
        image += np.float32(intensity.b_min)
        return np.clip(image, intensity.b_min, intensity.b_max, out=image)
    if intensity.kind in ("zscore", "zscore_minmax"):
        nonzero = image != 0
        values = image[nonzero]
        if values.size:
            std = float(values.std())
            image[nonzero] = (values - np.float32(values.mean())) / np.float32(std if std != 0.0 else 1.0)
        return image if intensity.kind == "zscore" else _min_max(image, intensity.b_min, intensity.b_max)
    from scipy.ndimage import binary_fill_holes

    from .nnunet_steps import normalize_nnunet

    masks = [binary_fill_holes(channel != 0) for channel in image]
    return np.stack([normalize_nnunet(c, m, intensity) for c, m in zip(image, masks)]).astype(np.float32)


def _min_max(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """The image's minimum..maximum scaled linearly to low..high, in place (MONAI ``ScaleIntensity``). A constant
    image, which the input checks refuse before this, becomes all ``low``."""
    lo, hi = float(image.min()), float(image.max())
    image -= np.float32(lo)
    if hi > lo:
        image /= np.float32(hi - lo)
    image *= np.float32(high - low)
    image += np.float32(low)
    return image


def background_value(intensity: Intensity) -> float:
    """The normalised value of air/empty space: used to pad patches and small volumes."""
    if intensity.kind in ("window", "zscore_minmax"):  # zscore_minmax: air is the image's minimum
        return float(intensity.b_min)
    if intensity.kind == "ct_clip_zscore":
        return float((intensity.a_min - intensity.mean) / intensity.std)
    return 0.0


def foreground_threshold(intensity: Intensity) -> float:
    """Normalised value above which a voxel is body rather than air (-500 HU for CT windows)."""
    if intensity.kind == "ct_clip_zscore":
        return float((np.clip(-500.0, intensity.a_min, intensity.a_max) - intensity.mean) / intensity.std)
    if intensity.kind == "zscore_minmax":  # air sits at the minimum; body is well above a tenth of the range
        return float(intensity.b_min + 0.1 * (intensity.b_max - intensity.b_min))
    return normalised_hu(-500.0, intensity) if intensity.kind == "window" else 0.0


def normalised_hu(hu: float, intensity: Intensity) -> float:
    """Where a raw value (HU for CT) lands after a window normalisation (clipped to the window)."""
    fraction = (hu - intensity.a_min) / (intensity.a_max - intensity.a_min)
    return float(intensity.b_min + np.clip(fraction, 0.0, 1.0) * (intensity.b_max - intensity.b_min))


def labels_to_input_grid(labels: np.ndarray, labels_affine: np.ndarray, input_shape, input_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour map of ``labels`` (network grid) onto the input grid (shape and affine of the input).

    Input voxels whose centre falls outside the network grid get label 0.
    """
    voxel_map = np.linalg.inv(labels_affine) @ np.asarray(input_affine, dtype=np.float64)  # input ijk -> label ijk
    padded = np.pad(labels, 1)  # a zero border: out-of-grid indices are clipped onto it
    permutation = _axis_permutation(voxel_map[:3, :3])
    if permutation is not None:
        index = []
        for input_axis, label_axis in enumerate(permutation):
            positions = voxel_map[label_axis, input_axis] * np.arange(input_shape[input_axis]) + voxel_map[label_axis, 3]
            index.append(np.clip(np.rint(positions).astype(np.int64) + 1, 0, padded.shape[label_axis] - 1))
        return padded.transpose(permutation)[np.ix_(*index)]
    return _general_map(padded, voxel_map, input_shape)


def _axis_permutation(linear: np.ndarray, tol: float = 1e-6):
    """For a scaled permutation matrix, ``perm[input_axis] = label_axis``; None when oblique."""
    nonzero = np.abs(linear) > tol * np.abs(linear).max()
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        return None
    return tuple(int(np.argmax(nonzero[:, a])) for a in range(3))


def _general_map(padded: np.ndarray, voxel_map: np.ndarray, input_shape, slab: int = 8) -> np.ndarray:
    out = np.empty(input_shape, dtype=padded.dtype)
    ii, jj = np.meshgrid(np.arange(input_shape[0]), np.arange(input_shape[1]), indexing="ij")
    limits = np.array(padded.shape)[:, None] - 1
    for k0 in range(0, input_shape[2], slab):
        ks = np.arange(k0, min(k0 + slab, input_shape[2]))
        grid = np.stack([np.repeat(ii[..., None], len(ks), 2), np.repeat(jj[..., None], len(ks), 2),
                         np.broadcast_to(ks, ii.shape + (len(ks),))]).reshape(3, -1)
        mapped = voxel_map[:3, :3] @ grid + voxel_map[:3, 3:4]
        index = np.clip(np.rint(mapped).astype(np.int64) + 1, 0, limits)
        out[:, :, ks] = padded[index[0], index[1], index[2]].reshape(input_shape[0], input_shape[1], len(ks))
    return out
