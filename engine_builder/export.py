"""torch -> ONNX (FP32): static ROI shape, configurable batch, checked with ``onnx.checker``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import PTQError

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(network: torch.nn.Module, path: str | os.PathLike, roi_size, in_channels: int = 1, batch: int = 1) -> Path:
    """Export ``network`` to ONNX at ``path`` with input ``image`` (batch, C, *roi) and output ``logits``."""
    import onnx

    path = Path(path)
    example = torch.zeros((batch, in_channels, *roi_size), dtype=torch.float32)
    network = network.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is the one that gives static, fully folded graphs for these networks;
        # its deprecation notice and MONAI's instance-norm training-mode notice are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # static shapes are what we export
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # slices of the sub-pixel form
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(network, example, str(path), opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamo=False, do_constant_folding=True)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise PTQError(f"the exported ONNX graph is invalid: {str(exc).splitlines()[0][:200]}") from None
    return path


def relative_l2(reference: np.ndarray, value: np.ndarray) -> float:
    """||value - reference|| / ||reference|| (0 for identical arrays)."""
    reference = np.asarray(reference, dtype=np.float64)
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(np.asarray(value, dtype=np.float64) - reference) / (norm if norm else 1.0))
