"""The performance targets (issue 13, and the project's size target), checked against a benchmark's figures.

Each check is {"target", "value", "op", "threshold", "met", "shown", "threshold_shown", "note"}; ``met`` is None
where the figure does not apply to this run (no bf16 on the CPU, a stand-in volume instead of the chest CT).
Tests never time anything against these: the claims live in docs/benchmarks.
"""

from __future__ import annotations

from .common import OV_BF16, OV_INT8, TORCH_FP32

TARGETS = {
    "int8_conv_time_share_min": 0.90,      # every registry CNN: share of convolution time in int8 kernels
    "window_speedup_vs_torch_min": 6.0,    # one 96^3 window: OV INT8 vs torch FP32 eager
    "window_speedup_vs_bf16_min": 1.0,     # one window: OV INT8 faster than OV bf16 (CPUs with bf16)
    "command_seconds_max": 5.0,            # demo model, chest CT, `ptqseg segment` in a fresh process, wall clock
    "command_speedup_vs_torch_min": 3.0,   # the same command with the torch FP32 engine / with OV INT8
    "warm_seconds_max": 3.0,               # the same scan with the engine already loaded
    "peak_rss_bytes_max": 2e9,             # peak resident memory of the fresh-process INT8 run (2 GB)
    "int8_size_ratio_max": 0.3,            # the project's size claim: INT8 engine bytes / FP32 engine bytes
}
VOLUME_TARGET_MODEL = "demo"


def check_targets(figures: dict) -> list[dict]:
    """Every target with the measured value and whether it is met."""
    t = TARGETS
    checks = []
    for name, w in figures.get("window", {}).items():
        share = (w["profile"].get(OV_INT8) or {}).get("int8_conv_share")
        checks.append(_check(f"{name}: share of convolution time in int8 kernels (one window)", share, ">=",
                             t["int8_conv_time_share_min"], "{:.0%}"))
        checks.append(_check(f"{name}: one window, OV INT8 speed-up vs torch FP32 eager",
                             w["speedup"][f"{OV_INT8}_vs_{TORCH_FP32}"], ">=", t["window_speedup_vs_torch_min"],
                             "{:.2f}x"))
        bf16 = OV_BF16 in w["latency_ms"]
        checks.append(_check(f"{name}: one window, OV INT8 speed-up vs OV bf16",
                             w["speedup"].get(f"{OV_INT8}_vs_{OV_BF16}"), ">", t["window_speedup_vs_bf16_min"],
                             "{:.2f}x", None if bf16 else "this CPU has no bf16", bf16))
        checks.append(_check(f"{name}: INT8 engine size / FP32 engine size", w["int8_size_ratio"], "<=",
                             t["int8_size_ratio_max"], "{:.3f}"))
    volume = figures.get("volume", {}).get(VOLUME_TARGET_MODEL)
    if volume:
        checks += _volume_checks(volume)
    return checks


def _volume_checks(volume: dict) -> list[dict]:
    t = TARGETS
    fresh, warm = volume["fresh"], volume["warm"]
    int8 = fresh["engines"][OV_INT8]
    chest = volume["chest_ct"]
    note = None if chest else f"measured on a {volume['kind']}, not the chest CT"
    scope = f"{volume['model']}, whole volume"
    warm_note = note or (None if warm["method"] == "worker" else "in-process stand-in for a worker (engine loaded once)")
    return [
        _check(f"{scope}: `ptqseg segment` OV INT8, fresh process (s)", int8["wall_ms"]["median"] / 1e3, "<=",
               t["command_seconds_max"], "{:.2f} s", note, chest),
        _check(f"{scope}: `ptqseg segment` speed-up, OV INT8 vs torch FP32 engine",
               fresh["speedup_vs_torch_fp32"].get(OV_INT8), ">=", t["command_speedup_vs_torch_min"], "{:.2f}x", note,
               chest),
        _check(f"{scope}: OV INT8 per scan, engine already loaded (s)",
               warm["engines"][OV_INT8]["wall_ms"]["median"] / 1e3, "<=", t["warm_seconds_max"], "{:.2f} s", warm_note,
               chest),
        _check(f"{scope}: peak resident memory of the OV INT8 command (GB)", int8["peak_rss_bytes"] / 1e9, "<=",
               t["peak_rss_bytes_max"] / 1e9, "{:.2f} GB", note, chest),
    ]


def _check(name: str, value, op: str, threshold: float, fmt: str, note: str | None = None,
           applies: bool = True) -> dict:
    """A target line; ``met`` is None when there is no value or the target does not apply to this run (``note``
    says why; the value is still shown)."""
    met = None
    if value is not None and applies:
        met = bool({"<=": value <= threshold, ">=": value >= threshold, ">": value > threshold}[op])
    return {"target": name, "value": None if value is None else float(value), "op": op, "threshold": float(threshold),
            "met": met, "shown": "—" if value is None else fmt.format(value), "threshold_shown": fmt.format(threshold),
            "note": note}
