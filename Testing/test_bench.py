"""engine_builder.bench: a smoke run of ``run_benchmark`` on a tiny phantom (one model, one repeat of everything).

Checks what the report promises, never a speed (performance claims live in docs/benchmarks):
- ``cpu.md``, ``cpu.json`` and ``cpu.png`` are written, nothing temporary is left;
- the markdown is rendered from the JSON alone: rendering the saved JSON again gives the same text;
- every speed-up in the JSON is the ratio of the medians it names (recomputed here);
- the fresh-process section has a cold run and at least one timed run per engine, each with a wall clock
  longer than the command's own stages, a positive start-up and peak memory, and an import profile;
- the warm section says how it was measured; targets are computed from the figures (met is true/false/None);
- the engine's manifest carries the int8 share of convolution time, which ``ptqseg info`` prints.
"""

from __future__ import annotations

import json

import pytest

from conftest import write_phantom
from engine_builder.bench import run_benchmark
from engine_builder.bench.common import OV_FP32, OV_INT8, STAGES, TORCH_FP32
from engine_builder.bench.commands import import_profile
from engine_builder.bench.report import render_markdown
from engine_builder.bench.targets import TARGETS
from engine_builder.bench.volume import IN_PROCESS, WORKER


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, cache_root):
    folder = tmp_path_factory.mktemp("bench")
    volume = folder / "volume.nii.gz"
    write_phantom(volume, 31, shape=(64, 64, 32), spacing=(3.0, 3.0, 4.0))  # 4 windows at the demo's 1.5 mm
    calib_dir = folder / "calib"  # two small phantoms: a quick INT8 build
    calib_dir.mkdir()
    for seed in (32, 33):
        write_phantom(calib_dir / f"phantom_{seed}.nii.gz", seed, shape=(64, 64, 32), spacing=(5.0, 5.0, 8.0))
    out = folder / "benchmarks"
    figures = run_benchmark(models=["demo"], volume=volume, calib=calib_dir, repeats=1, fresh_repeats=1,
                            warm_repeats=1, out_dir=out, cache_root=cache_root, progress=False,
                            build_options={"patches_per_volume": 2, "estimate": False})
    return figures, out


def test_writes_markdown_json_and_chart_from_the_json(bench_run):
    figures, out = bench_run
    for name in ("cpu.md", "cpu.json", "cpu.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*partial*")), "temporary files left behind"
    markdown = (out / "cpu.md").read_text()
    saved = json.loads((out / "cpu.json").read_text())
    assert render_markdown(saved) == markdown
    for heading in ("## Targets", "## Whole volume as a user runs it", "## One 96³ window", "## Notes",
                    saved["machine"]["cpu"]):
        assert heading in markdown, heading
    assert figures["files"]["markdown"] == str(out / "cpu.md")
    assert saved["machine"]["load_average"]["start"] is not None and saved["versions"]["openvino"]


def test_speedups_are_ratios_of_their_medians(bench_run):
    saved = json.loads((bench_run[1] / "cpu.json").read_text())
    window = saved["window"]["demo"]
    medians = {key: stats["median"] for key, stats in window["latency_ms"].items()}
    assert list(medians) == saved["backends"] and saved["backends"][0] == TORCH_FP32
    assert window["speedup"], "no speed-up computed"
    for name, value in window["speedup"].items():
        key, ref = name.split("_vs_")
        assert value == pytest.approx(medians[ref] / medians[key], rel=1e-12), name
    for section in ("fresh", "warm"):
        part = saved["volume"]["demo"][section]
        torch_median = part["engines"][TORCH_FP32]["wall_ms"]["median"]
        assert set(part["speedup_vs_torch_fp32"]) == set(saved["backends"]) - {TORCH_FP32}
        for key, value in part["speedup_vs_torch_fp32"].items():
            assert value == pytest.approx(torch_median / part["engines"][key]["wall_ms"]["median"], rel=1e-12)


