"""The command a user types, timed from process start to exit: ``ptqseg segment`` in a fresh process.

Each run is ``python -m engine_builder.cli segment --engine ENGINE --input CT --output OUT --quiet --json FILE``
(what the ``ptqseg`` console script runs), started with ``subprocess.Popen`` and timed by this process from just
before the start to the exit (``wall_ms``). The command's own ``--json`` gives its stage timings (``latency_ms``:
read ... write), the time it took to open the engine and its peak resident memory (``VmHWM``, read by the
command itself after writing the label file: imports, engine and every stage included; ``getrusage`` of children
is not used because on Linux a child's ``ru_maxrss`` can carry the parent's peak across ``exec``).

The engines take turns (one run each per round, the order rotating) so that load from other work hits them
alike. The children share one OpenVINO compiled-model cache that starts empty: the first run of each engine
compiles it (``cold``, reported apart, not in the medians); later runs load the compiled blob, as a user's second
segmentation does. The input file is read by every run, so from the second run on it is in the OS page cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import PTQError
from .common import LABELS, REPO_ROOT, STAGES, TORCH_FP32, say, stats


def segment_argv(engine_dir: Path, input_path: Path, output: Path, json_path: Path, threads: int | None,
                 python_flags: tuple[str, ...] = ()) -> list[str]:
    """The user's command line (``ptqseg segment ...`` as ``python -m engine_builder.cli``)."""
    argv = [sys.executable, *python_flags, "-m", "engine_builder.cli", "segment", "--engine", str(engine_dir),
            "--input", str(input_path), "--output", str(output), "--quiet", "--json", str(json_path)]
    return argv + (["--threads", str(threads)] if threads else [])


def child_env(cache_root: Path | None = None) -> dict[str, str]:
    """This checkout first on the path; ``PTQSEG_CACHE`` (the compiled-model cache) in ``cache_root`` if given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if cache_root is not None:
        env["PTQSEG_CACHE"] = str(cache_root)
    return env


def run_command(argv: list[str], env: dict[str, str], json_path: Path) -> dict:
    """Run one command; returns ``wall_ms``, ``stages_ms`` (its own), ``stages_total_ms``, ``startup_ms`` (wall
    minus stages: interpreter, imports, checks, engine open, exit), ``engine_open_ms``, ``peak_rss_bytes``,
    ``windows``, and ``stderr`` (its text, for ``-X importtime``)."""
    json_path.unlink(missing_ok=True)
    started = time.perf_counter()
    process = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, encoding="utf-8",
                             errors="replace")
    wall_ms = (time.perf_counter() - started) * 1e3
    if process.returncode != 0 or not json_path.is_file():
        raise PTQError(f"`{' '.join(argv[-12:])}` failed (exit {process.returncode}):\n{process.stderr[-2000:]}")
    record = json.loads(json_path.read_text())
    stages = {stage: float(record["latency_ms"].get(stage, 0.0)) for stage in STAGES}
    total = float(sum(record["latency_ms"].values()))
    return {"wall_ms": wall_ms, "stages_ms": stages, "stages_total_ms": total, "startup_ms": wall_ms - total,
            "engine_open_ms": float(record["process"]["engine_open_ms"]),
            "peak_rss_bytes": int(record["process"]["peak_rss_bytes"]), "windows": int(record["windows"]),
            "stderr": process.stderr}


def measure_fresh(engine_dirs: dict[str, Path], input_path: Path, repeats: int, threads: int | None,
                  scratch: Path) -> dict:
    """Per engine: one cold run, then ``repeats`` interleaved runs (their stats), and the import profile.

    Returns {"engines": {key: {...}}, "speedup_vs_torch_fp32": {key: ratio of wall-clock medians},
    "imports": {key: import_profile}, "outputs": {key: label file}}.
    """
    env = child_env(scratch / "cache")
    keys = list(engine_dirs)
    outputs = {key: scratch / f"labels_{key}.nii.gz" for key in keys}

    def run(key: str, flags: tuple[str, ...] = ()) -> dict:
        json_path = scratch / f"segment_{key}.json"
        return run_command(segment_argv(engine_dirs[key], input_path, outputs[key], json_path, threads, flags), env,
                           json_path)

    cold = {key: _without_stderr(run(key)) for key in keys}
    say("fresh process, cold (empty compiled-model cache): "
        + ", ".join(f"{LABELS[k]} {cold[k]['wall_ms'] / 1e3:.2f} s" for k in keys))
    runs: dict[str, list[dict]] = {key: [] for key in keys}
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            runs[key].append(_without_stderr(run(key)))
        say(f"fresh process, run {r + 1}/{repeats}: "
            + ", ".join(f"{LABELS[k]} {runs[k][-1]['wall_ms'] / 1e3:.2f} s" for k in keys))
    imports = {key: import_profile(run(key, ("-X", "importtime"))["stderr"]) for key in _import_keys(keys)}
    engines = {key: _summary(cold[key], runs[key]) for key in keys}
    reference = engines.get(TORCH_FP32)
    speedup = {key: reference["wall_ms"]["median"] / e["wall_ms"]["median"] for key, e in engines.items()
               if reference and key != TORCH_FP32}
    return {"engines": engines, "speedup_vs_torch_fp32": speedup, "imports": imports,
            "outputs": {key: str(path) for key, path in outputs.items()}}


def _import_keys(keys: list[str]) -> list[str]:
    """One engine per runtime: the torch engine and the last OpenVINO one (INT8): their imports differ."""
    openvino = [key for key in keys if key != TORCH_FP32]
    return ([TORCH_FP32] if TORCH_FP32 in keys else []) + openvino[-1:]


def _without_stderr(run: dict) -> dict:
    return {key: value for key, value in run.items() if key != "stderr"}


def _summary(cold: dict, runs: list[dict]) -> dict:
    """Stats of the warm-cache runs, the cold run apart, the highest peak memory of all runs."""
    return {"cold": cold, "wall_ms": stats([r["wall_ms"] for r in runs]),
            "stages_ms": {stage: stats([r["stages_ms"][stage] for r in runs]) for stage in STAGES},
            "stages_total_ms": stats([r["stages_total_ms"] for r in runs]),
            "startup_ms": stats([r["startup_ms"] for r in runs]),
            "engine_open_ms": stats([r["engine_open_ms"] for r in runs]),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in [cold, *runs]),
            "windows": runs[0]["windows"], "runs": runs}


def import_profile(stderr: str, top: int = 8) -> dict:
    """Import time of a process from its ``python -X importtime`` lines (microseconds in, ms out).

    Returns ``total_ms`` (the sum over top-level imports, so nothing is counted twice) and ``top_ms``: the
    largest top-level packages, {package: ms}. ``-X importtime`` adds its own bookkeeping (a few percent).
    """
    by_package: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header line
        name = parts[2][1:]
        if name.startswith(" "):
            continue  # imported by another import: inside its parent's cumulative time
        package = name.split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(parts[1]) / 1e3
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    return {"total_ms": sum(by_package.values()), "top_ms": {name: round(ms, 1) for name, ms in ranked[:top]}}
