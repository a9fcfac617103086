#!/usr/bin/env python
"""Cohort throughput on this machine: this process, 1 and 2 local workers, a two-node Ray cluster on 127.0.0.1.

    python scripts/scale_bench.py [--volumes 6] [--repeats 3] [--out docs/benchmarks] [--workdir /tmp/ptqseg-scale]

Copies the 512x512x141 chest CT (``../shared/data/chest_ct``) ``--volumes`` times into ``--workdir`` (never into
the repository), builds (or reuses from the cache) the demo INT8 engine calibrated on synthetic phantoms, and runs
the same job with each executor, the executors interleaved in every repeat so that other load hits them alike.
Per run: wall clock, volumes/min end to end and in steady state (from the moment every worker has returned its
first volume to the last volume back), the time to the first volume back less that volume's own time (start-up:
imports and engine loading), per-volume seconds and stages, and the load average and the busiest other processes
before and after (the machine is shared). Writes ``scale.json``, ``scale.md`` (table) and ``scale.png`` (chart)
into ``--out``. The Ray run needs Ray (``pip install 'ptqsegment[ray]'``); without it, it is left out and the
report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHEST_CT = REPO.parent / "shared" / "data" / "chest_ct" / "lung_ct_phase00.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=6, help="copies of the chest CT per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--volume", default=str(CHEST_CT), help="the CT to copy")
    parser.add_argument("--engine", help="engine directory (default: the demo INT8 engine, built or from the cache)")
    parser.add_argument("--workdir", default="/tmp/ptqseg-scale")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks"))
    args = parser.parse_args()

    from engine_builder.bench import machine_info, versions
    from engine_builder.jobs import Task
    from engine_builder.io import Source

    workdir = Path(args.workdir)
    cohort = workdir / "cohort"
    cohort.mkdir(parents=True, exist_ok=True)
    for n in range(args.volumes):
        copy = cohort / f"ct_{n:02d}.nii.gz"
        if not copy.exists():
            shutil.copyfile(args.volume, copy)
    engine_dir = Path(args.engine) if args.engine else demo_engine(workdir)
    cores = len(os.sched_getaffinity(0))
    figures = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(None), "versions": versions(),
               "volume": {"file": Path(args.volume).name, "bytes": Path(args.volume).stat().st_size,
                          "shape": volume_shape(args.volume)},
               "settings": {"volumes": args.volumes, "repeats": args.repeats, "engine": str(engine_dir), "cores": cores},
               "runs": []}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read at import: every Ray process on 127.0.0.1
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        import ray  # noqa: F401
        figures["versions"]["ray"] = ray.__version__
        cluster = start_cluster()
    except ImportError:
        cluster = None
        figures["notes"] = ["Ray is not installed: the two-node Ray run was left out."]
    configs = executors(engine_dir, cores, cluster)
    for repeat in range(args.repeats):
        for name, make in configs.items():
            target = workdir / "out" / f"{name.replace(' ', '_')}_{repeat}"
            shutil.rmtree(target, ignore_errors=True)
            tasks = [Task(Source(p), target / (p.name[:-7] + "_seg.nii.gz"), p.name) for p in sorted(cohort.iterdir())]
            run = measure(tasks, make())
            run.update(config=name, repeat=repeat)
            figures["runs"].append(run)
            print(f"[scale] {name} repeat {repeat}: {run['wall_s']:.1f} s, {run['per_minute']:.2f} vol/min "
                  f"(steady {run['steady_per_minute']:.2f}), load {run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f}",
                  flush=True)
            shutil.rmtree(target, ignore_errors=True)
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    figures["summary"] = summarize(figures["runs"])
    figures["model"] = model(figures)
    write_outputs(figures, Path(args.out))
    return 0


def demo_engine(workdir: Path) -> Path:
    """The demo model's INT8 engine, calibrated on four synthetic phantoms (cached)."""
    from engine_builder.demo import make_phantom_files
    from engine_builder.pipeline import BuildRequest, build_engine

    calib = workdir / "calibration"
    make_phantom_files(calib, (1, 2, 3, 4))
    return build_engine(BuildRequest(model="demo", calib=calib, precision="int8", progress=False),
                        out=workdir / "engine_int8").engine_dir


