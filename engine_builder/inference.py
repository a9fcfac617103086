"""Whole-volume inference: preprocess -> sliding window over an engine -> argmax -> back to the input grid.

Every stage is timed (milliseconds) and returned with the label map. Two paths, one result:

- engines that run on the CPU and speak numpy (OpenVINO) go through ``sliding_window.segment_image``: MONAI's
  windows and Gaussian blending in numpy, streamed along the first axis (the logits buffer holds about one
  window's depth of planes), argmax as planes complete; no torch, no MONAI in the process;
- engines that return logits on a GPU (TensorRT, torch CUDA) go through MONAI's ``sliding_window_inference``
  on the device, argmax as a running maximum there, and a logits volume bounded by ``max_logits_bytes``
  (above it the grid is cut into slabs along its last axis, each with a margin of half a window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends.base import Engine
from .io import Source, Volume, read_volume, write_volume
from .preprocess import background_value, labels_to_input_grid, preprocess
from .progress import Counter
from .sanity import check_volume
from .sliding_window import count_windows, segment_image
from .spec import ModelSpec
from .timing import StageTimer

DEFAULT_MAX_LOGITS_BYTES = 1 << 30


@dataclass
class Segmentation:
    """A label map on the input grid, the spec it came from, and per-stage timings in ms."""

    labels: Volume
    spec: ModelSpec
    timings_ms: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    warnings: list[str] = field(default_factory=list)
    verification: dict | None = None

    @property
    def total_ms(self) -> float:
        return float(sum(self.timings_ms.values()))


def label_dtype(n_labels: int) -> np.dtype:
    """The smallest unsigned type that holds label values 0..n_labels-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_labels - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{n_labels} labels do not fit in 32 bits")


def spec_windows(shape, spec: ModelSpec) -> int:
    """Number of windows the spec's sliding window visits for a network grid of ``shape``."""
    if spec.pipeline == "nnunet":
        from .nnunet_steps import count_tiles

        return count_tiles(shape, spec.roi_size)
    return count_windows(shape, spec.roi_size, spec.overlap)


