"""``ptqseg bench``: torch FP32 vs OpenVINO FP32 / bf16 / INT8 on the same model and input, in one run.

Two measurements, both side by side in one process run so that ratios are honest on a noisy machine:

- **per window**: one real preprocessed 96^3 patch (a held-out calibration patch) through torch FP32 eager
  (what a user runs without this project), OpenVINO FP32 (``f32`` precision hint), OpenVINO bf16 (only where
  the CPU offers it) and OpenVINO INT8 (NNCF), for every model; the backends take turns within each repeat so
  that load from other processes hits all of them alike;
- **whole volume** (the demo model): file in -> label file out through ``inference.segment_file`` with every
  stage timed (read, preprocess, inference, argmax, inverse_resample, write). Each pipeline runs in a fresh
  Python process (``python -m engine_builder.bench child CONFIG``), so its peak resident memory is its own,
  not the benchmark's. INT8/bf16/FP32 labels are compared with the torch FP32 labels voxel by voxel.

It writes ``cpu.md`` (tables, machine, versions, the targets and whether each is met, computed from the
figures), ``cpu.json`` (every figure) and ``cpu.png`` (chart) into ``out_dir``, each atomically.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import PTQError

DEFAULT_MODELS = ("demo", "unet", "segresnet")
VOLUME_MODEL = "demo"
STAGES = ("read", "preprocess", "inference", "argmax", "inverse_resample", "write")
CALIBRATION_SEEDS = (101, 102, 103, 104)

_REPO_ROOT = Path(__file__).resolve().parents[1]
_SHARED_DATA = _REPO_ROOT.parent / "shared" / "data"
CHEST_CT = _SHARED_DATA / "chest_ct" / "lung_ct_phase00.nii.gz"
# Real CTs added to the synthetic calibration set when present (never the whole-volume test CT).
REAL_CALIBRATION_CTS = (_SHARED_DATA / "totalsegmentator" / "example_ct.nii.gz",
                        _SHARED_DATA / "msd_spleen" / "sub-spleen2_ct.nii.gz")

# The issue's performance targets (checked against the figures, never timed in tests).
TARGETS = {
    "int8_size_ratio_max": 0.3,            # INT8 engine bytes / FP32 engine bytes
    "int8_agreement_min": 0.98,            # demo model, real CT, INT8 vs FP32 argmax
    "window_speedup_vs_torch_min": 4.0,    # OV INT8 vs torch FP32 eager, per window
    "volume_seconds_max": 10.0,            # demo model, chest CT, file in -> label file out
    "volume_speedup_vs_torch_min": 3.0,
    "volume_peak_rss_bytes_max": 3 * 1024**3,
}

# Backend keys, in display order.
TORCH_FP32, OV_FP32, OV_BF16, OV_INT8 = "torch_fp32", "openvino_fp32", "openvino_bf16", "openvino_int8"
LABELS = {TORCH_FP32: "torch FP32 eager", OV_FP32: "OpenVINO FP32", OV_BF16: "OpenVINO bf16", OV_INT8: "OpenVINO INT8"}
_PRECISION = {OV_FP32: "fp32", OV_BF16: "bf16", OV_INT8: "int8"}


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------- entry point
def run_benchmark(models=DEFAULT_MODELS, volume: str | Path | None = None, calib: str | Path | None = None,
                  repeats: int = 5, volume_repeats: int = 3, out_dir: str | Path = "docs/benchmarks",
                  threads: int | None = None, cache_root: str | Path | None = None, volume_model: str = VOLUME_MODEL,
                  progress: bool = True) -> dict:
    """Run the benchmark, write ``cpu.md``, ``cpu.json`` and ``cpu.png`` into ``out_dir``; return the figures.

    Args:
        models: registry names timed per window (the demo model uses its shipped weights when present, the
            others random weights: speed and size only).
        volume: whole-volume input; default the chest CT in ``../shared/data`` if present, else a large phantom.
        calib: calibration folder; default synthetic phantoms plus the real CTs in ``../shared/data`` (never
            the whole-volume input).
        repeats / volume_repeats: timed repeats per window (after one warm-up) / per whole-volume pipeline.
        threads: CPU threads for every runtime (None: all cores).
        cache_root: engine and calibration cache (default ``$PTQSEG_CACHE`` or ``~/.cache/ptqsegment``).
        volume_model: the model run on the whole volume (``None`` to skip that part).
    """
    from .artifact import default_cache_root
    from .backends.openvino import cpu_has_bf16

    models = list(models or DEFAULT_MODELS)
    if repeats < 1 or volume_repeats < 1:
        raise PTQError("--repeats and --volume-repeats must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    started = time.perf_counter()
    figures: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(threads),
                     "versions": versions(), "settings": {"models": models, "repeats": repeats,
                                                           "volume_repeats": volume_repeats, "threads": threads}}
    backends = [TORCH_FP32, OV_FP32] + ([OV_BF16] if cpu_has_bf16() else []) + [OV_INT8]
    figures["backends"] = backends
    calib_folder, calib_info = _calibration_folder(calib, cache_root, volume)
    figures["calibration"] = calib_info

    figures["window"] = {}
    engines: dict[str, dict[str, Path]] = {}
    weights = {name: _weights_for(name) for name in dict.fromkeys(models + ([volume_model] if volume_model else []))}
    for name in models:
        _say(f"model {name}: building engines and timing one window ({repeats} repeats; weights: {weights[name][2]})")
        figures["window"][name], engines[name] = _window_benchmark(weights[name], calib_folder, backends, repeats,
                                                                   threads, cache_root, progress)
        gc.collect()

    if volume_model:
        if volume_model not in engines:
            _say(f"model {volume_model}: building engines for the whole volume")
            _, engines[volume_model] = _window_benchmark(weights[volume_model], calib_folder, backends, 0, threads,
                                                         cache_root, progress)
        input_path, kind = _volume_input(volume, cache_root)
        figures["volume"] = _volume_benchmark(weights[volume_model], input_path, kind, engines[volume_model], backends,
                                              volume_repeats, threads)
    figures["machine"]["load_average_end"] = _load_average()
    figures["targets"] = check_targets(figures)
    figures["notes"] = _notes(figures)
    figures["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    figures["files"] = write_outputs(figures, out_dir)
    _say(f"done in {figures['benchmark_seconds']:.0f} s: {', '.join(figures['files'].values())}")
    return figures


# ------------------------------------------------------------------------------------------ machine info
def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_flags() -> dict[str, bool]:
    """The instruction-set flags that decide INT8/bf16 speed on x86 (from ``/proc/cpuinfo``)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {flag: flag in flags for flag in wanted}


