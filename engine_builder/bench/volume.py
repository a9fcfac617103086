"""The whole volume: what the input is, the fresh-process command per engine (``commands``), the same scan with
the engine already loaded (warm), and how each engine's label map agrees with torch FP32's.

Warm means the engine is opened once and then segments scan after scan, as a persistent worker does. When this
checkout has ``ptqseg worker`` (JSON lines ``{"id", "input", "output"}`` on stdin, one result line each on stdout)
the benchmark drives that process; otherwise it opens each engine in this process and times ``segment_file``,
labelled as such. The first scan after opening is reported apart (first inference, page cache).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ..errors import PTQError
from .commands import child_env, measure_fresh
from .common import LABELS, REPO_ROOT, STAGES, TORCH_FP32, say, stats
from .inputs import CHEST_CT_KIND

WORKER = "ptqseg worker: a separate process with the engine loaded once, one JSON request per scan"
IN_PROCESS = "in-process, engine loaded once: what a persistent worker costs per scan"


def benchmark_volume(weights, builds: dict, input_path: Path, kind: str, fresh_repeats: int, warm_repeats: int,
                     threads: int | None, scratch: Path) -> dict:
    """Fresh-process and warm figures of every engine of one model on one input, and label agreement."""
    scratch.mkdir(parents=True, exist_ok=True)
    engine_dirs = {key: Path(build.engine_dir) for key, build in builds.items()}
    result = {"model": weights.spec.name, "weights": weights.note, "trained": weights.trained,
              **describe_input(input_path, kind, weights.spec)}
    result["fresh"] = measure_fresh(engine_dirs, input_path, fresh_repeats, threads, scratch)
    result["warm"] = measure_warm(engine_dirs, input_path, warm_repeats, threads, scratch)
    result["agreement_vs_torch_fp32"] = label_agreement(result["fresh"].pop("outputs"), weights.spec)
    return result


def describe_input(input_path: Path, kind: str, spec) -> dict:
    """Input file, kind, shape, spacing (mm), the network grid and the number of windows of ``spec``."""
    from ..inference import spec_windows
    from ..io import read_volume
    from ..preprocess import preprocess

    volume = read_volume(input_path)
    grid = tuple(preprocess(volume, spec).image.shape[1:])
    return {"input": str(input_path), "kind": kind, "chest_ct": kind == CHEST_CT_KIND,
            "shape": list(volume.shape), "spacing_mm": [round(s, 3) for s in volume.spacing_mm],
            "network_grid": list(grid), "windows": spec_windows(grid, spec)}


def worker_available() -> bool:
    """True when this checkout's ``ptqseg`` has the ``worker`` sub-command."""
    probe = subprocess.run([sys.executable, "-m", "engine_builder.cli", "worker", "--help"], env=child_env(),
                           cwd=REPO_ROOT, capture_output=True, text=True)
    return probe.returncode == 0


def measure_warm(engine_dirs: dict[str, Path], input_path: Path, repeats: int, threads: int | None,
                 scratch: Path) -> dict:
    """Per engine: ``ready_ms`` (opening it), the ``first`` scan, then ``repeats`` interleaved scans (stats).

    Times are this process's clock around each request; ``stages_ms`` are the segmentation's own stages.
    """
    use_worker = worker_available()
    opener = (lambda key: _Worker(engine_dirs[key], threads, scratch)) if use_worker else \
        (lambda key: _InProcess(engine_dirs[key], threads))
    keys = list(engine_dirs)
    servers = {}
    try:
        for key in keys:  # one at a time, so that their start-ups do not overlap
            servers[key] = opener(key)
        outputs = {key: scratch / f"warm_{key}.nii.gz" for key in keys}
        first = {key: servers[key].segment(input_path, outputs[key]) for key in keys}
        runs: dict[str, list[dict]] = {key: [] for key in keys}
        for r in range(repeats):
            for key in keys[r % len(keys):] + keys[: r % len(keys)]:
                runs[key].append(servers[key].segment(input_path, outputs[key]))
            say(f"warm ({'worker' if use_worker else 'in-process'}), run {r + 1}/{repeats}: "
                + ", ".join(f"{LABELS[k]} {runs[k][-1]['wall_ms'] / 1e3:.2f} s" for k in keys))
    finally:
        for server in servers.values():
            server.close()
    engines = {key: {"ready_ms": servers[key].ready_ms, "first": first[key],
                     "wall_ms": stats([r["wall_ms"] for r in runs[key]]),
                     "stages_ms": {s: stats([r["stages_ms"].get(s, 0.0) for r in runs[key]]) for s in STAGES}}
               for key in keys}
    reference = engines.get(TORCH_FP32)
    return {"method": "worker" if use_worker else "in-process", "label": WORKER if use_worker else IN_PROCESS,
            "engines": engines, "speedup_vs_torch_fp32": {
                key: reference["wall_ms"]["median"] / e["wall_ms"]["median"] for key, e in engines.items()
                if reference and key != TORCH_FP32}}


