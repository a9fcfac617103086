"""INT8 mixed with bf16, and INT8 against bf16, on a CPU that has bf16 (this project's 2-core machine today has none).

Three steps, because the CPU with bf16 is the device machine (no package registry there):

    # here: an INT8 demo engine calibrated on the demo model's two training CTs, and the three CTs that neither the
    # model nor the calibration saw, preprocessed, into a carried folder
    .venv/bin/python scripts/bf16_study.py prepare --engine ENGINE_DIR --carry .carry/bf16
    # on the device (OpenVINO installed from a carried wheel, engine_builder from the working tree)
    python scripts/bf16_study.py run --carry .carry/bf16 --out $OUT/bf16_2t.json --threads 2
    # here: the table and chart
    .venv/bin/python scripts/bf16_study.py render --json bf16_2t.json bf16_16t.json --out docs/benchmarks

``run`` compiles the engine's FP32 reference graph (``reference.xml``: FP32 weights stored as FP16) with
INFERENCE_PRECISION_HINT f32 and bf16, and the INT8 graph with f32 (the float leftovers in f32: the default) and
bf16 (the leftovers in bf16); times one 96^3 window per configuration (interleaved repeats, median) and segments
each CT whole through the project's sliding window, comparing every configuration's label map with OpenVINO
FP32's on the voxels either labels foreground.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: CTs neither the demo model's training nor this engine's calibration saw (the study's UNSEEN).
UNSEEN = ("msd_spleen", "chest_abdomen", "chest_2")
CONFIGS = {"OpenVINO FP32": ("reference", "f32"), "OpenVINO bf16": ("reference", "bf16"),
           "OpenVINO INT8": ("model", "f32"), "OpenVINO INT8 + bf16": ("model", "bf16")}


def prepare(args) -> int:
    """Copy the engine and the study's preprocessed unseen CTs (float16, compressed) into the carried folder."""
    carry = Path(args.carry)
    carry.mkdir(parents=True, exist_ok=True)
    engine = Path(args.engine)
    for name in ("manifest.json", "model.xml", "model.bin", "reference.xml", "reference.bin"):
        shutil.copy2(engine / name, carry / name)
    for name in UNSEEN:
        grid = next(Path(args.study_cache).glob(f"{name}-*.npz"), None)
        if grid is None or "-fp32-" in grid.name:
            raise SystemExit(f"no preprocessed {name} in {args.study_cache}: run scripts/quantization_study.py first")
        image = np.load(grid)["image"]
        np.savez_compressed(carry / f"{name}.npz", image=image.astype(np.float16))
    print(f"wrote {carry}: {sum(f.stat().st_size for f in carry.iterdir()) / 1e6:.1f} MB")
    return 0


def run(args) -> int:
    import openvino as ov

    from engine_builder.agreement import compare_labels
    from engine_builder.sliding_window import segment_image
    from engine_builder.spec import ModelSpec

    carry = Path(args.carry)
    manifest = json.loads((carry / "manifest.json").read_text())
    spec = ModelSpec.from_dict(manifest["spec"])
    core = ov.Core()
    threads = args.threads or os.cpu_count()
    compiled = {}
    for label, (graph, hint) in CONFIGS.items():
        model = core.read_model(str(carry / f"{graph}.xml"))
        compiled[label] = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_NUM_THREADS": threads})
    requests = {label: c.create_infer_request() for label, c in compiled.items()}
    window = np.load(carry / "chest_abdomen.npz")["image"].astype(np.float32)[None, :, :96, :96, :96]
    window = np.ascontiguousarray(np.pad(window, [(0, 0), (0, 0)] + [(0, 96 - n) for n in window.shape[2:]]))
    times = {label: [] for label in CONFIGS}
    for label, request in requests.items():
        request.infer({0: window})  # warm-up
    for _ in range(args.repeats):
        for label, request in requests.items():
            start = time.perf_counter()
            request.infer({0: window})
            times[label].append((time.perf_counter() - start) * 1e3)
    torch_ms = _torch_window_ms(spec, window, args.repeats, threads)
    volumes = {}
    for name in UNSEEN:
        image = np.load(carry / f"{name}.npz")["image"].astype(np.float32)
        labels = {}
        for label, request in requests.items():
            def infer(batch, request=request):
                return request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})[0]

            start = time.perf_counter()
            labels[label] = segment_image(image, infer, spec.roi_size, spec.overlap, len(spec.label_names))
            volumes.setdefault(name, {})[label] = {"seconds": time.perf_counter() - start}
        for label in CONFIGS:
            figures = compare_labels(labels["OpenVINO FP32"], labels[label], spec.label_names,
                                     min_count=int(np.ceil(1000.0 / np.prod(spec.spacing_mm))))
            volumes[name][label].update({k: figures[k] for k in ("foreground_agreement", "mean_dice", "min_dice")})
    result = {"machine": _machine(ov.__version__, threads), "window_ms": {k: statistics.median(v) for k, v in times.items()},
              "window_ms_all": times, "torch_fp32_window_ms": torch_ms, "volumes": volumes,
              "engine": {"calibration": manifest["calibration"]["sources"], "kept_in_float": manifest.get("kept_in_float")},
              "repeats": args.repeats}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("machine", "window_ms", "torch_fp32_window_ms")}, indent=1))
    return 0


