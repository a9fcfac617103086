"""The per-scan check (``ptqseg segment --verify N``): does INT8 segment *this* scan like FP32?

After the quantized engine has segmented a scan, N windows of that very scan are run through the quantized
engine and through the FP32 reference graph the engine carries, and their label maps are compared
(``agreement.compare_labels``: foreground agreement and per-label Dice) on each window's core, the part the
stitched segmentation takes from that window alone (``backends.base.window_core``). The windows are placed where
the quantized labels are foreground (where a flip would matter), on a half-window grid, most foreground first,
overlapping each other by at most half a window, deterministic. The cost is N windows of each engine (timed
and reported).
"""

from __future__ import annotations

import time

import numpy as np

from .agreement import compare_labels, min_voxels
from .backends.base import window_core
from .preprocess import background_value
from .spec import ModelSpec


def choose_windows(labels: np.ndarray, roi, count: int, core: tuple[slice, ...] | None = None) -> list[tuple[int, int, int]]:
    """Start corners of up to ``count`` ROI windows over ``labels`` (network grid), most foreground (in the
    window's ``core``, default the whole window) first."""
    shape = np.array(labels.shape)
    roi = np.minimum(np.array(roi), shape)
    core = core or tuple(slice(0, r) for r in roi)
    core_lo = np.array([min(c.start, r - 1) for c, r in zip(core, roi)])
    core_hi = np.array([max(min(c.stop, r), lo + 1) for c, r, lo in zip(core, roi, core_lo)])
    axes = [sorted({*range(0, max(n - r, 0) + 1, max(r // 2, 1)), max(n - r, 0)}) for n, r in zip(shape, roi)]
    integral = np.pad((labels > 0).astype(np.int64), ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    candidates = []
    for start in np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T:
        a, b = start + core_lo, start + core_hi
        box = (integral[b[0], b[1], b[2]] - integral[a[0], b[1], b[2]] - integral[b[0], a[1], b[2]] - integral[b[0], b[1], a[2]]
               + integral[a[0], a[1], b[2]] + integral[a[0], b[1], a[2]] + integral[b[0], a[1], a[2]] - integral[a[0], a[1], a[2]])
        candidates.append((int(box), tuple(int(v) for v in start)))
    candidates.sort(key=lambda item: (-item[0], item[1]))
    chosen: list[tuple[int, int, int]] = []
    for foreground, start in candidates:
        if len(chosen) == count or foreground == 0 and chosen:
            break
        if all(_overlap(start, other, roi) <= 0.5 for other in chosen):
            chosen.append(start)
    return chosen


def _overlap(a, b, roi) -> float:
    """Shared fraction of two equal windows."""
    return float(np.prod([max(r - abs(x - y), 0) / r for x, y, r in zip(a, b, roi)]))


def verify_scan(image, labels: np.ndarray, engine, reference, spec: ModelSpec, windows: int,
                min_agreement: float = 0.98) -> dict:
    """Compare ``engine`` with ``reference`` on ``windows`` windows of a preprocessed (C, X, Y, Z) image."""
    started = time.perf_counter()
    image = np.asarray(image, dtype=np.float32)
    pad = [(0, 0)] + [(0, max(r - n, 0)) for r, n in zip(spec.roi_size, image.shape[1:])]
    if any(p != (0, 0) for p in pad):  # a volume smaller than one window: padded like the sliding window pads it
        image = np.pad(image, pad, constant_values=background_value(spec.intensity))
        labels = np.pad(labels, pad[1:])
    core = window_core(spec.roi_size, spec.overlap)
    starts = choose_windows(labels, spec.roi_size, windows, core)
    ours, theirs = [], []
    for start in starts:
        window = image[(slice(None), *(slice(s, s + r) for s, r in zip(start, spec.roi_size)))][None]
        ours.append(engine.infer_labels(window)[0])
        theirs.append(reference.infer_labels(window)[0])
    cores = (slice(None), *core)
    figures = compare_labels(np.stack(theirs)[cores], np.stack(ours)[cores], spec.label_names, min_voxels(spec.spacing_mm))
    return {"windows": len(starts), **figures, "min_agreement": float(min_agreement),
            "passed": figures["foreground_agreement"] >= min_agreement,
            "seconds": round(time.perf_counter() - started, 3)}
