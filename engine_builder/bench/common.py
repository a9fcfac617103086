"""What every part of the benchmark shares: backend keys and labels, stage names, statistics, progress lines."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

#: The checkout benchmarked: its commands run with this folder first on the path.
REPO_ROOT = Path(__file__).resolve().parents[2]

# Backend keys, in display order: the engine a user runs without this project first.
TORCH_FP32, OV_FP32, OV_BF16, OV_INT8 = "torch_fp32", "openvino_fp32", "openvino_bf16", "openvino_int8"
LABELS = {TORCH_FP32: "torch FP32 eager", OV_FP32: "OpenVINO FP32", OV_BF16: "OpenVINO bf16", OV_INT8: "OpenVINO INT8"}
#: (backend, precision) of ``ptqseg build`` for each key.
BUILDS = {TORCH_FP32: ("torch", "fp32"), OV_FP32: ("openvino", "fp32"), OV_BF16: ("openvino", "bf16"),
          OV_INT8: ("openvino", "int8")}
#: The stages ``segment_file`` times, in order (milliseconds each).
STAGES = ("read", "preprocess", "inference", "argmax", "inverse_resample", "write")
RANDOM_WEIGHTS = "random weights: speed only"


def stats(samples: list[float]) -> dict:
    """``median``, ``min``, ``max``, ``repeats`` and the rounded ``samples`` of a list of measurements."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "repeats": len(samples),
            "samples": [round(s, 3) for s in samples]}


def speedups(medians: dict[str, float], order: list[str]) -> dict[str, float]:
    """``"<key>_vs_<ref>"``: median(ref) / median(key) for every key after ref in ``order`` (> 1: key is faster)."""
    return {f"{key}_vs_{ref}": medians[ref] / medians[key] for i, ref in enumerate(order) for key in order[i + 1:]
            if key in medians and ref in medians}


def say(message: str) -> None:
    """One progress line on stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