def _torch_window_ms(spec, window: np.ndarray, repeats: int, threads: int) -> float | None:
    """torch FP32 eager on the same window (None where torch or MONAI is missing)."""
    try:
        import torch

        from engine_builder.weights import load_state_dict
    except ImportError:
        return None
    torch.set_num_threads(threads)
    network = spec.build_network().eval()
    network.load_state_dict(load_state_dict(REPO / "engine_builder" / "models" / "weights" / "demo_unet.pt"))
    batch = torch.from_numpy(window)
    with torch.inference_mode():
        network(batch)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            network(batch)
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _machine(openvino_version: str, threads: int) -> dict:
    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    return {"cpu": model, "logical_cores": os.cpu_count(), "threads": threads,
            "flags": {f: f in flags for f in wanted}, "openvino": openvino_version, "python": platform.python_version()}


def render(args) -> int:
    runs = [json.loads(Path(path).read_text()) for path in args.json]
    first = runs[0]["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in first["flags"].items())
    lines = ["# INT8, bf16 and INT8 + bf16 on a CPU with bf16", "",
             f"Generated by `scripts/bf16_study.py` (run on the device machine, rendered here). CPU: {first['cpu']}, "
             f"{first['logical_cores']} logical cores; flags: {flags}; OpenVINO {first['openvino']}. The project's own "
             "2-core machine has no bf16 (AVX2 only), so this is where bf16 was measured. Window times are medians of "
             "interleaved repeats within one run; every ratio is from one run.", "",
             "The INT8 engine is the demo model's default recipe (accuracy control off) calibrated on "
             f"{', '.join(runs[0]['engine']['calibration'])} (the demo model's training CTs); the three CTs below were "
             "seen by neither the model nor the calibration. Agreement and Dice are against OpenVINO FP32 on the "
             "voxels either labels foreground (Dice: mean and worst over labels of at least 1 mL). \"INT8 + bf16\" "
             "is the same INT8 graph with INFERENCE_PRECISION_HINT bf16: what stays in float (normalisations, "
             "activations, additions) runs in bf16.", ""]
    for data in runs:
        lines += _table(data)
    out = Path(args.out)
    (out / "bf16.md").write_text("\n".join(lines) + "\n")
    (out / "bf16.json").write_text(json.dumps(runs, indent=2))
    _chart(runs[-1], out / "bf16.png")
    print(f"wrote {out / 'bf16.md'}, {out / 'bf16.png'}")
    return 0


def _table(data: dict) -> list[str]:
    window, torch_ms = data["window_ms"], data.get("torch_fp32_window_ms")
    lines = [f"## {data['machine']['threads']} threads ({data['repeats']} repeats)", "",
             "| configuration | one 96³ window (ms) | vs torch FP32 eager | vs OpenVINO bf16 | "
             + " | ".join(f"{name}: fg agreement / mean Dice / worst Dice" for name in UNSEEN) + " |",
             "|---|---|---|---|" + "---|" * len(UNSEEN)]
    if torch_ms:
        lines.append(f"| torch FP32 eager | {torch_ms:.1f} | 1.00x | | " + " | ".join("" for _ in UNSEEN) + " |")
    for label in CONFIGS:
        cells = [f"{v['foreground_agreement']:.4f} / {v['mean_dice']:.3f} / {v['min_dice']:.3f}"
                 for v in (data["volumes"][name][label] for name in UNSEEN)]
        speedup = f"{torch_ms / window[label]:.2f}x" if torch_ms else ""
        lines.append(f"| {label} | {window[label]:.1f} | {speedup} | {window['OpenVINO bf16'] / window[label]:.2f}x | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _chart(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(CONFIGS)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.barh(labels, [data["window_ms"][k] for k in labels], color="#4c72b0")
    left.set_xlabel("one 96³ window (ms, median)")
    left.invert_yaxis()
    width = 0.8 / len(UNSEEN)
    for i, name in enumerate(UNSEEN):
        right.barh([j + i * width for j in range(len(labels))],
                   [data["volumes"][name][k]["foreground_agreement"] for k in labels], height=width, label=name)
    right.set_yticks([j + width for j in range(len(labels))], labels)
    right.invert_yaxis()
    right.set_xlim(0.95, 1.0)
    right.set_xlabel("foreground agreement with OpenVINO FP32 (unseen CTs)")
    right.legend(fontsize=8)
    fig.suptitle(f"{data['machine']['cpu']}, {data['machine']['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--engine", required=True)
    p.add_argument("--carry", default=str(REPO / ".carry" / "bf16"))
    p.add_argument("--study-cache", default=str(REPO / ".cache" / "quantization_study"))
    r = sub.add_parser("run")
    r.add_argument("--carry", default=str(REPO / ".carry" / "bf16"))
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--repeats", type=int, default=9)
    d = sub.add_parser("render")
    d.add_argument("--json", nargs="+", required=True, help="one or more run JSONs (one table each)")
    d.add_argument("--out", default=str(REPO / "docs" / "benchmarks"))
    args = parser.parse_args(argv)
    return {"prepare": prepare, "run": run, "render": render}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
