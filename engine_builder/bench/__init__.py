"""``ptqseg bench``: torch FP32 vs OpenVINO FP32 / bf16 / INT8 on the same models and input, in one run.

What is measured, and where:

- ``windows``: one real 96^3 window through every engine of each model, interleaved repeats, and OpenVINO's
  per-layer profile (the share of convolution time in int8 kernels, what takes the rest of the window);
- ``commands``: the command a user types, ``ptqseg segment`` file to file, in a fresh process per run: wall clock
  from start to exit, the command's own stage timings, start-up, peak memory, import time;
- ``volume``: the same scan with the engine already loaded (``ptqseg worker`` where this checkout has it, else
  in this process), and the label maps of every engine against torch FP32's;
- ``machine``: CPU model, flags, versions and the load average around each part; ``targets``: the issue's
  targets checked against the figures; ``report`` and ``chart``: ``cpu.md``, ``cpu.json``, ``cpu.png``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from ..errors import PTQError
from .common import say
from .machine import load_average, machine_info, versions

DEFAULT_MODELS = ("demo", "unet", "segresnet")
VOLUME_MODELS = ("demo",)


def run_benchmark(models=DEFAULT_MODELS, volume: str | Path | None = None, calib: str | Path | None = None,
                  repeats: int = 5, fresh_repeats: int = 3, warm_repeats: int = 3, out_dir: str | Path = "docs/benchmarks",
                  threads: int | None = None, cache_root: str | Path | None = None, volume_models=VOLUME_MODELS,
                  build_options: dict | None = None, progress: bool = True) -> dict:
    """Run the benchmark, write ``cpu.md``, ``cpu.json`` and ``cpu.png`` into ``out_dir``; return the figures.

    Args:
        models: registry names timed per window (empty: none); models without trained weights here run with
            random weights, labelled "random weights: speed only".
        volume: whole-volume input; default the chest CT in ``../shared/data`` if present, else a large phantom.
        calib: calibration folder; default synthetic phantoms plus the real CTs in ``../shared/data`` (never
            the whole-volume input).
        repeats: timed repeats per window (after one warm-up).
        fresh_repeats: fresh-process ``ptqseg segment`` runs per engine after the cold one.
        warm_repeats: scans per engine with the engine already loaded, after the first one.
        threads: CPU threads for every runtime (None: all cores).
        cache_root: engine and calibration cache (default ``$PTQSEG_CACHE`` or ``~/.cache/ptqsegment``).
        volume_models: models run on the whole volume (empty: none).
        build_options: ``BuildRequest`` fields for every engine beyond the defaults a user gets (e.g. a quick
            ``{"patches_per_volume": 2, "estimate": False}`` in tests); recorded in the figures.
    """
    from ..artifact import default_cache_root
    from .inputs import backend_keys, build_engines, calibration_folder, volume_input, weights_for
    from .report import notes, write_outputs
    from .targets import check_targets
    from .volume import benchmark_volume
    from .windows import benchmark_window

    models, volume_models = list(models or ()), list(volume_models or ())
    if min(repeats, fresh_repeats, warm_repeats) < 1:
        raise PTQError("--repeats, --fresh-repeats and --warm-repeats must be at least 1")
    if not models and not volume_models:
        raise PTQError("nothing to measure: name --models and/or --volume-models")
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    started = time.perf_counter()
    keys = backend_keys()
    figures: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(threads),
                     "versions": versions(), "backends": keys,
                     "settings": {"models": models, "volume_models": volume_models, "repeats": repeats,
                                  "fresh_repeats": fresh_repeats, "warm_repeats": warm_repeats, "threads": threads,
                                  "build_options": dict(build_options or {})}}
    calib_folder, figures["calibration"] = calibration_folder(calib, cache_root, volume)
    weights = {name: weights_for(name) for name in dict.fromkeys(models + volume_models)}
    builds, figures["window"], figures["volume"] = {}, {}, {}
    for name in models:
        say(f"model {name}: engines, then one window ({repeats} repeats; weights: {weights[name].note})")
        builds[name] = build_engines(weights[name], calib_folder, keys, threads, cache_root, progress, build_options)
        figures["window"][name] = benchmark_window(weights[name], builds[name], calib_folder, repeats, threads,
                                                   cache_root)
        gc.collect()
        figures["machine"]["load_average"][f"after the window ({name})"] = load_average()
    if volume_models:
        input_path, kind = volume_input(volume, cache_root)
        with tempfile.TemporaryDirectory(prefix="ptqseg-bench-") as scratch:
            for name in volume_models:
                say(f"model {name}: whole volume ({kind}), fresh processes then warm")
                if name not in builds:
                    builds[name] = build_engines(weights[name], calib_folder, keys, threads, cache_root, progress,
                                                 build_options)
                figures["volume"][name] = benchmark_volume(weights[name], builds[name], input_path, kind,
                                                           fresh_repeats, warm_repeats, threads, Path(scratch) / name)
                figures["machine"]["load_average"][f"after the whole volume ({name})"] = load_average()
    figures["targets"] = check_targets(figures)
    figures["notes"] = notes(figures)
    figures["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    figures["files"] = write_outputs(figures, Path(out_dir))
    say(f"done in {figures['benchmark_seconds']:.0f} s: {', '.join(figures['files'].values())}")
    return figures

