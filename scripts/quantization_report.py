"""Render ``docs/quantization.md`` and ``docs/quantization.png`` from the study's figures (quantization_study.py).

Every number in the page comes from ``docs/benchmarks/quantization_study.json``; re-render without re-measuring:

    python scripts/quantization_report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine_builder.evaluate import markdown_table  # noqa: E402

TARGET_AGREEMENT, TARGET_DICE, TARGET_SPEEDUP, TARGET_REFERENCE_DROP, TARGET_ESTIMATE_GAP = 0.98, 0.97, 3.0, 0.003, 0.02


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def _num(value, digits=3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def settings_table(figures: dict) -> str:
    torch_ms = figures["window_ms"].get("torch_fp32")
    rows = []
    for row in figures["settings"]:
        unseen, every, head = row["unseen"], row["all_body"], row["head"]
        speedup = torch_ms / row["window_ms"] if torch_ms and row["window_ms"] else None
        partial = "" if len(row["unseen_cts"]) == 3 else f" ({len(row['unseen_cts'])} CTs)"
        rows.append([f"`{row['setting']}`", row["description"], _pct(unseen["foreground_agreement"]) + partial,
                     _pct(unseen["min_foreground_agreement"]), _num(unseen["mean_dice"]), _num(unseen["min_dice"]),
                     _pct(every["foreground_agreement"]) if every else "not run",
                     _pct(head["foreground_agreement"]) if head else "not run",
                     _num(row["window_ms"], 0) + (" (default's graph)" if row.get("timed_as_default") else ""),
                     "" if speedup is None else f"{speedup:.1f}x",
                     _pct(row["int8_conv_time_share"]),
                     "" if row["kept_in_float"] is None else len(row["kept_in_float"])])
    header = ["setting", "what changes", "fg agreement, unseen CTs (mean)", "worst unseen CT", "mean per-label Dice (unseen)",
              "worst label Dice (unseen)", "fg agreement, all 5 body CTs", "head CT (off-domain)", "INT8 window ms",
              "vs torch FP32", "int8 share of conv time", "convs left in float"]
    return markdown_table(header, rows)


def per_ct_table(figures: dict, setting: str) -> str:
    row = next(r for r in figures["settings"] if r["setting"] == setting)
    roles = {"example_ct": " (a training volume of the demo model)", "chest_ct": " (a training volume of the demo model)",
             "head": " (unseen, outside the model's domain)"}
    rows = [[name + roles.get(name, " (unseen)"), _pct(v["foreground_agreement"]), _num(v["mean_dice"]), _num(v["min_dice"])]
            for name, v in row["per_ct"].items()]
    return markdown_table(["held-out CT", "fg agreement INT8 vs FP32", "mean per-label Dice", "worst label Dice"], rows)


def reference_table(figures: dict, setting: str) -> tuple[str, list[float]]:
    row = next(r for r in figures["settings"] if r["setting"] == setting)
    rows, drops = [], []
    for target, dice in row["reference_dice"].items():
        fp32, int8 = dice["fp32"], dice["int8"]
        mean32, mean8 = sum(fp32.values()) / len(fp32), sum(int8.values()) / len(int8)
        drops.append(mean32 - mean8)
        rows.append([target, ", ".join(sorted(fp32)), _num(mean32), _num(mean8), f"{mean32 - mean8:+.4f}"])
    return markdown_table(["CT (left out of calibration)", "labels", "mean Dice vs reference, FP32", "INT8", "drop"], rows), drops


def estimate_table(figures: dict) -> tuple[str, list[float]]:
    rows, gaps = [], []
    for row in figures.get("estimate_check") or []:
        gap = row["estimate"] - row["measured"]
        gaps.append(abs(gap))
        rows.append([row["target"], _pct(row["estimate"]), _pct(row["estimate_min"]), _pct(row["measured"]),
                     f"{100 * gap:+.1f} points"])
    return markdown_table(["CT left out", "build-time estimate (4 other CTs, leave-volume-out)", "its worst fold",
                           "measured on the left-out CT", "estimate - measured"], rows), gaps


def findings(figures: dict) -> list[str]:
    """What the settings table says, in numbers: the spread of the knobs against the default, and the best one."""
    rows = {r["setting"]: r for r in figures["settings"] if len(r["unseen_cts"]) == 3}
    default = rows.get("default")
    if default is None:
        return []
    base = default["unseen"]["foreground_agreement"]
    deltas = sorted(((r["unseen"]["foreground_agreement"] - base, name) for name, r in rows.items() if name != "default"),
                    reverse=True)
    better = [f"`{name}` {100 * d:+.2f}" for d, name in deltas if d > 0]
    worse = [f"`{name}` {100 * d:+.2f}" for d, name in deltas if d <= 0]
    preset = "" if "performance" not in rows else (
        f" Symmetric activations (preset `performance`) cost "
        f"{100 * (base - rows['performance']['unseen']['foreground_agreement']):.1f} points: this network's "
        "activations after PReLU are far from symmetric, and an asymmetric (u8 with zero point) range keeps their "
        "resolution.")
    return ["## What the knobs do (unseen CTs, points of foreground agreement against the default)", "",
            f"Better than the default: {', '.join(better) or 'none'}. Not better: {', '.join(worse) or 'none'}. "
            "Differences under about 0.3 points are within what changes between runs with another thread count "
            "(INT8 labels differ on about 0.7 % of foreground voxels between 1 and 2 threads: kernels accumulate in "
            "another order): such knobs tie. The default keeps the cheaper setting where they tie (8 patches per "
            "volume, fast bias correction, body sampling)." + preset, ""]


def bf16_section(path: Path) -> list[str]:
    """The INT8 / bf16 / INT8 + bf16 comparison measured on a CPU with bf16 (docs/benchmarks/bf16.json)."""
    if not path.is_file():
        return []
    runs = json.loads(path.read_text())
    data = next((r for r in runs if r["machine"]["threads"] == 2), runs[0])
    window = data["window_ms"]

    def agreement(label):
        values = [v[label]["foreground_agreement"] for v in data["volumes"].values()]
        return sum(values) / len(values)

    return ["## INT8 with bf16, and bf16 alone, on a CPU that has bf16", "",
            f"This machine has no bf16 (AVX2 only); on the device machine's {data['machine']['cpu']} (AMX, AVX512-BF16), "
            f"{data['machine']['threads']} threads, the default INT8 recipe calibrated on the demo model's two training "
            "CTs and measured on the three unseen CTs ([benchmarks/bf16.md](benchmarks/bf16.md)):", "",
            markdown_table(["configuration", "one 96³ window (ms)", "mean fg agreement with FP32 (3 unseen CTs)"],
                           [[label, f"{window[label]:.1f}", _pct(agreement(label))] for label in window]), "",
            "Running INT8's float leftovers in bf16 changes neither speed nor agreement much; bf16 alone agrees far "
            "better than INT8 and is slower than INT8. Where the CPU has bf16 and a scan's per-scan check "
            "(`--verify`) warns, the bf16 engine (`--precision bf16`, no calibration) is the fallback the CLI names.", ""]


def chart(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = figures["settings"]
    names = [r["setting"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    x = range(len(rows))
    left.bar(x, [100 * r["unseen"]["foreground_agreement"] for r in rows], color="#4c72b0", label="mean of unseen CTs")
    left.scatter(x, [100 * r["unseen"]["min_foreground_agreement"] for r in rows], color="#c44e52", zorder=3,
                 label="worst unseen CT")
    left.axhline(100 * TARGET_AGREEMENT, color="gray", linestyle="--", linewidth=1, label="target 98 %")
    left.set_ylim(min(90.0, min(100 * r["unseen"]["min_foreground_agreement"] for r in rows) - 1), 100)
    left.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
    left.set_ylabel("INT8 vs FP32 foreground agreement (%)")
    left.set_title("Held-out CTs (leave one volume out)")
    left.legend(fontsize=8)
    ms = [r["window_ms"] or 0 for r in rows]
    right.bar(x, ms, color="#55a868")
    for label, key, color in (("torch FP32", "torch_fp32", "#c44e52"), ("OpenVINO FP32", "ov_fp32", "#8172b2")):
        if figures["window_ms"].get(key):
            right.axhline(figures["window_ms"][key], color=color, linestyle="--", linewidth=1, label=label)
    right.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
    right.set_ylabel("one 96³ window (ms, median)")
    right.set_title("INT8 window latency on this CPU")
    right.legend(fontsize=8)
    fig.suptitle(f"demo model, {figures['machine']['cpu']}, OpenVINO {figures['versions']['openvino']}, "
                 f"NNCF {figures['versions']['nncf']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(figures: dict, out: Path) -> None:
    """Write ``out/quantization.md`` and ``out/quantization.png``."""
    chart(figures, out / "quantization.png")
    default = next(r for r in figures["settings"] if r["setting"] == "default")
    reference, drops = reference_table(figures, "default")
    estimate, gaps = estimate_table(figures)
    torch_ms = figures["window_ms"].get("torch_fp32")
    speedup = torch_ms / default["window_ms"] if torch_ms and default["window_ms"] else None
    unseen = default["unseen"]
    verdicts = [
        ("INT8 vs FP32 foreground agreement on unseen CTs >= 98 %", _pct(unseen["foreground_agreement"]),
         unseen["foreground_agreement"] >= TARGET_AGREEMENT),
        ("mean per-label Dice (INT8 vs FP32) on unseen CTs >= 0.97", _num(unseen["mean_dice"]),
         (unseen["mean_dice"] or 0) >= TARGET_DICE),
        ("INT8 window >= 3x torch FP32", "" if speedup is None else f"{speedup:.1f}x", (speedup or 0) >= TARGET_SPEEDUP),
        ("mean Dice against reference labels drops <= 0.003", ", ".join(f"{d:+.4f}" for d in drops),
         bool(drops) and max(drops) <= TARGET_REFERENCE_DROP),
        ("build-time estimate within 2 points of the unseen CT", ", ".join(f"{100 * g:.1f}" for g in gaps),
         bool(gaps) and max(gaps) <= TARGET_ESTIMATE_GAP),
    ]
    lines = [
        "# INT8 you can trust on scans it has never seen: the quantization study",
        "",
        f"Measured {figures['measured']} on {figures['machine']['cpu']} ({figures['machine']['system']}), "
        f"OpenVINO {figures['versions']['openvino']}, NNCF {figures['versions']['nncf']}, torch {figures['versions']['torch']}; "
        "figures: [`benchmarks/quantization_study.json`](benchmarks/quantization_study.json), "
        "made by `scripts/quantization_study.py`, rendered by `scripts/quantization_report.py`.",
        "",
        "**Method.** Leave one volume out over the five body CTs of `../shared/data` (TotalSegmentator's `example_ct`, "
        "the MSD spleen crop, the 512x512x141 chest CT, the chest-abdomen CT and the second chest CT of `real_ct/`): "
        "each CT in turn is held out, the demo model is quantized (OpenVINO + NNCF) on calibration patches of the other "
        "four, and the held-out CT is segmented whole through the product's sliding window by the INT8 engine and by "
        "the FP32 engine. Figures compare the two label maps on the voxels either labels foreground (all-voxel agreement "
        "is dominated by air). *Unseen CTs* are the three that neither the model's training nor the calibration saw "
        "(MSD spleen, chest-abdomen, second chest CT); `example_ct` and the chest CT are **training volumes of the "
        "demo model**, shown separately in the \"all 5 body CTs\" column. The head CT (out of the model's domain) is "
        "held out in every fold and reported apart. Mean per-label Dice counts the labels of at least 1 mL in the "
        "FP32 map; smaller ones are listed in the JSON. Latency: one 96³ window of the second chest CT, median of "
        "interleaved repeats in one process; \"int8 share of conv time\" from OpenVINO's per-layer PERF_COUNT.",
        "",
        "![study](quantization.png)",
        "",
        settings_table(figures),
        "",
        *findings(figures),
        "## The chosen defaults",
        "",
        "`ptqseg build` quantizes with the `default` row: NNCF preset **mixed** (asymmetric 8-bit activations, "
        "symmetric per-channel weights), **mean of per-patch min/max** activation ranges, **8 patches per volume "
        "centred on the body**, fast bias correction, and the decoder's transposed convolutions rewritten exactly as "
        "one stride-1 convolution per output phase + pixel shuffle (`engine_builder/rewrite.py`), so every "
        "convolution runs int8. Then the build measures itself on calibration volumes held out whole "
        "(`engine_builder/estimate.py`) and, where that estimate is below `--min-agreement` (98 %), rebuilds with "
        "accuracy control (`engine_builder/accuracy.py`).",
        "",
        "Default recipe, per held-out CT:",
        "",
        per_ct_table(figures, "default"),
        "",
        "## Targets",
        "",
        markdown_table(["target", "measured", "met"], [[t, m, "yes" if ok else "**no**"] for t, m, ok in verdicts]),
        "",
        "**Why the agreement stops short of 98 %.** The voxels INT8 relabels are those FP32 itself is unsure about: on "
        "an unseen CT about 5 % of the foreground voxels have a top-two logit margin below 0.5, and the flipped voxels "
        "have a median margin of 0.15–0.2 logits, while 8-bit rounding noise is spread over every layer (accuracy "
        "control reverts one layer after another for a few hundredths of a point each). No NNCF knob above moves the "
        "three unseen CTs by more than the thread-count noise; fine-tuning the demo network with simulated 8-bit "
        "rounding (stage 5 against `stage4_weights`) raised mean per-label Dice but not the agreement. bf16 keeps "
        "99.8 % (below). What the product does about it: every build reports the agreement measured on calibration "
        "volumes held out whole (within a point of the unseen CTs above), and `ptqseg segment --verify N` (on in the "
        "Slicer panel) measures it on the scan itself and warns below the threshold.",
        "",
        "## The study's own metric: Dice against reference labels",
        "",
        "The published study judged INT8 by Dice against labels. Here, for the two CTs with reference labels (the "
        "MSD spleen's manual mask; the chest-abdomen CT's model-made structures mapped to the demo labels), both "
        "left out of calibration, default recipe:",
        "",
        reference,
        "",
        "## Does the build's estimate predict the unseen CT?",
        "",
        "For each CT, the build that calibrates on the four others reports its own leave-volume-out estimate "
        "(folds over those four); the table compares it with what the left-out CT then measured:",
        "",
        estimate,
        "",
        *bf16_section(out / "benchmarks" / "bf16.json"),
    ]
    (out / "quantization.md").write_text("\n".join(lines))


def main() -> int:
    figures = json.loads((REPO / "docs" / "benchmarks" / "quantization_study.json").read_text())
    render(figures, REPO / "docs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