def volume_shape(path) -> list[int]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return list(reader.GetSize())


def start_cluster():
    """Two Ray nodes of one CPU each on 127.0.0.1 (Ray's own test utility); this process is the driver."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")
    return cluster


def executors(engine_dir: Path, cores: int, cluster) -> dict:
    """Name -> a function making a fresh executor (every run loads its engines anew, as a user's run does)."""
    from engine_builder.jobs import SequentialExecutor
    from engine_builder.pool import ProcessExecutor
    from engine_builder.worker import Segmenter

    configs = {
        f"this process ({cores} threads)": lambda: SequentialExecutor(Segmenter(engine_dir)),
        f"1 worker ({cores} threads)": lambda: ProcessExecutor(engine_dir, 1, cores),
        f"2 workers ({max(1, cores // 2)} thread each)": lambda: ProcessExecutor(engine_dir, 2, max(1, cores // 2)),
    }
    if cluster is not None:
        from engine_builder.ray_pool import RayExecutor

        configs["Ray, 2 nodes x 1 CPU"] = lambda: RayExecutor(engine_dir, cluster.address, workers=2, threads=1)
    return configs


def measure(tasks, executor) -> dict:
    """One job run: wall clock (s, engine loading included), rates (volumes/min), per-volume seconds, load."""
    from engine_builder.jobs import run_job

    arrivals = []
    load_before, others_before = os.getloadavg(), busiest_others()
    started = time.perf_counter()
    report = run_job(tasks, executor, progress=False, on_outcome=lambda o: arrivals.append((time.perf_counter(), o)))
    wall = time.perf_counter() - started
    assert all(o.status == "ok" for o in report.outcomes), [o.row() for o in report.outcomes]
    seconds = [o.seconds for o in report.outcomes]
    times = [at - started for at, _ in arrivals]
    workers = len({o.worker for o in report.outcomes})
    # steady state: from the moment every worker has returned its first volume to the last volume back
    steady = (len(times) - workers) / (times[-1] - times[workers - 1]) * 60 if len(times) > workers else 0.0
    return {"executor": report.executor, "wall_s": round(wall, 2), "per_minute": round(60 * len(tasks) / wall, 3),
            "steady_per_minute": round(steady, 3), "startup_s": round(times[0] - arrivals[0][1].seconds, 2),
            "arrivals_s": [round(t, 2) for t in times],
            "volume_s": {"median": round(statistics.median(seconds), 2), "min": round(min(seconds), 2),
                         "max": round(max(seconds), 2)},
            "stages_ms_median": {k: round(statistics.median(o.timings_ms.get(k, 0) for o in report.outcomes))
                                 for k in report.outcomes[0].timings_ms},
            "workers": sorted({o.worker for o in report.outcomes}), "nodes": sorted({o.node for o in report.outcomes}),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "other_processes_before": others_before, "other_processes_after": busiest_others()}


def busiest_others(limit: int = 4) -> list[str]:
    """The processes outside this benchmark using the most CPU over one second: 'name pid: percent'."""
    import psutil

    mine = {psutil.Process().pid, *(p.pid for p in psutil.Process().children(recursive=True))}
    processes = [p for p in psutil.process_iter(["name"]) if p.pid not in mine]
    for p in processes:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    usage = []
    for p in processes:
        try:
            usage.append((p.cpu_percent(None), p.info["name"], p.pid))
        except psutil.Error:
            pass
    return [f"{name} {pid}: {percent:.0f}%" for percent, name, pid in sorted(usage, reverse=True)[:limit] if percent >= 5]


def summarize(runs: list[dict]) -> dict:
    """Per executor: medians over repeats of the wall clock, the rates, the start-up and the per-volume time."""
    summary = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == name]
        summary[name] = {key: round(statistics.median(r[key] for r in mine), 3)
                         for key in ("wall_s", "per_minute", "steady_per_minute", "startup_s")}
        summary[name]["volume_s"] = round(statistics.median(r["volume_s"]["median"] for r in mine), 2)
        summary[name]["load_before"] = [r["load_before"][0] for r in mine]
    return summary


def model(figures: dict) -> dict:
    """The paper model's inputs from this machine, and its prediction for the two-node run against the measurement.

    A node with k workers of c threads each segments k * 60 / s(c) volumes per minute (s(c): seconds per volume
    with c threads); a job of V volumes over N nodes takes S + V / (N * T_node) minutes plus the scheduling
    overhead h per volume, and never less than V * bytes_per_volume / storage bandwidth.
    """
    summary, cores = figures["summary"], figures["settings"]["cores"]
    two = next((v for k, v in summary.items() if k.startswith("2 workers")), None)
    ray_run = summary.get("Ray, 2 nodes x 1 CPU")
    if two is None:
        return {}
    one_cpu_node = 60.0 / two["volume_s"]  # a node of one core: one worker, one thread
    prediction = 2 * one_cpu_node
    result = {"one_cpu_node_per_minute": round(one_cpu_node, 3), "predicted_two_nodes_per_minute": round(prediction, 3),
              "bytes_in_per_volume": figures["volume"]["bytes"]}
    if ray_run:
        per_volume_wall = 60.0 / ray_run["steady_per_minute"] * 2  # each of the two actors, seconds per volume
        result.update(measured_two_nodes_steady_per_minute=ray_run["steady_per_minute"],
                      measured_over_predicted=round(ray_run["steady_per_minute"] / prediction, 3),
                      ray_overhead_s_per_volume=round(per_volume_wall - ray_run["volume_s"], 3),
                      ray_startup_s=ray_run["startup_s"])
    return result


def write_outputs(figures: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(figures, indent=2))
    (out / "scale.md").write_text(render_markdown(figures))
    chart(figures, out / "scale.png")
    print(f"[scale] wrote {out / 'scale.json'}, {out / 'scale.md'}, {out / 'scale.png'}")


def render_markdown(figures: dict) -> str:
    from engine_builder.evaluate import markdown_table

    m, s = figures["machine"], figures["settings"]
    rows = [[name, f"{v['per_minute']:.2f}", f"{v['steady_per_minute']:.2f}", f"{v['wall_s']:.1f}", f"{v['startup_s']:.1f}",
             f"{v['volume_s']:.2f}", ", ".join(f"{x:.1f}" for x in v["load_before"])]
            for name, v in figures["summary"].items()]
    versions = ", ".join(f"{k} {v}" for k, v in figures["versions"].items() if v)
    lines = [
        "# Cohort throughput on this machine (generated by scripts/scale_bench.py)",
        "",
        f"{figures['created']}; {m['cpu']}, {s['cores']} cores; {versions}. {s['volumes']} copies of "
        f"{figures['volume']['file']} ({'x'.join(map(str, figures['volume']['shape']))}, "
        f"{figures['volume']['bytes'] / 1e6:.1f} MB) per run, demo INT8 engine, medians of {s['repeats']} repeats, "
        "executors interleaved in every repeat.",
        "",
        markdown_table(["executor", "vol/min end to end", "vol/min steady", "wall s", "start-up s", "s per volume",
                        "load avg before (1 min)"], rows),
        "",
        "End to end includes starting the workers and loading the engine in each; steady is from the moment every "
        "worker has returned its first volume to the last volume back. Other processes seen before and after each run are in scale.json (`other_processes_*`).",
    ]
    for note in figures.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def chart(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figures["summary"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [figures["summary"][n]["steady_per_minute"] for n in names], 0.4, label="steady")
    ax.barh([i - 0.2 for i in y], [figures["summary"][n]["per_minute"] for n in names], 0.4, label="end to end")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"chest CTs per minute ({figures['settings']['cores']}-core machine)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
