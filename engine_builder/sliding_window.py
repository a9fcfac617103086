"""Sliding-window segmentation in numpy, for engines that take and return numpy arrays (OpenVINO on the CPU).

The same windows, Gaussian blending weights and accumulation order as MONAI's ``sliding_window_inference``
(``mode="gaussian"``, constant padding), tested against it, without importing torch or MONAI (seconds of every
fresh ``ptqseg segment`` process). Two differences, both invisible in the label map:

- argmax of the weighted sum instead of the weighted mean: dividing every class by the same positive weight
  does not change which class is largest (up to float ties);
- the sum streams along the first axis: windows come in MONAI's order (first axis slowest), and once no later
  window reaches a plane its argmax is taken and its buffer reused, so memory holds about
  ``classes x (window + step) x Y x Z`` floats instead of the whole logits volume.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .progress import Counter


def importance_map(roi, sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's Gaussian window weights (``compute_importance_map``): sigma = 0.125 x window, floored at
    max(min weight, 1e-3), float32."""
    weights = None
    for size in roi:
        x = np.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x**2 / np.float32(-2 * (size * sigma_scale) ** 2)).astype(np.float32)
        weights = g if weights is None else weights[..., None] * g
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def window_starts(shape, roi, overlap: float) -> list[tuple[int, ...]]:
    """Window corners in MONAI's order (``dense_patch_slices`` with its scan interval), first axis slowest."""
    axes = []
    for size, window in zip(shape, roi):
        interval = window if window == size else max(int(window * (1 - overlap)), 1)
        count = next((d for d in range(int(math.ceil(size / interval))) if d * interval + window >= size), 0) + 1
        axes.append([i * interval - max(i * interval + window - size, 0) for i in range(count)])
    grid = np.meshgrid(*axes, indexing="ij")
    return [tuple(int(v) for v in point) for point in np.stack([g.ravel() for g in grid], axis=1)]


def count_windows(shape, roi, overlap: float) -> int:
    """Number of sliding windows MONAI visits for a grid of ``shape`` (padded up to the ROI)."""
    return len(window_starts([max(s, r) for s, r in zip(shape, roi)], roi, overlap))


def segment_image(image: np.ndarray, infer: Callable[[np.ndarray], np.ndarray], roi, overlap: float, n_classes: int,
                  batch_size: int = 1, pad_value: float = 0.0, label_dtype=np.uint8, progress: Counter | None = None,
                  on_window: Callable[[tuple, np.ndarray], None] | None = None, argmax_timer=None) -> np.ndarray:
    """Labels (X, Y, Z) of a preprocessed (C, X, Y, Z) float32 image.

    ``infer(batch (b, C, *roi)) -> logits (b, n_classes, *roi)``; the logits may be a buffer the next call
    overwrites (they are consumed at once). ``argmax_timer`` (a ``timing.StageTimer``) times the argmax as stage
    ``argmax``.
    """
    shape = image.shape[1:]
    pads = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(shape, roi)]
    if any(p != (0, 0) for p in pads):
        image = np.pad(image, [(0, 0), *pads], constant_values=pad_value)
    padded = image.shape[1:]
    starts = window_starts(padded, roi, overlap)
    weights = importance_map(roi)
    first_starts = sorted({s[0] for s in starts})
    span = roi[0] + max((b - a for a, b in zip(first_starts, first_starts[1:])), default=0)
    ring = np.zeros((n_classes, span, *padded[1:]), dtype=np.float32)
    labels = np.empty(padded, dtype=label_dtype)
    done = 0  # planes [0, done) of the first axis are final
    for i in range(0, len(starts), batch_size):
        group = starts[i : i + batch_size]
        batch = np.stack([image[(slice(None), *(slice(s, s + r) for s, r in zip(start, roi)))] for start in group])
        logits = infer(batch)
        for start, window in zip(group, logits[: len(group)]):
            window *= weights
            _add(ring, window, start, roi, span)
            if on_window is not None:
                on_window(start, window)
        if progress is not None:
            progress.step(len(group))
        following = starts[i + batch_size][0] if i + batch_size < len(starts) else padded[0]
        if following > done:
            if argmax_timer is None:
                _finish(ring, labels, done, following, span)
            else:
                with argmax_timer.stage("argmax"):
                    _finish(ring, labels, done, following, span)
            done = following
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pads, shape))
    return labels[crop]


def _rows(start: int, length: int, span: int) -> list[tuple[slice, slice]]:
    """(ring rows, window rows) of planes [start, start + length) in a ring buffer of ``span`` planes."""
    first = start % span
    head = min(length, span - first)
    parts = [(slice(first, first + head), slice(0, head))]
    if head < length:
        parts.append((slice(0, length - head), slice(head, length)))
    return parts


def _add(ring: np.ndarray, window: np.ndarray, start, roi, span: int) -> None:
    rest = tuple(slice(s, s + r) for s, r in zip(start[1:], roi[1:]))
    for ring_rows, window_rows in _rows(start[0], roi[0], span):
        ring[(slice(None), ring_rows, *rest)] += window[:, window_rows]


def _finish(ring: np.ndarray, labels: np.ndarray, first: int, stop: int, span: int) -> None:
    """Argmax of planes [first, stop) into ``labels``, then clear their ring rows for reuse."""
    for ring_rows, offsets in _rows(first, stop - first, span):
        block = ring[:, ring_rows]
        labels[first + offsets.start : first + offsets.stop] = np.argmax(block, axis=0)
        block.fill(0.0)
