"""A cohort job on a real two-node Ray cluster on this machine, with one actor killed mid-run.

The cluster is Ray's own test utility (``ray.cluster_utils.Cluster``): a head node and a second node, one CPU
each, every process on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, ``node_ip_address``), and the test
checks with psutil that every socket Ray's processes listen on, or talk to, is on the loopback address. The job
segments six real CTs (``../shared/data``, copied to a temporary folder) with two actors spread over the two nodes;
when the first volume is back, the other actor's process is killed (SIGKILL) while it holds volumes. Checked:
every output is present and equal voxel for voxel to the single-process run, the killed actor's volumes are
retried (status ``retried``, two attempts, the dead actor named), the two actors ran on the two nodes (Ray's
``SPREAD``: the killed one and the one that answered first; the report's rows name no other node; whether the
replacement actor runs a volume before the survivor has done the rest depends on the machine's load, so the report
alone is not asked to name both), no temporary is left, the actors' CPUs are free again and the cluster still runs
tasks; a second run skips all six.

Skipped where Ray is not installed, except under ``PTQSEG_REQUIRE_RAY=1`` (CI's Ray step), where that fails.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import shutil
import signal
import time

import numpy as np
import psutil
import pytest

from conftest import REPO, shared_data
from engine_builder.inference import segment_file
from engine_builder.io import Source, read_volume
from engine_builder.jobs import Task, run_job

REQUIRED = os.environ.get("PTQSEG_REQUIRE_RAY") == "1"
REAL_CTS = ("msd_spleen/sub-spleen2_ct.nii.gz", "totalsegmentator/example_ct_sm.nii.gz")
# Read by Ray when it is imported: head, nodes, GCS and this driver on 127.0.0.1 (Ray's default picks the machine's
# interface), and no usage statistics.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("Ray is not installed (pip install 'ptqsegment[ray]'); CI runs this test with PTQSEG_REQUIRE_RAY=1",
                allow_module_level=True)


@pytest.fixture(scope="module")
def cluster():
    """A head node and one more node, one CPU each, all on 127.0.0.1; this process is the driver."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    # The actors must import this checkout's engine_builder, whatever the venv has installed.
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return address.is_loopback or (address.version == 6 and address.ipv4_mapped is not None
                                    and address.ipv4_mapped.is_loopback)


def _sockets_off_loopback() -> list[str]:
    """Listening or connected inet sockets of this process and its descendants (Ray's) not on 127.0.0.1/::1."""
    found = []
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        for connection in connections:
            ends = [connection.laddr] + ([connection.raddr] if connection.raddr else [])
            found += [f"{process.name()} {end.ip}:{end.port}" for end in ends if not _loopback(end.ip)]
    return found


def test_two_node_job_with_a_killed_actor(cluster, int8_build, tmp_path):
    from engine_builder.pipeline import open_engine
    from engine_builder.ray_pool import RayExecutor

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    # The single-process reference with the actors' one thread: an OpenVINO INT8 engine's labels depend on its
    # thread count (and are the same run after run at one count).
    engine, spec, _ = open_engine(int8_build.engine_dir, threads=1)
    reference = {}
    for relative in REAL_CTS:
        source = shared_data(relative)
        reference[source.name] = segment_file(source, tmp_path / f"reference_{source.name}", engine, spec).labels.array
        for copy in range(3):
            shutil.copy(source, cohort / f"{copy}_{source.name}")
    target = tmp_path / "out"
    tasks = [Task(Source(p), target / f"{p.name}_seg.nii.gz", p.name) for p in sorted(cohort.iterdir())]
    executor = RayExecutor(int8_build.engine_dir, cluster.address, workers=2, threads=1, retries=2)
    killed, listening, nodes = [], [], set()

    def kill_the_other_actor(outcome):
        held = {name: names for name, names in executor.running().items() if name != outcome.worker}
        if not killed and held:
            listening.extend(_sockets_off_loopback())  # while the cluster and both actors are up
            os.kill(int(next(iter(held)).rsplit(":", 1)[1]), signal.SIGKILL)
            killed.append(next(iter(held)))
            nodes.update({outcome.worker.rsplit(":", 1)[0], killed[0].rsplit(":", 1)[0]})

    report = run_job(tasks, executor, progress=False, report_path=tmp_path / "report.csv", on_outcome=kill_the_other_actor)

    assert killed, "no actor was holding a volume when the first one came back"
    assert listening == [], listening
    statuses = [o.status for o in report.outcomes]
    assert statuses.count("failed") == statuses.count("skipped") == 0, statuses
    retried = report.with_status("retried")
    assert 1 <= len(retried) <= 2  # the killed actor held at most two volumes
    assert all(o.attempts == 2 and o.lost_workers == killed and o.worker != killed[0] for o in retried)
    for task in tasks:
        labels = read_volume(task.output).array
        original = task.name.split("_", 1)[1]
        assert np.array_equal(labels, reference[original]), f"{task.name}: differs from the single-process run"
    assert not [p for p in target.iterdir() if ".partial-" in p.name]
    assert report.executor == "Ray at " + cluster.address + ", 2 actors, 1 CPU each"

    with open(tmp_path / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["input"] for r in rows] == [t.name for t in tasks]
    assert {r["status"] for r in rows} <= {"ok", "retried"} and sum(r["status"] == "retried" for r in rows) == len(retried)
    assert len(nodes) == 2, f"the two actors were on one node: {nodes}"
    assert {r["node"] for r in rows} <= nodes
    assert all(float(r["seconds"]) > 0 for r in rows)

    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2, "the job's actors still hold CPUs"
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42

    again = run_job(tasks, RayExecutor(int8_build.engine_dir, cluster.address, workers=2, threads=1), progress=False)
    assert [o.status for o in again.outcomes] == ["skipped"] * len(tasks)
