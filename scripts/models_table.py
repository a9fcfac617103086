"""The registry's study networks at their PUBLISHED sizes on this machine: the table of docs/models.md.

    python scripts/models_table.py                      # OpenVINO figures (a venv with dynamic_network_architectures
                                                        # and einops for all eight), writes the JSON and the table
    python scripts/models_table.py --tensorrt-rtx       # in the TensorRT-RTX venv: Q/DQ graph + TensorRT-RTX build
                                                        # status per model, merged into the same JSON
    python scripts/models_table.py --render             # only redraw docs/models.md from docs/benchmarks/models.json
    python scripts/models_table.py --json docs/benchmarks/models_xeon.json --models unet ...
                                                        # another machine's table (its own section and chart);
                                                        # rows of models not run this time are kept

Per model (``SEEDS``, cheapest first): parameters; OpenVINO FP32 and INT8 engines built by ``pipeline.build_engine``
from one calibration volume (random weights unless ``--weights NAME=PATH``: random weights measure speed and size
only, never accuracy); engine sizes; the int8 share of one window's convolution + matmul time
(``OpenVINOEngine.profile``); what stays in float (the INT8 manifest's ``runs_as.float_ops``); one-window latency of
torch FP32 eager, OpenVINO FP32, OpenVINO bf16 (only where the CPU has it) and OpenVINO INT8, medians of interleaved
repeats (``bench.interleaved_ms``). Each model runs in a child process with what is left of ``--budget-min``; a model
that does not finish in it (or runs out of memory) is recorded as not measured, with the reason. The load average
before and after each model is recorded: other work on the machine slows every figure. Beside each row: the MedPTQ
study's published TensorRT figures (github.com/hrlblab/PTQ README, "Performance").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing"))

from engine_builder.bench.chart import COLORS  # noqa: E402
from engine_builder.bench.common import LABELS  # noqa: E402
from engine_builder.bench.machine import cpu_flags, machine_info, versions  # noqa: E402
from engine_builder.bench.windows import interleaved_ms  # noqa: E402

JSON_OUT = REPO / "docs" / "benchmarks" / "models.json"
DOC = REPO / "docs" / "models.md"
MARKERS = ("<!-- models-table -->", "<!-- /models-table -->")
SHARED = REPO.parent / "shared" / "data" / "totalsegmentator"
#: Cheapest first, so that a time budget measures as many as it can.
ORDER = ("unet", "segresnet_wholebody", "nnunet_totalseg", "stunet", "transunet_btcv", "swin_unetr_btcv",
         "unest_wholebrain", "vista3d")
#: The MedPTQ study's TensorRT engines (hrlblab/PTQ README "Performance", read 2026-11-30): engine MB and latency ms,
#: FP32 / INT8, and the dataset its network was trained on. Their networks are their own trainings (e.g. their U-Net
#: is a BTCV model, their SwinUNETR a TotalSegmentator V2 model), so sizes compare, latencies are another device.
STUDY = {
    "unet": {"dataset": "BTCV", "mb": (23.11, 6.61), "ms": (2.62, 1.05)},
    "transunet_btcv": {"dataset": "BTCV", "mb": (351.85, 91.90), "ms": (4.09, 1.74)},
    "unest_wholebrain": {"dataset": "Whole Brain", "mb": (349.41, 96.72), "ms": (5.59, 2.72)},
    "nnunet_totalseg": {"dataset": "TotalSegmentator V2", "mb": (107.84, 33.97), "ms": (2.99, 1.25)},
    "swin_unetr_btcv": {"dataset": "TotalSegmentator V2", "mb": (247.96, 70.18), "ms": (9.85, 3.59)},
    "segresnet_wholebody": {"dataset": "TotalSegmentator V2", "mb": (170.44, 50.29), "ms": (5.14, 2.06)},
    "vista3d": {"dataset": "TotalSegmentator V2", "mb": (264.57, 71.18), "ms": (4.59, 1.93)},
}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------------ one model
def calibration_folder(spec, work: Path) -> Path:
    """One real scan of the model's modality (TotalSegmentator's example CT / MR) where ../shared has it, else a
    phantom CT: one volume, so no held-out estimate (random weights have no accuracy to estimate)."""
    folder = work / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    source = SHARED / ("example_mr_sm.nii.gz" if spec.modality == "MR" else "example_ct.nii.gz")
    if source.is_file():
        (folder / source.name).write_bytes(source.read_bytes())
    else:
        from engine_builder.demo import make_phantom_files

        make_phantom_files(folder, (101,))
    return folder


def measure(name: str, weights: str | None, repeats: int, work: Path) -> dict:
    """Every OpenVINO figure of registry model ``name`` at its published size (module docstring)."""
    import torch

    from engine_builder.backends.openvino import cpu_has_bf16
    from engine_builder.calibration import build_calibration_set
    from engine_builder.models import get_spec
    from engine_builder.pipeline import BuildRequest, build_engine, open_engine

    spec = get_spec(name)
    calib = calibration_folder(spec, work)
    precisions = ["fp32", "int8"] + (["bf16"] if cpu_has_bf16() else [])
    built, seconds = {}, {}
    for precision in precisions:
        started = time.perf_counter()
        built[precision] = build_engine(BuildRequest(model=name, calib=calib, weights=weights, precision=precision,
                                                     patches_per_volume=1, allow_random_weights=weights is None, accuracy_control="off",
                                                     progress=False), out=work / precision, cache_root=work / "cache")
        seconds[precision] = round(time.perf_counter() - started, 1)
    engines = {p: open_engine(b.engine_dir)[0] for p, b in built.items()}
    window = build_calibration_set(calib, spec, 1, cache_dir=work / "cache" / "calibration", progress=False).patches[:1]
    network = spec.build_network()  # latency only: the architecture, not the weights, sets the time
    torch.set_num_threads(os.cpu_count() or 1)

    def torch_fp32():
        with torch.inference_mode():
            network(torch.from_numpy(window))

    runners = {"torch_fp32": torch_fp32, **{f"openvino_{p}": (lambda e=engines[p]: e.infer(window)) for p in precisions}}
    latency = interleaved_ms(runners, repeats)
    profile = engines["int8"].profile(window)
    int8 = built["int8"].manifest
    return {"name": name, "architecture": spec.architecture.rsplit(".", 1)[-1], "labels": len(spec.labels),
            "roi": list(spec.roi_size), "network_kind": spec.network_kind,
            "parameters": sum(p.numel() for p in network.parameters()),
            "weights": weights or "random (speed and size only)",
            "engine_bytes": {p: b.manifest["sizes"]["engine_bytes"] for p, b in built.items()},
            "build_seconds": seconds, "int8_share": profile["int8_share"],
            "int8_conv_share": profile["int8_conv_share"], "int8_matmul_share": profile["int8_matmul_share"],
            "profile_by_layer_type": profile["by_layer_type"], "float_ops": int8["runs_as"].get("float_ops", {}),
            "kept_in_float": len(int8.get("kept_in_float", [])),
            "latency_ms": {k: round(v["median"], 1) for k, v in latency.items()}, "latency_repeats": repeats,
            "latency_samples_ms": {k: v["samples"] for k, v in latency.items()}}


def tensorrt_rtx_status(name: str, work: Path) -> dict:
    """ModelOpt's Q/DQ graph of ``name`` at its published size and whether TensorRT-RTX builds a plan from it."""
    from engine_builder.backends import BuildOptions, FP32Graph
    from engine_builder.backends.tensorrt import PLAN_FILE, TensorRTRTXBackend
    from engine_builder.calibration import build_calibration_set
    from engine_builder.export import export_onnx
    from engine_builder.models import get_spec

    import logging

    class FoldCount(logging.Handler):  # the node counts the build itself logs when it folds the graph for ModelOpt
        nodes: tuple = (None, None)

        def emit(self, record):
            if record.msg.startswith("graph folded for ModelOpt"):
                self.nodes = record.args

    folding_log = logging.getLogger("engine_builder.backends.modelopt_qdq")
    handler = FoldCount(logging.INFO)
    folding_log.addHandler(handler)
    folding_log.setLevel(logging.INFO)
    spec = get_spec(name)
    network = spec.build_network()
    started = time.perf_counter()
    graph = FP32Graph(spec, network, export_onnx(network, work / "fp32.onnx", spec.roi_size, spec.in_channels), 1)
    patches = build_calibration_set(calibration_folder(spec, work), spec, 1, cache_dir=work / "calibration",
                                    progress=False).patches
    engine = TensorRTRTXBackend().build(graph, patches, "int8", BuildOptions(method="max", extra={"build_only": True}))
    seconds = round(time.perf_counter() - started, 1)
    folding_log.removeHandler(handler)
    engine.save(work)
    report = engine.runtime_report()
    return {"status": "built", "plan_bytes": (work / PLAN_FILE).stat().st_size,
            "quantized_ops": report["graph"]["quantized_ops"], "quantizer": report["graph"]["quantizer"],
            "seconds": seconds, "library": report.get("library_version"), "onnx_nodes": handler.nodes[0],
            "modelopt_nodes": handler.nodes[1]}