def predict_labels(image, engine: Engine, spec: ModelSpec, timer: StageTimer,
                   max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES, progress: bool = False) -> np.ndarray:
    """Labels on the network grid for a preprocessed (C, X, Y, Z) image (numpy; a torch tensor is accepted)."""
    if spec.pipeline == "nnunet":
        return _predict_labels_nnunet(image, engine, spec, timer, max_logits_bytes, progress)
    if engine.stitch_device is not None:
        return _predict_on_device(image, engine, spec, timer, max_logits_bytes, progress)
    image = np.ascontiguousarray(image.cpu().numpy() if hasattr(image, "cpu") else image, dtype=np.float32)
    n_classes = len(spec.labels)
    counter = Counter("inference", count_windows(image.shape[1:], spec.roi_size, spec.overlap), enabled=progress)
    # The streaming buffer holds classes x (window + step) planes of Y x Z floats; above the budget the grid
    # is cut into slabs along its last axis, each with a margin of half a window (as the device path does).
    in_flight = n_classes * 2 * spec.roi_size[0] * image.shape[2] * 4
    depth, margin = image.shape[3], spec.roi_size[2] // 2
    core = depth if in_flight * depth <= max_logits_bytes else \
        max(spec.roi_size[2], max_logits_bytes // in_flight - 2 * margin)
    labels = np.empty(image.shape[1:], dtype=label_dtype(n_classes))
    argmax = StageTimer()
    with timer.stage("inference"):
        for start in range(0, depth, core):
            stop = min(start + core, depth)
            lo, hi = (max(start - margin, 0), min(stop + margin, depth)) if core < depth else (0, depth)
            slab = segment_image(np.ascontiguousarray(image[..., lo:hi]), engine.infer, spec.roi_size, spec.overlap,
                                 n_classes, engine.batch_size, background_value(spec.intensity), labels.dtype, counter,
                                 argmax_timer=argmax)
            labels[..., start:stop] = slab[..., start - lo : stop - lo]
    counter.close()
    _move_stage(timer, argmax, "argmax", "inference")
    return labels


def _move_stage(timer: StageTimer, inner: StageTimer, name: str, outer: str) -> None:
    """Report the time ``inner`` measured as ``name`` inside ``outer`` as its own stage."""
    spent = inner.timings.get(name, 0.0)
    timer.timings[outer] = timer.timings.get(outer, 0.0) - spent
    timer.timings[name] = timer.timings.get(name, 0.0) + spent


def _predict_on_device(image, engine: Engine, spec: ModelSpec, timer: StageTimer, max_logits_bytes: int,
                       progress: bool) -> np.ndarray:
    """MONAI's sliding window with stitching on the engine's device (GPU engines)."""
    import torch
    from monai.inferers import sliding_window_inference

    image = torch.as_tensor(image)
    n_classes = len(spec.labels)
    dtype = label_dtype(n_classes)
    depth = image.shape[-1]
    plane_bytes = n_classes * image.shape[1] * image.shape[2] * 4
    margin = spec.roi_size[2] // 2
    core = max(spec.roi_size[2], max_logits_bytes // plane_bytes - 2 * margin)
    labels = np.empty(image.shape[1:], dtype=dtype)
    counter = Counter("inference", count_windows(image.shape[1:], spec.roi_size, spec.overlap), enabled=progress)

    def predictor(batch):
        counter.step(len(batch))
        return engine.infer_torch(batch)

    device = engine.stitch_device
    image = image.to(device)
    for start in range(0, depth, core):
        stop = min(start + core, depth)
        lo, hi = (max(start - margin, 0), min(stop + margin, depth)) if core < depth else (0, depth)
        with timer.stage("inference"), torch.inference_mode():
            logits = sliding_window_inference(
                image[None, :, :, :, lo:hi], spec.roi_size, engine.batch_size, predictor,
                overlap=spec.overlap, mode=spec.blend, padding_mode="constant", cval=background_value(spec.intensity),
                sw_device=device, device=device)
        with timer.stage("argmax"):
            slab = logits[0].as_tensor() if hasattr(logits, "as_tensor") else logits[0]
            labels[..., start:stop] = running_argmax(slab[..., start - lo : stop - lo], dtype)
        del logits
    counter.close()
    return labels


def running_argmax(logits, dtype: np.dtype) -> np.ndarray:
    """argmax over dim 0 of (C, ...) torch logits as a running maximum; ties go to the lower label like argmax."""
    import torch

    best = logits[0].clone()
    labels = torch.zeros(logits.shape[1:], dtype=torch.int32 if dtype != np.uint8 else torch.uint8, device=logits.device)
    for channel in range(1, logits.shape[0]):
        better = logits[channel] > best
        torch.maximum(best, logits[channel], out=best)
        labels.masked_fill_(better, channel)
    return labels.cpu().numpy().astype(dtype, copy=False)


def _predict_labels_nnunet(image, engine: Engine, spec: ModelSpec, timer: StageTimer,
                           max_logits_bytes: int, progress: bool) -> np.ndarray:
    """nnU-Net's tiles and Gaussian (``nnunet_steps``), argmax per finished slab."""
    import torch

    from .nnunet_steps import sliding_window_nnunet

    image = torch.as_tensor(image)
    dtype = label_dtype(len(spec.labels))
    labels = np.empty(image.shape[1:], dtype=dtype)
    counter = Counter("inference", spec_windows(image.shape[1:], spec), enabled=progress)
    argmax_ms = StageTimer()

    def predictor(batch):
        counter.step(len(batch))
        return engine.infer_torch(batch).cpu()

    def on_slab(start: int, logits) -> None:
        with argmax_ms.stage("argmax"):
            labels[..., start : start + logits.shape[-1]] = running_argmax(logits, dtype)

    with timer.stage("inference"), torch.inference_mode():
        sliding_window_nnunet(image, tuple(spec.roi_size), len(spec.labels), engine.batch_size, predictor, on_slab,
                              max_logits_bytes)
    counter.close()
    _move_stage(timer, argmax_ms, "argmax", "inference")  # the argmax ran inside the inference stage, slab by slab
    return labels


def segment_volume(volume: Volume, engine: Engine, spec: ModelSpec, timings: dict | None = None,
                   max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES, progress: bool = False, name: str = "the volume",
                   memory_budget: int | None = None, check=None) -> Segmentation:
    """Segment an in-memory volume (what Slicer hands over) and map the labels back to its grid.

    The volume is checked first (``sanity.check_volume``): non-finite voxels are replaced with a warning
    (in ``Segmentation.warnings``), constant volumes and grids over ``memory_budget`` bytes are refused.
    ``check(image, network_labels) -> dict`` (e.g. ``verify.verify_scan``) runs on the network grid after
    inference, timed as the ``verify`` stage; its result is ``Segmentation.verification``.
    """
    timer = StageTimer(timings)
    with timer.stage("preprocess"):
        volume, warnings = check_volume(volume, spec, name, memory_budget)
        prepared = preprocess(volume, spec)
    network_labels = predict_labels(prepared.image, engine, spec, timer, max_logits_bytes, progress)
    verification = None
    if check is not None:
        with timer.stage("verify"):
            verification = check(prepared.image, network_labels)
    with timer.stage("inverse_resample"):
        labels = labels_to_input_grid(network_labels, prepared.affine, volume.shape, volume.affine)
    windows = spec_windows(prepared.image.shape[1:], spec)
    return Segmentation(Volume(labels, volume.affine.copy()), spec, timer.timings, windows, warnings, verification)


def segment_file(input_path: str | Path | Source, output_path: str | Path, engine: Engine, spec: ModelSpec,
                 max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES, progress: bool = False,
                 memory_budget: int | None = None, check=None) -> Segmentation:
    """File (or DICOM series) in, label file out; timings include reading and writing."""
    timer = StageTimer()
    with timer.stage("read"):
        volume = read_volume(input_path)
    name = input_path.path.name if isinstance(input_path, Source) else Path(input_path).name
    result = segment_volume(volume, engine, spec, timer.timings, max_logits_bytes, progress, name, memory_budget, check)
    with timer.stage("write"):
        write_volume(result.labels, output_path)
    order = ("read", "preprocess", "inference", "argmax", "verify", "inverse_resample", "write")
    result.timings_ms = {k: timer.timings[k] for k in order if k in timer.timings}
    return result