def machine_info(threads: int | None) -> dict:
    import torch

    from .backends.openvino import ov
    from .pipeline import cpu_name

    try:
        capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - informational only
        capabilities = []
    return {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "threads": threads or os.cpu_count(),
            "torch_threads": threads or torch.get_num_threads(), "flags": cpu_flags(),
            "openvino_cpu_capabilities": capabilities, "system": platform.platform(),
            "python": platform.python_version(), "load_average_start": _load_average()}


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata (no runtime is imported outside backends/)."""
    from importlib.metadata import version

    return {"engine_builder": __version__, "git": _git_describe(), "openvino": version("openvino"),
            "nncf": version("nncf"), "torch": version("torch"), "monai": version("monai"), "numpy": np.__version__}


def _git_describe() -> str | None:
    """The commit benchmarked, with ``+modified`` when engine_builder has uncommitted changes."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True,  # noqa: E731
                                           timeout=10)
        commit = run("rev-parse", "--short", "HEAD")
        if commit.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", "engine_builder").stdout.strip()
        return commit.stdout.strip() + ("+modified" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------- calibration
def _calibration_folder(calib, cache_root: Path, volume) -> tuple[Path, dict]:
    if calib is not None:
        folder = Path(calib)
        if not folder.is_dir():
            raise PTQError(f"calibration folder {folder} does not exist")
        return folder, {"folder": str(folder), "kind": "user folder"}
    from .demo import make_phantom_files

    folder = cache_root / "bench-calibration"
    make_phantom_files(folder, CALIBRATION_SEEDS)
    excluded = Path(volume).resolve() if volume else CHEST_CT.resolve()
    real = []
    for path in REAL_CALIBRATION_CTS:
        if path.is_file() and path.resolve() != excluded:
            link = folder / f"real_{path.name}"
            if not link.exists():
                shutil.copyfile(path, link)
            real.append(path.name)
    return folder, {"folder": str(folder), "kind": "default",
                    "synthetic_phantoms": [f"phantom seed {s}" for s in CALIBRATION_SEEDS], "real_ct": real}


# ---------------------------------------------------------------------------------------- per window
def _weights_for(name: str):
    """(spec, weights path or None, description): packaged/downloaded weights if present, else random init."""
    from .models import get_spec
    from .files import file_sha256
    from .weights import resolve_weights

    spec = get_spec(name)
    if spec.weights.kind == "packaged":
        try:
            path = resolve_weights(spec)
            return spec, path, f"{path.name} (sha256 {file_sha256(path)[:12]})"
        except PTQError:
            pass
    elif spec.weights.kind == "monai_bundle":
        from .artifact import default_cache_root
        from .weights import find_bundle  # only a cached bundle: no network during a benchmark

        target = default_cache_root() / "bundles" / spec.weights.name / spec.weights.path
        if target.is_file():
            return spec, find_bundle(spec) / spec.weights.path, f"MONAI bundle {spec.weights.name}"
    return spec, None, "random init"


def _window_benchmark(weights: tuple, calib_folder: Path, backends: list[str], repeats: int, threads, cache_root: Path,
                      progress: bool) -> tuple[dict, dict[str, Path]]:
    import torch

    from .backends.torch_backend import TorchEngine
    from .calibration import build_calibration_set
    from .pipeline import BuildRequest, build_engine, open_engine
    from .weights import load_network

    spec, weights_path, weights_note = weights
    name = spec.name
    if threads:
        torch.set_num_threads(int(threads))
    results: dict = {"weights": weights_note, "trained": weights_path is not None,
                     "architecture": spec.architecture.rsplit(".", 1)[-1], "roi": list(spec.roi_size),
                     "classes": len(spec.labels)}
    built, engine_dirs = {}, {}
    for key in backends:
        if key == TORCH_FP32:
            continue
        request = BuildRequest(model=name, calib=calib_folder, weights=weights_path, precision=_PRECISION[key],
                               threads=threads, allow_random_weights=weights_path is None, progress=progress)
        t0 = time.perf_counter()
        result = build_engine(request, cache_root=cache_root)
        _say(f"  {name} {LABELS[key]}: {'cache hit' if result.cache_hit else 'built'} in "
             f"{time.perf_counter() - t0:.1f} s ({result.engine_dir})")
        built[key] = result
        engine_dirs[key] = result.engine_dir
    if repeats <= 0:
        return results, engine_dirs

    network = load_network(spec, weights_path)
    state_bytes = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    calibration = build_calibration_set(calib_folder, spec, 8, seed=0, cache_dir=cache_root / "calibration",
                                        progress=False)
    window = np.ascontiguousarray(calibration.volumes[-1].patches[:1])
    runners = {TORCH_FP32: TorchEngine(network, "fp32", 1)}
    for key, result in built.items():
        runners[key], _, _ = open_engine(result.engine_dir, threads=threads)
    results["latency_ms"] = interleaved_ms({k: (lambda e=runners[k]: e.infer(window)) for k in backends}, repeats)

    fp32_bytes = built[OV_FP32].manifest["sizes"]["engine_bytes"]
    results["sizes_bytes"] = {TORCH_FP32: state_bytes, "fp32_onnx": built[OV_FP32].manifest["sizes"]["fp32_onnx_bytes"],
                              **{k: r.manifest["sizes"]["engine_bytes"] for k, r in built.items()}}
    results["int8_size_ratio"] = built[OV_INT8].manifest["sizes"]["engine_bytes"] / fp32_bytes
    median = {k: v["median"] for k, v in results["latency_ms"].items()}
    results["speedup"] = {f"{k}_vs_{ref}": median[ref] / median[k] for k in backends for ref in backends
                          if k != ref and backends.index(ref) < backends.index(k)}
    results["runs_as"] = {k: runners[k].runtime_report() for k in built}
    results["kept_in_float"] = built[OV_INT8].manifest.get("kept_in_float", [])
    results["build_seconds"] = {k: r.manifest.get("build_seconds") for k, r in built.items()}
    results["accuracy_held_out"] = {k: _accuracy_summary(r.manifest.get("accuracy")) for k, r in built.items()}
    results["calibration"] = built[OV_INT8].manifest.get("calibration")
    del runners
    gc.collect()
    return results, engine_dirs


def _accuracy_summary(accuracy: dict | None) -> dict | None:
    if not accuracy:
        return None
    return {k: accuracy[k] for k in ("argmax_agreement", "logits_relative_l2", "patches") if k in accuracy}


def interleaved_ms(functions: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Median/min/max ms of each function; within each repeat every function runs once, in turn."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    samples: dict[str, list[float]] = {k: [] for k in functions}
    for _ in range(repeats):
        for key, function in functions.items():
            start = time.perf_counter()
            function()
            samples[key].append((time.perf_counter() - start) * 1e3)
    return {k: _stats(v) for k, v in samples.items()}


def _stats(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "repeats": len(samples),
            "samples": [round(s, 3) for s in samples]}


# --------------------------------------------------------------------------------------- whole volume
def _volume_input(volume, cache_root: Path) -> tuple[Path, str]:
    if volume is not None:
        path = Path(volume)
        if not path.exists():
            raise PTQError(f"volume {path} not found")
        real = path.resolve() == CHEST_CT.resolve() if CHEST_CT.exists() else False
        return path, "chest CT (real)" if real else "user volume"
    if CHEST_CT.is_file():
        return CHEST_CT, "chest CT (real)"
    from .io import Volume, write_volume
    from .phantom import make_phantom

    path = cache_root / "bench-volume" / "phantom_512x512x141.nii.gz"
    if not path.exists():
        _say("the chest CT is not here: making a 512x512x141 phantom instead")
        hu, _, affine = make_phantom(7, shape=(512, 512, 141))
        write_volume(Volume(hu, affine), path)
    return path, "synthetic phantom (the chest CT was not found)"


def _volume_benchmark(weights: tuple, input_path: Path, kind: str, engine_dirs: dict[str, Path], backends: list[str],
                      repeats: int, threads) -> dict:
    from .inference import count_windows
    from .io import read_volume
    from .preprocess import preprocess

    spec, weights_path, weights_note = weights
    model = spec.name
    volume = read_volume(input_path)
    grid = tuple(preprocess(volume, spec).image.shape[1:])
    result: dict = {"model": model, "weights": weights_note, "trained": weights_path is not None,
                    "input": str(input_path), "kind": kind, "real_ct": kind.startswith("chest CT") or kind == "user volume",
                    "shape": list(volume.shape), "spacing_mm": [round(s, 3) for s in volume.spacing_mm],
                    "network_grid": list(grid), "windows": count_windows(grid, spec.roi_size, spec.overlap),
                    "repeats": repeats, "pipelines": {}}
    del volume
    with tempfile.TemporaryDirectory(prefix="ptqseg-bench-") as scratch:
        scratch = Path(scratch)
        children: dict[str, _Child] = {}
        try:
            for key in backends:  # one at a time, so that their imports and engine compiles do not overlap
                _say(f"whole volume: starting the {LABELS[key]} pipeline process")
                config = {"backend": key, "spec": spec.to_dict(), "weights": str(weights_path) if weights_path else None,
                          "engine_dir": str(engine_dirs[key]) if key in engine_dirs else None, "threads": threads,
                          "input": str(input_path), "output": str(scratch / f"labels_{key}.nii.gz")}
                children[key] = _Child(config, scratch)
            runs: dict[str, list[dict]] = {key: [] for key in backends}
            for r in range(repeats):  # interleaved: load from other work hits every pipeline alike
                order = backends[r % len(backends):] + backends[: r % len(backends)]
                for key in order:
                    runs[key].append(children[key].run())
                _say(f"whole volume ({kind}, {result['windows']} windows), run {r + 1}/{repeats}: "
                     + ", ".join(f"{LABELS[k]} {sum(runs[k][-1].values()) / 1e3:.2f} s" for k in backends))
            finals = {key: child.finish() for key, child in children.items()}
        finally:
            for child in children.values():
                child.kill()
        for key in backends:
            totals = [sum(run.values()) for run in runs[key]]
            result["pipelines"][key] = {
                "stages_ms": {stage: _stats([run.get(stage, 0.0) for run in runs[key]]) for stage in STAGES},
                "total_ms": _stats(totals), "first_run_total_ms": totals[0],
                "engine_load_ms": children[key].ready["engine_load_ms"],
                "rss_after_load_bytes": children[key].ready["rss_after_load_bytes"],
                "peak_rss_bytes": finals[key]["peak_rss_bytes"], "process_wall_s": finals[key]["process_wall_s"]}
        result["agreement_vs_torch_fp32"] = _agreement({k: c.config["output"] for k, c in children.items()}, spec)
    torch_total = result["pipelines"][TORCH_FP32]["total_ms"]["median"]
    result["speedup_vs_torch_fp32"] = {k: torch_total / p["total_ms"]["median"]
                                       for k, p in result["pipelines"].items() if k != TORCH_FP32}
    return result


class _Child:
    """One whole-volume pipeline in a fresh Python process, driven line by line (``run`` / ``quit``)."""

    def __init__(self, config: dict, scratch: Path):
        self.config = config
        self.stderr_path = scratch / f"stderr_{config['backend']}.txt"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "engine_builder.bench", "child", json.dumps(config)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            env=env, bufsize=1)
        self.ready = self._expect("ready")

    def _expect(self, event: str) -> dict:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("event") == event:
                return message
        self.process.wait()
        tail = self.stderr_path.read_text()[-2000:] if self.stderr_path.exists() else ""
        raise PTQError(f"the whole-volume {self.config['backend']} process ended (exit {self.process.returncode}) "
                       f"before '{event}':\n{tail}")

    def _send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def run(self) -> dict[str, float]:
        self._send("run")
        return self._expect("run")["timings_ms"]

    def finish(self) -> dict:
        self._send("quit")
        figures = self._expect("done")
        self.process.wait(timeout=60)
        return figures

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _agreement(outputs: dict[str, str], spec) -> dict:
    from .evaluate import dice_per_label
    from .io import read_volume

    reference = read_volume(outputs[TORCH_FP32]).array
    body = None
    report = {}
    for key, path in outputs.items():
        if key == TORCH_FP32:
            continue
        labels = read_volume(path).array
        either = (reference != 0) | (labels != 0)
        body = either if body is None else body
        same = reference == labels
        report[key] = {"argmax_agreement": float(same.mean()),
                       "foreground_agreement": float(same[either].mean()) if either.any() else None,
                       "dice_per_label": dice_per_label(reference, labels, spec.label_names)}
    return report


def _child_main(config_json: str) -> int:
    """One whole-volume pipeline in this (fresh) process: open the engine, then segment on each ``run`` line.

    Replies are JSON lines on the original stdout; anything else printed here goes to stderr.
    """
    started = time.perf_counter()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    config = json.loads(config_json)
    import torch

    from .evaluate import peak_rss_bytes
    from .inference import segment_file
    from .progress import set_mode

    def reply(event: str, **fields) -> None:
        replies.write(json.dumps({"event": event, **fields}) + "\n")
        replies.flush()

    set_mode("off")
    threads = config["threads"]
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    if config["backend"] == TORCH_FP32:
        from .backends.torch_backend import TorchEngine
        from .spec import ModelSpec
        from .weights import load_network

        spec = ModelSpec.from_dict(config["spec"])  # the parent's spec, the one its engines were built from
        engine = TorchEngine(load_network(spec, config["weights"]), "fp32", 1)
    else:
        from .pipeline import open_engine

        engine, spec, _ = open_engine(config["engine_dir"], threads=threads)
    reply("ready", engine_load_ms=(time.perf_counter() - t0) * 1e3, rss_after_load_bytes=_current_rss_bytes())
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            reply("run", timings_ms=segment_file(config["input"], config["output"], engine, spec).timings_ms)
        elif command == "quit":
            break
    reply("done", peak_rss_bytes=peak_rss_bytes(), process_wall_s=time.perf_counter() - started)
    return 0


def _current_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------- targets
def check_targets(figures: dict) -> list[dict]:
    """Each issue target with the measured value and whether it is met (None: not measurable in this run)."""
    t = TARGETS
    checks = []
    window = figures.get("window", {})
    for name, w in window.items():
        if "latency_ms" not in w:
            continue
        checks.append(_check(f"{name}: INT8 engine size / FP32 engine size", w["int8_size_ratio"], "<=",
                             t["int8_size_ratio_max"], "{:.3f}"))
        checks.append(_check(f"{name}: per window, OV INT8 speed-up vs torch FP32 eager",
                             w["speedup"][f"{OV_INT8}_vs_{TORCH_FP32}"], ">=", t["window_speedup_vs_torch_min"],
                             "{:.2f}x"))
        checks.append(_check(f"{name}: per window, OV INT8 speed-up vs OV FP32",
                             w["speedup"][f"{OV_INT8}_vs_{OV_FP32}"], ">", 1.0, "{:.2f}x"))
    volume = figures.get("volume")
    if volume:
        p = volume["pipelines"]
        scope = f"{volume['model']}, whole volume ({volume['kind']})"
        agreement = volume["agreement_vs_torch_fp32"][OV_INT8]["argmax_agreement"]
        check = _check(f"{scope}: INT8 vs FP32 argmax agreement", agreement, ">=", t["int8_agreement_min"], "{:.4f}")
        if not (volume["trained"] and volume["real_ct"]):
            check["met"] = None
            check["note"] = "not evaluated: needs the trained demo weights and a real CT"
        checks.append(check)
        checks.append(_check(f"{scope}: OV INT8 file in -> label file out (s)", p[OV_INT8]["total_ms"]["median"] / 1e3,
                             "<=", t["volume_seconds_max"], "{:.2f} s"))
        checks.append(_check(f"{scope}: OV INT8 pipeline speed-up vs torch FP32 pipeline",
                             volume["speedup_vs_torch_fp32"][OV_INT8], ">=", t["volume_speedup_vs_torch_min"],
                             "{:.2f}x"))
        checks.append(_check(f"{scope}: OV INT8 pipeline peak resident memory (GiB)",
                             p[OV_INT8]["peak_rss_bytes"] / 2**30, "<=", t["volume_peak_rss_bytes_max"] / 2**30,
                             "{:.2f} GiB"))
        if not volume["kind"].startswith("chest CT"):
            for c in checks[-3:]:
                c["note"] = "measured on a stand-in volume, not the chest CT"
    return checks


def _check(name: str, value: float, op: str, threshold: float, fmt: str) -> dict:
    met = {"<=": value <= threshold, ">=": value >= threshold, ">": value > threshold}[op]
    return {"target": name, "value": float(value), "op": op, "threshold": float(threshold), "met": bool(met),
            "shown": fmt.format(value), "threshold_shown": fmt.format(threshold)}


def _notes(figures: dict) -> list[str]:
    notes = []
    random = [n for n, w in figures["window"].items() if not w.get("trained")]
    if random:
        notes.append(f"Random-init weights ({', '.join(random)}): speed and size only. Their agreement figures "
                     "are meaningless (random nets have near-tied logits) and are not shown.")
    volume = figures.get("volume")
    if volume and not volume["trained"]:
        notes.append("The demo model's weights were not present: the whole-volume run used random weights, so its "
                     "agreement is not a measure of accuracy.")
    if volume:
        p = volume["pipelines"][OV_INT8]["stages_ms"]
        network = p["inference"]["median"] + p["argmax"]["median"]
        total = volume["pipelines"][OV_INT8]["total_ms"]["median"]
        notes.append(f"Whole volume with OpenVINO INT8: the network stages (inference + argmax) take "
                     f"{network / 1e3:.2f} s of {total / 1e3:.2f} s; reading, preprocessing, resampling back and "
                     f"writing take the other {(total - network) / 1e3:.2f} s, the same for every backend, which "
                     "bounds the file-to-file speed-up.")
    cal = figures["calibration"]
    if cal.get("kind") == "default":
        notes.append(f"Calibration: {len(cal['synthetic_phantoms'])} synthetic phantoms"
                     + (f" + real CT {', '.join(cal['real_ct'])}" if cal["real_ct"] else "")
                     + " (8 patches per volume, a quarter held out; the per-window input is the first held-out patch). "
                     "The whole-volume CT is not in the calibration set.")
    else:
        notes.append(f"Calibration: the folder {cal['folder']}.")
    load = figures["machine"].get("load_average_start"), figures["machine"].get("load_average_end")
    if all(load):
        cores = figures["machine"]["logical_cores"] or 1
        busy = load[0][0] > 0.25 * cores  # before the benchmark's own threads count
        notes.append(f"Load average (1/5/15 min) at start {load[0]}, at end {load[1]} on {cores} logical cores "
                     f"(the end figure includes this benchmark's own {figures['machine']['threads']} threads)"
                     + (": other work was running when it started, so "
                        "absolute times are inflated and torch FP32 eager, whose OpenMP threads wait for each other "
                        "when a core is taken, slows down more than OpenVINO; re-run on a quiet machine before quoting "
                        "ratios against torch." if busy else ": a quiet machine.")
                     + " Backends were interleaved in every repeat so that load hits them alike.")
    return notes


# ---------------------------------------------------------------------------------------------- outputs
def _ms(stats: dict) -> str:
    return f"{stats['median']:.0f} ({stats['min']:.0f}–{stats['max']:.0f})"


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}"


