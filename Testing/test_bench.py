"""engine_builder.bench: a quick smoke run of ``run_benchmark`` (one model, one repeat, a small phantom volume).

Checks that the markdown table, the JSON figures and the PNG chart are written, that every backend was timed
per window and per whole volume (each pipeline in its own process, with its own peak memory), and that the
figures are positive. No timing thresholds: performance claims live in docs/benchmarks, not in tests.
"""

from __future__ import annotations

import json

from conftest import write_phantom
from engine_builder.bench import STAGES, TORCH_FP32, OV_FP32, OV_INT8, run_benchmark


def test_run_benchmark_writes_table_json_and_chart(tmp_path, cache_root):
    volume = tmp_path / "volume.nii.gz"
    write_phantom(volume, 31, shape=(64, 64, 32), spacing=(5.0, 5.0, 8.0))
    calib_dir = tmp_path / "calib"  # two small phantoms: a quick INT8 build
    calib_dir.mkdir()
    for seed in (32, 33):
        write_phantom(calib_dir / f"phantom_{seed}.nii.gz", seed, shape=(64, 64, 32), spacing=(5.0, 5.0, 8.0))
    out = tmp_path / "benchmarks"

    figures = run_benchmark(models=["demo"], volume=volume, calib=calib_dir, repeats=1, volume_repeats=1,
                            out_dir=out, threads=None, cache_root=cache_root, progress=False)

    files = {name: out / name for name in ("cpu.md", "cpu.json", "cpu.png")}
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0, path
    assert files["cpu.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*partial*")), "temporary files left behind"
    markdown = files["cpu.md"].read_text()
    for heading in ("## Targets", "## One 96³ window", "## Whole volume", figures["machine"]["cpu"]):
        assert heading in markdown

    saved = json.loads(files["cpu.json"].read_text())
    for key in ("created", "machine", "versions", "calibration", "backends", "window", "volume", "targets", "notes"):
        assert key in saved, key
    backends = saved["backends"]
    assert backends[0] == TORCH_FP32 and OV_FP32 in backends and backends[-1] == OV_INT8
    assert saved["machine"]["logical_cores"] >= 1 and saved["versions"]["openvino"]

    window = saved["window"]["demo"]
    for key in backends:
        stats = window["latency_ms"][key]
        assert 0 < stats["min"] <= stats["median"] <= stats["max"] and stats["repeats"] == 1
        assert window["sizes_bytes"][key] > 0
    assert 0 < window["int8_size_ratio"] < 1
    assert window["speedup"][f"{OV_INT8}_vs_{TORCH_FP32}"] > 0
    assert sum(window["runs_as"][OV_INT8]["convolutions_by_precision"].values()) > 0

    volume_figures = saved["volume"]
    assert volume_figures["kind"] == "user volume" and volume_figures["windows"] >= 1
    assert set(volume_figures["pipelines"]) == set(backends)
    for key, pipeline in volume_figures["pipelines"].items():
        assert set(pipeline["stages_ms"]) == set(STAGES)
        assert all(pipeline["stages_ms"][stage]["median"] > 0 for stage in STAGES), key
        assert pipeline["total_ms"]["median"] > 0 and pipeline["peak_rss_bytes"] > 0
    for key in backends[1:]:
        agreement = volume_figures["agreement_vs_torch_fp32"][key]["argmax_agreement"]
        assert 0 <= agreement <= 1

    assert saved["targets"] and all(t["met"] in (True, False, None) for t in saved["targets"])
    assert figures["files"]["markdown"] == str(files["cpu.md"])
