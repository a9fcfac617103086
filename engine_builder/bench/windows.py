"""One 96^3 window through every engine of a model: interleaved latency, where the time goes, sizes, accuracy.

The input is one real preprocessed patch (the first of the last calibration volume's). Every repeat runs each
engine once, in turn, so that load from other processes hits them alike. OpenVINO engines are also profiled
(``OpenVINOEngine.profile``: per-layer ``PERF_COUNT`` on a second compilation), which gives the share of
convolution time spent in int8 kernels and the layer types that take the rest of the window.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from .common import OV_FP32, OV_INT8, TORCH_FP32, speedups, stats


def interleaved_ms(functions: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """``stats`` of each function's wall clock in ms; within each repeat every function runs once, in turn."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    samples: dict[str, list[float]] = {key: [] for key in functions}
    for _ in range(repeats):
        for key, function in functions.items():
            start = time.perf_counter()
            function()
            samples[key].append((time.perf_counter() - start) * 1e3)
    return {key: stats(values) for key, values in samples.items()}


def benchmark_window(weights, builds: dict, calib_folder, repeats: int, threads: int | None, cache_root) -> dict:
    """Latency (ms) of one window per engine, speed-ups (ratios of medians), OpenVINO profiles, sizes, accuracy.

    ``builds`` is {key: BuildResult} from ``inputs.build_engines`` (torch FP32 first).
    """
    from ..calibration import build_calibration_set
    from ..engines import open_engine

    spec = weights.spec
    calibration = build_calibration_set(calib_folder, spec, 8, seed=0, cache_dir=cache_root / "calibration",
                                        progress=False)
    window = np.ascontiguousarray(calibration.volumes[-1].patches[:1])
    engines = {key: open_engine(build.engine_dir, threads=threads)[0] for key, build in builds.items()}
    latency = interleaved_ms({key: (lambda e=engine: e.infer(window)) for key, engine in engines.items()}, repeats)
    keys = list(builds)
    manifests = {key: build.manifest for key, build in builds.items()}
    result = {
        "weights": weights.note, "trained": weights.trained, "architecture": spec.architecture.rsplit(".", 1)[-1],
        "roi": list(spec.roi_size), "classes": len(spec.labels), "latency_ms": latency,
        "speedup": speedups({key: s["median"] for key, s in latency.items()}, keys),
        "profile": {key: engine.profile(window) for key, engine in engines.items() if hasattr(engine, "profile")},
        "runs_as": {key: engine.runtime_report() for key, engine in engines.items() if key != TORCH_FP32},
        "sizes_bytes": {"fp32_onnx": manifests[OV_FP32]["sizes"]["fp32_onnx_bytes"],
                        **{key: m["sizes"]["engine_bytes"] for key, m in manifests.items()}},
        "kept_in_float": manifests[OV_INT8].get("kept_in_float", []),
        "build_seconds": {key: m.get("build_seconds") for key, m in manifests.items()},
        "accuracy_held_out": {key: _accuracy_summary(m.get("accuracy")) for key, m in manifests.items()
                              if m.get("accuracy")},
        "calibration": manifests[OV_INT8].get("calibration"),
    }
    result["int8_size_ratio"] = result["sizes_bytes"][OV_INT8] / result["sizes_bytes"][OV_FP32]
    del engines
    gc.collect()
    return result


def _accuracy_summary(accuracy: dict) -> dict:
    """The build's held-out-volume estimate, reduced to what the report shows."""
    keys = ("kind", "foreground_agreement", "min_foreground_agreement", "mean_dice", "passed")
    summary = {key: accuracy[key] for key in keys if key in accuracy}
    summary["volumes"] = len(accuracy.get("volumes", []))
    return summary