def render_markdown(figures: dict) -> str:
    from .evaluate import markdown_table

    m, v = figures["machine"], figures["versions"]
    flags = ", ".join(f"{k} {'yes' if on else 'no'}" for k, on in m["flags"].items())
    lines = [
        "# CPU benchmark: torch FP32 vs OpenVINO FP32 / bf16 / INT8",
        "",
        f"Generated by `ptqseg bench` on {figures['created']} in {figures['benchmark_seconds']:.0f} s. "
        "Every ratio below comes from this one run (per window: backends interleaved within each repeat).",
        "",
        f"- CPU: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} threads used",
        f"- CPU flags: {flags}; OpenVINO CPU capabilities: {', '.join(m['openvino_cpu_capabilities'])}",
        f"- Versions: OpenVINO {v['openvino']}, NNCF {v['nncf']}, torch {v['torch']}, MONAI {v['monai']}, "
        f"NumPy {v['numpy']}, engine_builder {v['engine_builder']} (git {v.get('git')}), Python {m['python']} ({m['system']})",
        f"- Load average at start / end: {m.get('load_average_start')} / {m.get('load_average_end')}",
        f"- Repeats: {figures['settings']['repeats']} per window (after 1 warm-up), "
        f"{figures['settings']['volume_repeats']} per whole volume; times are median (min–max) in ms",
        "",
        "## Targets",
        "",
        markdown_table(["target", "measured", "required", "met"],
                       [[c["target"], c["shown"], f"{c['op']} {c['threshold_shown']}",
                         {True: "yes", False: "**no**", None: "n/a"}[c["met"]] + (f" ({c['note']})" if c.get("note") else "")]
                        for c in figures["targets"]]),
        "",
        "## One 96³ window",
        "",
    ]
    rows = []
    for name, w in figures["window"].items():
        if "latency_ms" not in w:
            continue
        med = {k: s["median"] for k, s in w["latency_ms"].items()}
        for key, stats in w["latency_ms"].items():
            acc = (w.get("accuracy_held_out") or {}).get(key) if w["trained"] else None
            runs = (w["runs_as"].get(key) or {}).get("convolutions_by_precision", {})
            rows.append([f"{name} ({w['architecture']}, {'trained' if w['trained'] else 'random init'})",
                         LABELS[key], _ms(stats),
                         "1.00x" if key == TORCH_FP32 else f"{med[TORCH_FP32] / med[key]:.2f}x",
                         "" if key in (TORCH_FP32, OV_FP32) else f"{med[OV_FP32] / med[key]:.2f}x",
                         _mb(w["sizes_bytes"].get(key)),
                         ", ".join(f"{n} {p}" for p, n in sorted(runs.items())),
                         "" if acc is None else f"{acc['argmax_agreement']:.4f} ({acc['patches']} patches)"])
    lines += [markdown_table(["model", "backend", "ms", "vs torch FP32", "vs OV FP32", "size MB",
                              "convolutions run as", "argmax agreement vs torch FP32 (held-out)"], rows), ""]
    lines += ["Sizes: torch FP32 is the state dict's tensors; OpenVINO engines are model.xml + model.bin "
              "(FP32 keeps FP32 weights; INT8 stores int8 weights and the few float leftovers as FP16).", ""]
    size_rows = [[name, _mb(w["sizes_bytes"]["fp32_onnx"]), _mb(w["sizes_bytes"][OV_FP32]),
                  _mb(w["sizes_bytes"][OV_INT8]), f"{w['int8_size_ratio']:.3f}", len(w.get("kept_in_float", []))]
                 for name, w in figures["window"].items() if "latency_ms" in w]
    lines += [markdown_table(["model", "FP32 ONNX MB", "OV FP32 MB", "OV INT8 MB", "INT8 / FP32",
                              "convolutions left in float"], size_rows), ""]

    volume = figures.get("volume")
    if volume:
        lines += [f"## Whole volume, file in → label file out ({volume['model']} model)", "",
                  f"Input: {volume['kind']}, `{Path(volume['input']).name}`, {'×'.join(map(str, volume['shape']))} "
                  f"voxels at {' × '.join(f'{s:g}' for s in volume['spacing_mm'])} mm → network grid "
                  f"{'×'.join(map(str, volume['network_grid']))}, {volume['windows']} windows; weights: {volume['weights']}. "
                  "Each pipeline ran in its own fresh process that opened its engine once; the processes then took turns, "
                  f"one file-to-file run each, {volume['repeats']} rounds. Stage times are medians; the total is the "
                  "median (min–max) of the runs' totals; the first (cold) run and opening the engine are shown apart. "
                  "Peak RSS is that process's own peak (`VmHWM`, imports included)."
                  + ("" if volume["trained"] else " Agreement is not shown: the weights are random."), ""]
        header = ["backend", *STAGES, "total", "vs torch FP32", "first run", "engine load ms", "peak RSS GiB",
                  "agreement vs torch FP32 (all / body voxels)"]
        rows = []
        for key, p in volume["pipelines"].items():
            agree = volume["agreement_vs_torch_fp32"].get(key) if volume["trained"] else None
            rows.append([LABELS[key], *[f"{p['stages_ms'][s]['median']:.0f}" for s in STAGES], _ms(p["total_ms"]),
                         "1.00x" if key == TORCH_FP32 else f"{volume['speedup_vs_torch_fp32'][key]:.2f}x",
                         f"{p['first_run_total_ms']:.0f}", f"{p['engine_load_ms']:.0f}", f"{p['peak_rss_bytes'] / 2**30:.2f}",
                         "" if agree is None else f"{agree['argmax_agreement']:.4f} / {agree['foreground_agreement']:.4f}"
                         if agree["foreground_agreement"] is not None else f"{agree['argmax_agreement']:.4f}"])
        lines += [markdown_table(header, rows), ""]
        dice = volume["agreement_vs_torch_fp32"].get(OV_INT8, {}).get("dice_per_label", {})
        if dice and volume["trained"]:
            lines += ["INT8 vs torch FP32 Dice per label on the whole volume: "
                      + ", ".join(f"{k} {'—' if d is None else f'{d:.3f}'}" for k, d in dice.items()), ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in figures["notes"]]
    lines += ["", "![latency chart](cpu.png)", ""]
    return "\n".join(lines)


