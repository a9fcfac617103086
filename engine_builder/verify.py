"""The per-scan check (``ptqseg segment --verify N``): does INT8 segment *this* scan like FP32?

After the quantized engine has segmented a scan, N windows of that very scan run through the FP32 reference graph
the engine carries, and their labels are compared (``agreement.compare_labels``: foreground agreement and per-label
Dice) with the quantized engine's. For MONAI-pipeline models the N windows are the sliding window's own, those with
the most quantized foreground in the part no other window overlaps; there the stitched segmentation is exactly that
window's own labels, so the quantized side costs nothing: the check is N reference windows (timed and reported).
For nnU-Net's pipeline both engines run N windows placed greedily over the foreground (``choose_windows``),
compared on their cores (``backends.base.window_core``).
"""

from __future__ import annotations

import time

import numpy as np

from .agreement import compare_labels, min_voxels
from .backends.base import window_core
from .sliding_window import window_starts
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
    """Compare ``engine`` with ``reference`` on ``windows`` windows of a preprocessed (C, X, Y, Z) image whose
    stitched ``engine`` labels are ``labels``.

    MONAI-pipeline specs: the windows are the sliding window's own, compared on the part no other window overlaps
    (``exclusive_boxes``), where the stitched labels are exactly that window's own: only the reference runs. Other
    pipelines (nnU-Net's own windows): both engines run each window, compared on ``window_core``.
    """
    started = time.perf_counter()
    image = np.asarray(image, dtype=np.float32)
    extent = labels.shape
    pad = [(0, 0)] + [(0, max(r - n, 0)) for r, n in zip(spec.roi_size, image.shape[1:])]
    if any(p != (0, 0) for p in pad):  # a volume smaller than one window: padded like the sliding window pads it
        image = np.pad(image, pad, constant_values=background_value(spec.intensity))
        labels = np.pad(labels, pad[1:])
    if spec.pipeline == "monai":
        ours, theirs, count = _on_exclusive_boxes(image, labels, extent, reference, spec, windows)
    else:
        ours, theirs, count = _on_cores(image, labels, engine, reference, spec, windows)
    figures = compare_labels(theirs, ours, spec.label_names, min_voxels(spec.spacing_mm))
    return {"windows": count, **figures, "min_agreement": float(min_agreement),
            "passed": figures["foreground_agreement"] >= min_agreement,
            "seconds": round(time.perf_counter() - started, 3)}


def exclusive_boxes(shape, roi, overlap: float, extent=None) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """(start, box) of every sliding window (``sliding_window.window_starts``) whose part that no other window
    covers is not empty; ``box`` is that part in grid coordinates, clipped to ``extent`` (the unpadded grid)."""
    extent = extent or shape
    starts = window_starts(shape, roi, overlap)
    axes = [sorted({start[d] for start in starts}) for d in range(len(shape))]
    spans = []
    for axis, r, n in zip(axes, roi, extent):
        own = {}
        for i, a in enumerate(axis):
            lo = max(a, axis[i - 1] + r) if i else a
            hi = min(a + r, axis[i + 1]) if i + 1 < len(axis) else a + r
            if min(hi, n) > lo:
                own[a] = (lo, min(hi, n))
        spans.append(own)
    boxes = []
    for start in starts:
        if all(a in own for a, own in zip(start, spans)):
            boxes.append((start, tuple(slice(*own[a]) for a, own in zip(start, spans))))
    return boxes


def _on_exclusive_boxes(image, labels, extent, reference, spec: ModelSpec, windows: int):
    """Stitched labels vs the reference's own window labels, on the chosen windows' exclusive boxes."""
    boxes = exclusive_boxes(labels.shape, spec.roi_size, spec.overlap, extent)
    mask = labels > 0
    counts = np.array([np.count_nonzero(mask[box]) for _, box in boxes])
    order = np.lexsort((np.arange(len(boxes)), -counts))[:windows]  # most foreground first, deterministic
    chosen = [boxes[i] for i in order if counts[i] > 0] or [boxes[int(order[0])]]
    ours, theirs = [], []
    for start, box in chosen:
        window = image[(slice(None), *(slice(s, s + r) for s, r in zip(start, spec.roi_size)))][None]
        local = tuple(slice(b.start - s, b.stop - s) for b, s in zip(box, start))
        theirs.append(reference.infer_labels(window)[0][local].ravel())
        ours.append(labels[box].ravel())
    return np.concatenate(ours), np.concatenate(theirs), len(chosen)


def _on_cores(image, labels, engine, reference, spec: ModelSpec, windows: int):
    """Both engines on windows chosen by ``choose_windows``, compared on ``window_core``."""
    core = window_core(spec.roi_size, spec.overlap)
    starts = choose_windows(labels, spec.roi_size, windows, core)
    ours, theirs = [], []
    for start in starts:
        window = image[(slice(None), *(slice(s, s + r) for s, r in zip(start, spec.roi_size)))][None]
        ours.append(engine.infer_labels(window)[0][core].ravel())
        theirs.append(reference.infer_labels(window)[0][core].ravel())
    return np.concatenate(ours), np.concatenate(theirs), len(starts)


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
