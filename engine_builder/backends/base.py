"""The backend interface: ``Backend.build(fp32 graph, calibration patches, precision, options) -> Engine``.

A backend compiles the FP32 network into an engine for one runtime; for INT8 it quantizes with the
runtime vendor's own quantizer inside ``build``. An ``Engine`` runs batches of ROI patches and saves itself
into an engine directory (the manifest around it is written by ``artifact``).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..spec import ModelSpec

if TYPE_CHECKING:  # torch is imported where it is used: the CPU path runs without it
    import torch


@dataclass
class FP32Graph:
    """The FP32 network in the forms backends consume: the torch module and its ONNX export.

    ``subpixel_onnx_path``: the same network with its transposed convolutions rewritten as stride-1
    convolutions + pixel shuffle (``rewrite.py``; exact), for backends whose quantizer then runs every
    convolution in int8; None when the network has none or no torch module exists.
    """

    spec: ModelSpec
    network: torch.nn.Module | None
    onnx_path: Path
    batch_size: int = 1
    subpixel_onnx_path: Path | None = None


@dataclass
class ValidationWindows:
    """Windows (n, C, *roi) and the FP32 reference labels (n, *roi) an accuracy-controlled quantizer must keep.

    The metric is foreground agreement (``agreement.py``) on each window's core (``window_core``): the share of
    core voxels either labels as foreground that get the FP32 label.
    """

    windows: np.ndarray
    reference_labels: np.ndarray
    overlap: float = 0.25

    def agreement(self, labels: np.ndarray) -> float:
        core = (slice(None), *window_core(labels.shape[1:], self.overlap))
        labels, reference = labels[core], self.reference_labels[core]
        foreground = (labels > 0) | (reference > 0)
        total = np.count_nonzero(foreground)
        return float(np.count_nonzero(labels[foreground] == reference[foreground]) / total) if total else 1.0


def window_core(roi, overlap: float) -> tuple[slice, ...]:
    """The part of a sliding window that its neighbours do not overlap (overlap 0.25, 96^3: voxels 24..71).

    A window's border voxels see less context and are down-weighted by the Gaussian blending of the sliding
    window; its core is what the stitched label map takes from it alone. Comparing single windows on the core
    therefore compares what a whole-volume segmentation shows (on the border, single windows disagree more:
    measured 0.964 on whole windows vs 0.98 stitched, demo model, unseen CT).
    """
    margins = [min(int(round(r * overlap)), (r - 1) // 2) for r in roi]
    return tuple(slice(m, r - m) for m, r in zip(margins, roi))


@dataclass
class BuildOptions:
    """Options every backend understands; backend-specific ones go in ``extra``.

    Attributes:
        method: activation range estimator name (backend-specific set, see ``Backend.methods``).
        preset: ``mixed`` (asymmetric activations) or ``performance`` (symmetric), where the backend has both.
        bias_correction: ``fast`` (default), ``full`` or ``none``, where the backend has it.
        validation: with INT8, keep the most harmful operations in float until the foreground agreement on these
            windows drops by at most ``max_drop`` (accuracy control).
        threads: CPU threads for the runtime (None: all).
        device: ``cpu`` or ``cuda`` for backends that have both.
        keep_float: node names to leave unquantized.
        network_kind: ``cnn`` or ``transformer`` (the spec's): quantizers with a transformer mode use it.
    """

    method: str | None = None
    preset: str | None = None
    bias_correction: str = "fast"
    validation: ValidationWindows | None = None
    max_drop: float | None = None
    threads: int | None = None
    device: str = "cpu"
    keep_float: tuple[str, ...] = ()
    progress: bool = True
    network_kind: str = "cnn"
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(abc.ABC):
    """A compiled network for fixed-size ROI batches."""

    backend: str
    precision: str
    batch_size: int
    stitch_device: torch.device | None = None  # where logits come back: set by GPU engines to stitch on the GPU

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(b, classes, *roi)`` float32 for a batch ``(b, C, *roi)`` float32, ``b <= batch_size``."""

    def infer_torch(self, batch: torch.Tensor) -> torch.Tensor:
        """``infer`` for torch tensors (what MONAI's sliding window hands over)."""
        import torch

        return torch.from_numpy(self.infer(batch.detach().cpu().numpy()))

    @abc.abstractmethod
    def save(self, folder: Path) -> list[str]:
        """Write the engine's files into ``folder``; return their names."""

    def infer_labels(self, batch: np.ndarray) -> np.ndarray:
        """Argmax labels (b, *roi) uint8/uint16 of a batch."""
        logits = self.infer(batch)
        return logits.argmax(1).astype(np.uint8 if logits.shape[1] <= 256 else np.uint16)

    def runtime_report(self, window: np.ndarray | None = None) -> dict[str, Any]:
        """What really runs: e.g. per-precision counts of executed layers (with ``window``, a batch of input
        patches, a runtime that can profile also says where that window's time goes). Empty when unknown."""
        return {}

    def kept_in_float(self) -> list[str]:
        """Names of quantizable operations that stay in floating point (INT8 engines)."""
        return []


class Backend(abc.ABC):
    """A runtime that turns an ``FP32Graph`` into an ``Engine``."""

    name: str
    precisions: tuple[str, ...]
    methods: tuple[str, ...] = ()
    default_method: str | None = None

    @abc.abstractmethod
    def version(self) -> str:
        """The runtime library version (part of the engine cache key)."""

    @abc.abstractmethod
    def build(self, graph: FP32Graph, calibration_patches: np.ndarray | None, precision: str, options: BuildOptions) -> Engine:
        """Compile (and for INT8 quantize) ``graph``."""

    @abc.abstractmethod
    def load(self, folder: Path, manifest: dict, options: BuildOptions) -> Engine:
        """Load an engine saved by ``Engine.save`` into ``folder``."""


def pad_batch(batch: np.ndarray, batch_size: int) -> np.ndarray:
    """Zero-pad a partial batch up to the engine's static batch size."""
    if len(batch) == batch_size:
        return batch
    padded = np.zeros((batch_size, *batch.shape[1:]), dtype=batch.dtype)
    padded[: len(batch)] = batch
    return padded


def folder_size(folder: str | os.PathLike, names: list[str]) -> int:
    """Bytes of the named files in ``folder``."""
    return sum(os.path.getsize(Path(folder) / n) for n in names)