def test_fresh_process_runs_per_engine(bench_run):
    saved = json.loads((bench_run[1] / "cpu.json").read_text())
    fresh = saved["volume"]["demo"]["fresh"]
    assert set(fresh["engines"]) == set(saved["backends"])
    for key, engine in fresh["engines"].items():
        assert len(engine["runs"]) >= 1 and engine["wall_ms"]["repeats"] == len(engine["runs"])
        for run in [engine["cold"], *engine["runs"]]:
            stages = sum(run["stages_ms"].values())
            assert set(run["stages_ms"]) == set(STAGES) and all(ms > 0 for ms in run["stages_ms"].values()), key
            assert run["wall_ms"] > 0 and run["wall_ms"] >= run["stages_total_ms"] >= stages - 1e-6, key
            assert run["startup_ms"] == pytest.approx(run["wall_ms"] - run["stages_total_ms"])
            assert run["engine_open_ms"] > 0 and run["peak_rss_bytes"] > 0 and run["windows"] >= 1
        assert engine["peak_rss_bytes"] == max(r["peak_rss_bytes"] for r in [engine["cold"], *engine["runs"]])
    assert set(fresh["imports"]) == {TORCH_FP32, OV_INT8}
    assert fresh["imports"][TORCH_FP32]["total_ms"] > 0 and "torch" in fresh["imports"][TORCH_FP32]["top_ms"]
    assert "torch" not in fresh["imports"][OV_INT8]["top_ms"], "the OpenVINO segment process imported torch"


def test_warm_figures_say_how_they_were_measured(bench_run):
    saved = json.loads((bench_run[1] / "cpu.json").read_text())
    warm = saved["volume"]["demo"]["warm"]
    assert (warm["method"], warm["label"]) in (("worker", WORKER), ("in-process", IN_PROCESS))
    for key, engine in warm["engines"].items():
        assert engine["ready_ms"] > 0 and engine["first"]["wall_ms"] > 0 and engine["wall_ms"]["median"] > 0, key
        assert all(engine["stages_ms"][stage]["median"] > 0 for stage in STAGES), key
    assert warm["label"] in (bench_run[1] / "cpu.md").read_text()


def test_targets_come_from_the_figures(bench_run):
    saved = json.loads((bench_run[1] / "cpu.json").read_text())
    checks = {c["target"]: c for c in saved["targets"]}
    assert all(c["met"] in (True, False, None) for c in checks.values())
    share = checks["demo: share of convolution time in int8 kernels (one window)"]
    assert share["value"] == saved["window"]["demo"]["profile"][OV_INT8]["int8_conv_share"]
    assert share["met"] == (share["value"] >= TARGETS["int8_conv_time_share_min"])
    window = checks["demo: one window, OV INT8 speed-up vs torch FP32 eager"]
    assert window["met"] == (window["value"] >= TARGETS["window_speedup_vs_torch_min"])
    command = checks["demo, whole volume: `ptqseg segment` OV INT8, fresh process (s)"]
    int8 = saved["volume"]["demo"]["fresh"]["engines"][OV_INT8]
    assert command["value"] == pytest.approx(int8["wall_ms"]["median"] / 1e3)
    assert command["met"] is None and "not the chest CT" in command["note"]  # a phantom stands in here
    assert 0 < saved["window"]["demo"]["profile"][OV_FP32]["window_ms"]


def test_import_profile_counts_top_level_imports_once():
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |   encodings.aliases",
        "import time:       200 |        300 | encodings",
        "import time:      1000 |       5000 |     numpy.core",
        "import time:      2000 |      12000 | numpy",
        "import time:       500 |        500 | numpy.random",
        "some other line",
    ])
    profile = import_profile(stderr)
    assert profile["total_ms"] == pytest.approx(0.3 + 12.0 + 0.5)
    assert profile["top_ms"] == {"numpy": 12.5, "encodings": 0.3}