def child_main(args) -> int:
    """One model in this process: its record as JSON on ``--result``."""
    work = Path(tempfile.mkdtemp(prefix=f"models-table-{args.child}-"))
    task = tensorrt_rtx_status(args.child, work) if args.tensorrt_rtx else \
        measure(args.child, args.weights_path, args.repeats, work)
    Path(args.result).write_text(json.dumps(task, indent=1, default=float))
    return 0


def run_child(name: str, args, deadline: float) -> dict:
    """``name`` measured in a child process within the time left; the reason where it gave no figures."""
    left = deadline - time.monotonic()
    before = load_average()
    if left < 60:
        return {"name": name, "status": f"not measured here (too slow on {os.cpu_count()} cores: the time budget was spent)"}
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--child", name, "--result", str(result), "--repeats", str(args.repeats)]
        command += ["--tensorrt-rtx"] if args.tensorrt_rtx else []
        command += ["--weights-path", args.weights[name]] if name in args.weights else []
        started = time.monotonic()
        try:
            process = subprocess.run(command, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            return {"name": name, "status": f"not measured here (too slow on {os.cpu_count()} cores: over the "
                                            f"{left / 60:.0f} min left)",
                    "load_average": [before, load_average()]}
        record = json.loads(result.read_text()) if result.is_file() else {
            "name": name, "status": f"failed (exit {process.returncode}): "
                                    f"{(process.stderr.strip().splitlines() or ['no message'])[-1][:200]}"}
    record.setdefault("name", name)
    record.setdefault("status", "measured")
    record.update(seconds=round(time.monotonic() - started, 1), load_average=[before, load_average()])
    return record


# ------------------------------------------------------------------------------------------------ rendering
def _mb(n) -> str:
    return f"{n / 1e6:.1f}" if n else "–"


def _row(record: dict, trt: dict | None) -> list[str]:
    name, study = record["name"], STUDY.get(record["name"])
    published = (f"{study['mb'][0]:.1f} / {study['mb'][1]:.1f} MB, {study['ms'][0]:.2f} / {study['ms'][1]:.2f} ms "
                 f"({study['dataset']})" if study else "not published")
    trt_text = (f"built ({trt['plan_bytes'] / 1e6:.0f} MB plan, {trt['quantized_ops']} Q/DQ ops)"
                if trt and trt.get("status") == "built" else (trt or {}).get("status", "not run at this size (CI width: built)"))
    if record.get("status") != "measured":
        return [f"`{name}`", "", "", "", "", "", record["status"], trt_text, "", published]
    sizes, ms = record["engine_bytes"], record["latency_ms"]
    ratio = sizes["int8"] / sizes["fp32"]
    latency = " / ".join(f"{ms[k]:.0f}" for k in ("torch_fp32", "openvino_fp32", "openvino_bf16", "openvino_int8") if k in ms)
    speedup = " / ".join(f"{ms[k] / ms['openvino_int8']:.1f}x" for k in ("torch_fp32", "openvino_fp32", "openvino_bf16")
                         if k in ms)
    share = f"{record['int8_share']:.0%}" + (f" (matmul {record['int8_matmul_share']:.0%})"
                                             if record.get("int8_matmul_share") is not None else "")
    floats = ", ".join(f"{k} {v}" for k, v in record["float_ops"].items()) or "nothing"
    return [f"`{name}`", f"{record['architecture']}, {record['labels']} labels, {'x'.join(map(str, record['roi']))}",
            f"{record['parameters'] / 1e6:.1f} M", f"{_mb(sizes['fp32'])} / {_mb(sizes['int8'])} ({ratio:.2f}x)",
            share, latency, speedup, trt_text, floats, published]


def targets_summary(records: list[dict]) -> list[str]:
    """The issue's speed and size targets checked against the measured rows (accuracy needs trained weights)."""
    measured = [r for r in records if r.get("status") == "measured"]
    if not measured:
        return ["No model was measured."]
    share = min(measured, key=lambda r: r["int8_share"])
    ratios = {r["name"]: r["engine_bytes"]["int8"] / r["engine_bytes"]["fp32"] for r in measured}
    cnn = [r["name"] for r in measured if r["network_kind"] == "cnn"]
    worst_cnn = max(cnn, key=ratios.get) if cnn else None
    missing = [r["name"] for r in records if r.get("status") != "measured"]
    lines = [f"Targets, on these rows ({len(measured)} of {len(records)} measured"
             + (f"; not measured: {', '.join(missing)}" if missing else "") + "):",
             f"- int8 share of convolution + matmul time >= 80 %: "
             f"{'met' if share['int8_share'] >= 0.8 else 'missed'} for "
             f"{sum(r['int8_share'] >= 0.8 for r in measured)} of {len(measured)} (lowest: `{share['name']}` "
             f"{share['int8_share']:.0%}).",
             f"- INT8 engine <= 0.3x FP32 for every CNN: "
             + (f"{'met' if ratios[worst_cnn] <= 0.3 else 'missed'} (largest: `{worst_cnn}` {ratios[worst_cnn]:.2f}x); "
                if worst_cnn else "no CNN measured; ")
             + f"the transformers: {', '.join(f'`{n}` {ratios[n]:.2f}x' for n in ratios if n not in cnn) or '-'}.",
             "- held-out agreement >= 0.98 where the weights are trained: not measurable here (random weights)."]
    return lines


def tensorrt_rtx_note(section: dict | None) -> list[str]:
    """What the TensorRT-RTX column is, from the ``--tensorrt-rtx`` run's figures."""
    if not section:
        return ["TensorRT-RTX column: `scripts/models_table.py --tensorrt-rtx` has not been run at these sizes.", ""]
    built = [r for r in section["models"] if r.get("status") == "built"]
    seconds = ", ".join(f"`{r['name']}` {r['seconds']:.0f} s" + (
        f" (graph folded {r['onnx_nodes']} -> {r['modelopt_nodes']} nodes)" if r.get("modelopt_nodes") else "*")
        for r in built)
    if any(not r.get("modelopt_nodes") for r in built):
        seconds += " (*: measured before ModelOpt was given the folded graph)"
    return [f"TensorRT-RTX column (`scripts/models_table.py --tensorrt-rtx`, {section['created'][:10]}, "
            f"{built[0]['quantizer'] if built else 'ModelOpt'}"
            + (f", TensorRT-RTX {built[0]['library']}" if built and built[0].get("library") else "") + "): "
            f"{len(built)} of {len(section['models'])} published-size graphs quantized to Q/DQ by ModelOpt and built "
            "into a TensorRT-RTX plan on this machine, which has no GPU (build only: these plans were never executed; "
            "TensorRT-RTX runs on RTX GPUs, not on the H100/H200 lent here). Quantize + build time, load average "
            f"{section.get('load_average_range')} for the rows of the last run: "
            f"{seconds or '-'}.", ""]


def markers(json_path: Path) -> tuple[str, str]:
    """The docs/models.md markers of the section drawn from ``json_path`` (models.json: the main table)."""
    stem = json_path.stem
    return MARKERS if stem == JSON_OUT.stem else (f"<!-- models-table:{stem} -->", f"<!-- /models-table:{stem} -->")


def render(figures: dict, json_path: Path = JSON_OUT) -> str:
    """The marked section of docs/models.md drawn from ``figures`` (read from ``json_path``)."""
    from engine_builder.evaluate import markdown_table

    trt_section = figures.get("tensorrt_rtx")
    trt = {r["name"]: r for r in (trt_section or {}).get("models", [])}
    bf16 = any("openvino_bf16" in r.get("latency_ms", {}) for r in figures["models"])
    header = ["model", "network, labels, ROI", "parameters", "engine FP32 / INT8 MB (ratio)",
              "int8 share of conv+matmul time", "one window ms: torch FP32 / OV FP32 / " + ("OV bf16 / " if bf16 else "") + "OV INT8",
              "INT8 vs torch / vs OV FP32" + (" / vs OV bf16" if bf16 else ""), "TensorRT-RTX Q/DQ build",
              "stays in float (INT8 graph ops)", "study: TensorRT FP32 / INT8 engine, one window"]
    rows = [_row(r, trt.get(r["name"])) for r in figures["models"]]
    if not trt_section:  # a table of another machine: the TensorRT-RTX builds are the main table's
        header.pop(7)
        for row in rows:
            row.pop(7)
    machine = figures["machine"]
    chart = chart_path(json_path)
    created = sorted({r.get("created", figures["created"])[:10] for r in figures["models"]})
    lines = [markers(json_path)[0], "",
             f"Generated by `scripts/models_table.py` on {', '.join(created)} ({machine['cpu']}, "
             f"{machine['logical_cores']} cores, {', '.join(k for k, v in machine['flags'].items() if v) or 'no AVX flags read'}; "
             f"OpenVINO {figures['versions']['openvino']}, NNCF {figures['versions']['nncf']}, torch {figures['versions']['torch']}); "
             f"every figure in [`docs/benchmarks/{json_path.name}`](benchmarks/{json_path.name}). **Random weights: speed and size "
             "only** (no published checkpoint can be downloaded here), published sizes, one calibration volume, "
             f"latency medians of {figures['settings']['repeats']} interleaved repeats of one window. "
             + ("" if bf16 else "No bf16 column: this CPU has no bf16 (neither AVX512-BF16 nor AMX). ")
             + f"Load average during the run: {figures['load_average_range']} (other work on the {machine['logical_cores']} "
               "cores slows every figure alike within a row).", "",
             markdown_table(header, rows), "",
             f"![One window per model and engine; INT8 size ratio and int8 share](benchmarks/{chart.name})", "",
             *targets_summary(figures["models"]), "",
             "Study column: the MedPTQ study's own TensorRT engines (github.com/hrlblab/PTQ README, \"Performance\"): its "
             "networks are its own trainings (its U-Net and TransUNet on BTCV with 14 classes, SwinUNETR, SegResNet, nnU-Net "
             "and VISTA3D on TotalSegmentator V2), on a GPU the README does not name, so its sizes compare with ours only "
             "roughly and its latencies not at all; it publishes no STU-Net figures.", "",
             *(tensorrt_rtx_note(trt_section) if json_path == JSON_OUT else []), markers(json_path)[1]]
    return "\n".join(lines)


def chart_path(json_path: Path) -> Path:
    return REPO / "docs" / "benchmarks" / f"{json_path.stem}.png"


def render_chart(figures: dict, path: Path) -> None:
    """Left: one window per model and engine (log scale, median with min-max); right: INT8 engine size as a
    fraction of FP32 and the int8 share of convolution + matmul time, beside the issue's 0.3x and 80 % lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in figures["models"] if r.get("status") == "measured"]
    names = [r["name"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    keys = [k for k in LABELS if any(k in r["latency_ms"] for r in rows)]  # the bench chart's engines and colours
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        xs = np.arange(len(rows)) + (i - (len(keys) - 1) / 2) * width
        samples = [r["latency_samples_ms"].get(key, [np.nan]) for r in rows]
        med = np.array([np.median(s) for s in samples])
        err = [med - [min(s) for s in samples], [max(s) for s in samples] - med]
        left.bar(xs, med, width, yerr=err, capsize=2, label=LABELS[key], color=COLORS[key])
    left.set_yscale("log")
    left.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    left.set_ylabel("ms per window at the model's ROI (median, min-max), log")
    left.set_title("One window, random weights (speed only)")
    left.legend(fontsize=8)
    xs = np.arange(len(rows))
    ratio = [r["engine_bytes"]["int8"] / r["engine_bytes"]["fp32"] for r in rows]
    share = [r["int8_share"] if r["int8_share"] is not None else np.nan for r in rows]
    right.bar(xs - 0.2, ratio, 0.4, label="INT8 / FP32 engine size", color="#ff7f0e")
    right.bar(xs + 0.2, share, 0.4, label="int8 share of conv + matmul time", color="#2ca02c")
    right.axhline(0.3, color="#ff7f0e", linestyle="--", linewidth=1, label="target: size <= 0.3 (CNNs)")
    right.axhline(0.8, color="#2ca02c", linestyle="--", linewidth=1, label="target: int8 share >= 0.8")
    right.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
    right.set_ylim(0, 1.35)
    right.set_title("Size and int8 execution")
    right.legend(fontsize=8, loc="upper left", ncol=2)
    machine = figures["machine"]
    fig.suptitle(f"scripts/models_table.py, {figures['created'][:10]}: {machine['cpu']}, {machine['logical_cores']} "
                 f"cores; OpenVINO {figures['versions']['openvino']}, NNCF {figures['versions']['nncf']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_doc(figures: dict, json_path: Path = JSON_OUT) -> None:
    """Redraw the section of ``json_path`` in docs/models.md (a new one goes after the main table) and its chart."""
    text = DOC.read_text(encoding="utf-8")
    first, last = markers(json_path)
    start, end = text.find(first), text.find(last)
    if start < 0 or end < 0:
        if json_path == JSON_OUT or text.find(MARKERS[1]) < 0:
            raise SystemExit(f"{DOC} has no {first} ... {last} section")
        start = end = text.find(MARKERS[1]) + len(MARKERS[1])
        text = text[:start] + "\n\n" + text[start:]
        start = end = start + 2
        last = ""
    DOC.write_text(text[:start] + render(figures, json_path) + text[end + len(last):], encoding="utf-8")
    render_chart(figures, chart_path(json_path))


# ---------------------------------------------------------------------------------------------------- main
def merged(earlier: dict | None, now: dict) -> list[dict]:
    """``now``'s rows, and ``earlier``'s rows of the models not run this time, each with the date it was measured."""
    rows = {r["name"]: {**r, "created": r.get("created", earlier["created"])} for r in (earlier or {}).get("models", [])}
    rows.update({r["name"]: {**r, "created": now["created"]} for r in now["models"]})
    return [rows[name] for name in ORDER if name in rows]


def _same_machine(machine: dict) -> tuple:
    return machine.get("cpu"), machine.get("logical_cores"), tuple(sorted((machine.get("flags") or {}).items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ORDER))
    parser.add_argument("--weights", nargs="*", default=[], help="NAME=PATH: a checkpoint for a model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-min", type=float, default=30.0, help="minutes for all models together")
    parser.add_argument("--tensorrt-rtx", action="store_true", help="TensorRT-RTX build status (run in its venv)")
    parser.add_argument("--render", action="store_true", help="only redraw docs/models.md from the JSON")
    parser.add_argument("--json", type=Path, default=JSON_OUT, help="the figures file (and so the section and chart)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--weights-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    json_path = args.json.resolve()
    if args.render:
        write_doc(json.loads(json_path.read_text()), json_path)
        return 0
    args.weights = dict(item.split("=", 1) for item in args.weights)
    deadline = time.monotonic() + args.budget_min * 60
    records = []
    for name in args.models:
        print(f"[models-table {time.strftime('%H:%M:%S')}] {name} (load {load_average()})", flush=True)
        records.append(run_child(name, args, deadline))
        print(f"  -> {records[-1].get('status')} in {records[-1].get('seconds', 0):.0f} s", flush=True)
    figures = json.loads(json_path.read_text()) if json_path.is_file() else {}
    loads = [value for r in records for pair in r.get("load_average", []) for value in pair[:1]]
    section = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_min": args.budget_min, "models": records,
               "load_average_range": [min(loads), max(loads)] if loads else None}
    machine = {**machine_info(None), "flags": cpu_flags()}
    if args.tensorrt_rtx:
        figures["tensorrt_rtx"] = {**section, "models": merged(figures.get("tensorrt_rtx"), section)}
    else:
        if figures.get("machine") and _same_machine(figures["machine"]) != _same_machine(machine):
            figures = {}  # rows of another CPU are not merged into this one's table
        figures.update(section, models=merged(figures, section), machine=machine, versions=versions(),
                       settings={"repeats": args.repeats, "models": args.models, "weights": args.weights})
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(figures, indent=1, default=float) + "\n")
    if "models" in figures:
        write_doc(figures, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