class _InProcess:
    """An engine opened in this process; ``segment`` is ``inference.segment_file``."""

    def __init__(self, engine_dir: Path, threads: int | None):
        from ..engines import open_engine

        started = time.perf_counter()
        self.engine, self.spec, _ = open_engine(engine_dir, threads=threads)
        self.ready_ms = (time.perf_counter() - started) * 1e3

    def segment(self, input_path: Path, output: Path) -> dict:
        from ..inference import segment_file

        started = time.perf_counter()
        timings = segment_file(input_path, output, self.engine, self.spec).timings_ms
        return {"wall_ms": (time.perf_counter() - started) * 1e3, "stages_ms": timings}

    def close(self) -> None:
        self.engine = None


class _Worker:
    """A ``ptqseg worker --engine DIR`` process: ``ready`` event first, then one ``result`` line per request."""

    def __init__(self, engine_dir: Path, threads: int | None, scratch: Path):
        argv = [sys.executable, "-m", "engine_builder.cli", "worker", "--engine", str(engine_dir)]
        self.stderr_path = scratch / f"worker_{engine_dir.name}.stderr.txt"
        started = time.perf_counter()
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(argv + (["--threads", str(threads)] if threads else []),
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            bufsize=1, env=child_env(scratch / "cache"),
                                            cwd=REPO_ROOT)
        self._expect("ready")
        self.ready_ms = (time.perf_counter() - started) * 1e3
        self.requests = 0

    def _expect(self, event: str, request_id=None) -> dict:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("event") == event and message.get("id") == request_id:
                return message
            if isinstance(message, dict) and message.get("event") == "error":
                break
        self.close()
        raise PTQError(f"ptqseg worker stopped before '{event}': {self.stderr_path.read_text()[-2000:]}")

    def segment(self, input_path: Path, output: Path) -> dict:
        self.requests += 1
        started = time.perf_counter()
        self.process.stdin.write(json.dumps({"id": self.requests, "input": str(input_path), "output": str(output)}) + "\n")
        self.process.stdin.flush()
        reply = self._expect("result", self.requests)
        wall_ms = (time.perf_counter() - started) * 1e3
        if reply.get("status") != "ok":
            raise PTQError(f"ptqseg worker failed on {input_path.name}: {reply.get('error')}")
        return {"wall_ms": wall_ms, "stages_ms": reply.get("timings_ms", {})}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def label_agreement(outputs: dict[str, str], spec) -> dict:
    """Each engine's label map against torch FP32's (``agreement.compare_labels``: foreground agreement, Dice)."""
    from ..agreement import compare_labels, min_voxels
    from ..io import read_volume

    if TORCH_FP32 not in outputs:
        return {}
    reference = read_volume(outputs[TORCH_FP32])
    count = min_voxels(reference.spacing_mm)
    report = {}
    for key, path in outputs.items():
        if key != TORCH_FP32:
            labels = read_volume(path).array
            report[key] = {**compare_labels(reference.array, labels, spec.label_names, count),
                           "all_voxel_agreement": float((labels == reference.array).mean())}
    return report
