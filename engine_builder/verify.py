"""The per-scan check (``ptqseg segment --verify N``): does INT8 segment *this* scan like FP32?

After the quantized engine has segmented a scan, N windows of that very scan are run through the quantized
engine and through the FP32 reference graph the engine carries, and their label maps are compared
(``agreement.compare_labels``: foreground agreement and per-label Dice) on each window's core, the part the
stitched segmentation takes from that window alone (``backends.base.window_core``). The windows are placed where
the quantized labels are foreground (where a flip would matter), on a half-window grid, chosen greedily to cover
the most foreground not yet covered, deterministic. The cost is N windows of each engine (timed
and reported).
"""

from __future__ import annotations

import time

import numpy as np

from .agreement import compare_labels, min_voxels
from .backends.base import window_core
from .preprocess import background_value
from .spec import ModelSpec


def choose_windows(labels: np.ndarray, roi, count: int, core: tuple[slice, ...] | None = None,
                   step: int = 2) -> list[tuple[int, int, int]]:
    """Start corners of up to ``count`` ROI windows over ``labels`` (network grid), chosen greedily to cover the
    most foreground not yet covered (counted in each window's ``core``, default the whole window, on a grid
    subsampled by ``step``): the first window goes where the foreground is densest, the next ones to other
    organs rather than beside the first."""
    shape = np.array(labels.shape)
    roi = np.minimum(np.array(roi), shape)
    core = core or tuple(slice(0, r) for r in roi)
    core_lo = np.array([min(c.start, r - 1) for c, r in zip(core, roi)])
    core_hi = np.array([max(min(c.stop, r), lo + 1) for c, r, lo in zip(core, roi, core_lo)])
    axes = [sorted({*range(0, max(n - r, 0) + 1, max(r // 2, 1)), max(n - r, 0)}) for n, r in zip(shape, roi)]
    starts = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T
    lows, highs = -(-(starts + core_lo) // step), -(-(starts + core_hi) // step)  # ceil: the subsampled core
    uncovered = labels[::step, ::step, ::step] > 0
    chosen: list[tuple[int, int, int]] = []
    while len(chosen) < count:
        counts = _box_sums(uncovered, lows, highs)
        best = int(np.lexsort((np.arange(len(counts)), -counts))[0])
        if counts[best] == 0 and chosen:
            break
        chosen.append(tuple(int(v) for v in starts[best]))
        uncovered[tuple(slice(a, b) for a, b in zip(lows[best], highs[best]))] = False
        if counts[best] == 0:
            break
    return chosen


def _box_sums(mask: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Number of True voxels of ``mask`` in each box [low, high) (an integral image, clipped to the mask)."""
    integral = np.pad(mask.astype(np.int64), ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    a = np.minimum(lows, mask.shape)
    b = np.minimum(highs, mask.shape)
    x0, y0, z0 = a.T
    x1, y1, z1 = b.T
    return (integral[x1, y1, z1] - integral[x0, y1, z1] - integral[x1, y0, z1] - integral[x1, y1, z0]
            + integral[x0, y0, z1] + integral[x0, y1, z0] + integral[x1, y0, z0] - integral[x0, y0, z0])


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


def scan_check(engine_dir, engine, spec: ModelSpec, manifest: dict, windows: int, min_agreement: float | None = None,
               threads: int | None = None):
    """``verify_scan`` bound to an engine and the FP32 reference it carries, for ``segment_file(check=...)``; None
    for ``windows == 0``. The threshold defaults to the engine's build threshold (0.98)."""
    if not windows:
        return None
    from functools import partial

    from .engines import open_reference
    from .errors import PTQError

    if windows < 1:
        raise PTQError(f"--verify takes a number of windows (1 or more), not {windows}")
    reference = open_reference(engine_dir, manifest, threads)
    threshold = min_agreement if min_agreement is not None else float((manifest.get("accuracy") or {}).get("min_agreement", 0.98))
    return partial(verify_scan, engine=engine, reference=reference, spec=spec, windows=windows, min_agreement=threshold)