def render_chart(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {TORCH_FP32: "#7f7f7f", OV_FP32: "#1f77b4", OV_BF16: "#9467bd", OV_INT8: "#2ca02c"}
    windows = {n: w for n, w in figures["window"].items() if "latency_ms" in w}
    volume = figures.get("volume")
    fig, axes = plt.subplots(1, 2 if volume else 1, figsize=(13 if volume else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    backends = figures["backends"]
    width = 0.8 / len(backends)
    for i, key in enumerate(backends):
        xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(windows))]
        med = [w["latency_ms"][key]["median"] for w in windows.values()]
        err = [[m - w["latency_ms"][key]["min"] for m, w in zip(med, windows.values())],
               [w["latency_ms"][key]["max"] - m for m, w in zip(med, windows.values())]]
        bars = ax.bar(xs, med, width, yerr=err, capsize=2, label=LABELS[key], color=colors[key])
        for bar, m in zip(bars, med):
            ax.text(bar.get_x() + bar.get_width() / 2, m * 1.05, f"{m:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(windows)), list(windows))
    ax.set_ylabel("ms per 96³ window (median, min–max), log scale")
    ax.set_title("One window")
    ax.legend(fontsize=8)
    if volume:
        ax = axes[0][1]
        keys = list(volume["pipelines"])
        bottom = np.zeros(len(keys))
        stage_colors = plt.get_cmap("tab10").colors
        for s, stage_name in enumerate(STAGES):
            values = np.array([volume["pipelines"][k]["stages_ms"][stage_name]["median"] / 1e3 for k in keys])
            ax.bar(range(len(keys)), values, 0.6, bottom=bottom, label=stage_name, color=stage_colors[s])
            bottom += values
        for j, k in enumerate(keys):
            ax.text(j, bottom[j] * 1.01, f"{volume['pipelines'][k]['total_ms']['median'] / 1e3:.1f} s", ha="center",
                    va="bottom", fontsize=8)
        ax.set_xticks(range(len(keys)), [LABELS[k].replace(" eager", "") for k in keys], fontsize=8)
        ax.set_ylabel("seconds (median stage times)")
        ax.set_title(f"Whole volume, file to file ({volume['model']}, {volume['windows']} windows)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{figures['machine']['cpu']}, {figures['machine']['threads']} threads, "
                 f"OpenVINO {figures['versions']['openvino']}, torch {figures['versions']['torch']}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial.png")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_outputs(figures: dict, out_dir: Path) -> dict[str, str]:
    files = {"markdown": str(out_dir / "cpu.md"), "json": str(out_dir / "cpu.json"), "chart": str(out_dir / "cpu.png")}
    figures["files"] = files
    _atomic_write(Path(files["json"]), json.dumps(figures, indent=2, default=_json_default).encode())
    _atomic_write(Path(files["markdown"]), render_markdown(figures).encode())
    render_chart(figures, Path(files["chart"]))
    return files


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        sys.exit(_child_main(sys.argv[2]))
    sys.exit("usage: python -m engine_builder.bench child CONFIG_JSON (internal; use `ptqseg bench`)")
