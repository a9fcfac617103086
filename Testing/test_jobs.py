"""Cohort runs without Ray: CSV lists, the persistent worker, ``--workers N`` and its fault tolerance.

- CSV lists: a list run through the CLI (a corrupt row reported, the others written, the JSON report right);
  relative inputs resolve against the list's folder and relative outputs against ``--output``; a DICOM
  folder with ``series`` = ``all`` gives one task per series; a bad row (missing file, no suffix, two rows with
  one output, a wrong header, too many cells) is one PTQError naming the line, and through the CLI one line and
  exit code 2.
- ``ptqseg worker``: the ready event, a good volume (label map equal to an in-process ``segment_file``), a corrupt
  file and a malformed request each get one result event and the worker keeps serving; stdin closed -> exit 0;
  nothing but JSON events on its stdout.
- ``--workers 2`` on real CTs (``../shared/data``, copied to a temporary folder) writes label maps equal voxel for
  voxel to the single-process run's, with both workers used and the per-volume report (JSON and CSV) right; a
  worker killed while it holds a volume: the volume is retried on another worker, every output is still equal to
  the single-process one and no temporary is left; Ctrl-C (SIGINT) on a ``--workers`` run exits 130 within
  seconds, leaves no temporary, no half-written output and no worker process.
- ``RetryQueue``: a volume whose worker died is queued again up to ``retries`` times, then reported failed.
Real engines (the session's demo INT8 engine), real files, real processes; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import REPO, assert_clean_error, run_cli, shared_data, write_dicom_series, write_phantom
from engine_builder.errors import PTQError
from engine_builder.io import Source, read_volume
from engine_builder.jobs import RetryQueue, Task, default_threads, list_tasks, run_job
from engine_builder.pool import ProcessExecutor

REAL_CTS = ("msd_spleen/sub-spleen2_ct.nii.gz", "totalsegmentator/example_ct_sm.nii.gz")


def _corrupt(path: Path) -> None:
    write_phantom(path.with_name("whole.nii.gz"), 5, (40, 40, 20), (6.0, 6.0, 9.0))
    data = path.with_name("whole.nii.gz").read_bytes()
    path.with_name("whole.nii.gz").unlink()
    path.write_bytes(data[: len(data) // 2])


def _write_list(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".partial-" in p.name]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Real CTs, three copies of each (six volumes), in a temporary folder: never in the repository."""
    folder = tmp_path_factory.mktemp("cohort")
    for relative in REAL_CTS:
        source = shared_data(relative)
        for copy in range(3):
            shutil.copy(source, folder / f"{copy}_{source.name}")
    return folder


# An OpenVINO INT8 engine's labels depend on its thread count (measured: 4993 of 707,824 voxels of the spleen CT
# differ between 1 and 2 threads; at one thread count they are the same run after run), so the single-process
# reference runs with the thread count each of two workers gets.


@pytest.fixture(scope="module")
def single_process(cohort, int8_build, tmp_path_factory) -> dict[str, np.ndarray]:
    """The single-process run of the cohort (``ptqseg segment FOLDER``, the workers' threads): labels by output name."""
    target = tmp_path_factory.mktemp("single")
    result = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(cohort), "--output", str(target),
                     "--quiet", "--threads", str(default_threads(2)))
    assert result.returncode == 0, result.stderr
    assert "segmented 6, skipped 0 already done, failed 0" in result.stdout
    return {p.name: read_volume(p).array for p in sorted(target.iterdir())}


def _assert_equal_to(single: dict, target: Path) -> None:
    outputs = {p.name: read_volume(p).array for p in sorted(target.glob("*.nii.gz"))}
    assert sorted(outputs) == sorted(single)
    for name, labels in outputs.items():
        assert labels.shape == single[name].shape
        assert np.array_equal(labels, single[name]), f"{name}: {np.count_nonzero(labels != single[name])} voxels differ"
        assert len(np.unique(labels)) > 1, f"{name} is all background"


# ---- CSV lists ------------------------------------------------------------------------------------------------


def test_list_resolves_relative_paths_and_series(tmp_path):
    scans = tmp_path / "lists" / "scans"
    write_phantom(scans / "a.nii.gz", 1, (24, 24, 12), (8.0, 8.0, 10.0))
    write_phantom(scans / "b.nrrd", 2, (24, 24, 12), (8.0, 8.0, 10.0))
    hu = np.full((16, 16, 6), -1000, dtype=np.int16)
    (scans / "dicom").mkdir()
    for uid in ("1.2.3.4", "1.2.3.5"):  # two series in one folder
        for path in write_dicom_series(scans / "tmp", hu, np.diag([2.0, 2.0, 3.0, 1.0]), uid):
            path.rename(scans / "dicom" / f"{uid[-1]}_{path.name}")
    listing = _write_list(tmp_path / "lists" / "cohort.csv", [
        ["Input", "output", "series"], ["scans/a.nii.gz", "", ""], [str(scans / "b.nrrd"), "sub/b_labels.nii.gz", ""],
        ["", "", ""], ["scans/dicom", "d.nii.gz", "all"], ["scans/dicom", "", "1.2.3.5"]])
    out = tmp_path / "out"
    tasks = list_tasks(listing, out)
    assert [(t.source, t.output, t.name) for t in tasks] == [
        (Source(scans / "a.nii.gz"), out / "a_seg.nii.gz", "scans/a.nii.gz"),
        (Source(scans / "b.nrrd"), out / "sub" / "b_labels.nii.gz", str(scans / "b.nrrd")),
        (Source(scans / "dicom", "1.2.3.4"), out / "d_1.2.3.4.nii.gz", "scans/dicom [series 1.2.3.4]"),
        (Source(scans / "dicom", "1.2.3.5"), out / "d_1.2.3.5.nii.gz", "scans/dicom [series 1.2.3.5]"),
        (Source(scans / "dicom", "1.2.3.5"), out / "dicom_1.2.3.5_seg.nii.gz", "scans/dicom [series 1.2.3.5]")]


@pytest.mark.parametrize("rows, fragments", [
    ([["input"], ["a.nii.gz"], ["missing.nii.gz"]], ["line 3", "missing.nii.gz", "not found"]),
    ([["input", "output"], ["a.nii.gz", "labels.txt"]], ["line 2", "labels.txt", "volume suffix"]),
    ([["input", "output"], ["a.nii.gz", "x.nii.gz"], ["a.nii.gz", "x.nii.gz"]], ["line 3", "also the output of line 2"]),
    ([["path"], ["a.nii.gz"]], ["header", "input", "path"]),
    ([["input"], ["a.nii.gz", "extra"]], ["line 2", "more cells"]),
    ([["input"], [""]], ["lists no volume"]),
])
def test_bad_list_rows_name_the_line(tmp_path, rows, fragments):
    write_phantom(tmp_path / "a.nii.gz", 1, (24, 24, 12), (8.0, 8.0, 10.0))
    with pytest.raises(PTQError) as error:
        list_tasks(_write_list(tmp_path / "cohort.csv", rows), tmp_path / "out")
    for fragment in fragments:
        assert fragment in str(error.value)


def test_bad_list_row_through_the_cli(tmp_path, int8_build):
    write_phantom(tmp_path / "a.nii.gz", 1, (24, 24, 12), (8.0, 8.0, 10.0))
    listing = _write_list(tmp_path / "cohort.csv", [["input"], ["a.nii.gz"], ["gone.nii.gz"]])
    result = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(listing),
                     "--output", str(tmp_path / "out"), "--workers", "2")
    assert_clean_error(result, "cohort.csv line 3", "gone.nii.gz")
    assert not (tmp_path / "out").exists()
    assert_clean_error(run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(listing),
                               "--output", str(tmp_path / "out"), "--report", str(tmp_path / "r.txt")), "--report", ".csv")


def test_list_run_through_the_cli(tmp_path, int8_build, small_volumes):
    _corrupt(tmp_path / "broken.nii.gz")
    listing = _write_list(tmp_path / "cohort.csv", [["input", "output"], [str(small_volumes / "case_21.nii.gz"), ""],
                                                   ["broken.nii.gz", ""], [str(small_volumes / "case_22.nii.gz"), "b/22.nrrd"]])
    result = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(listing), "--output",
                     str(tmp_path / "out"), "--quiet", "--report", str(tmp_path / "run.json"))
    assert result.returncode == 1, result.stderr  # one volume failed
    assert "segmented 2, skipped 0 already done, failed 1" in result.stdout and "failed: broken.nii.gz:" in result.stdout
    assert read_volume(tmp_path / "out" / "b" / "22.nrrd").shape == read_volume(small_volumes / "case_22.nii.gz").shape
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["executor"] == "this process" and report["counts"] == {"ok": 2, "retried": 0, "skipped": 0, "failed": 1}
    assert [(r["input"], r["status"]) for r in report["volumes"]] == [
        (str(small_volumes / "case_21.nii.gz"), "ok"), ("broken.nii.gz", "failed"), (str(small_volumes / "case_22.nii.gz"), "ok")]
    assert "cannot be read" in report["volumes"][1]["error"] and report["volumes"][0]["output"].endswith("case_21_seg.nii.gz")


# ---- the persistent worker ------------------------------------------------------------------------------------


def test_worker_serves_json_lines_until_stdin_closes(tmp_path, int8_build):
    from engine_builder.inference import segment_file
    from engine_builder.pipeline import open_engine

    write_phantom(tmp_path / "ct.nii.gz", 31, (48, 44, 20), (6.0, 6.0, 9.0))
    _corrupt(tmp_path / "broken.nii.gz")
    requests = [{"id": 1, "input": str(tmp_path / "ct.nii.gz"), "output": str(tmp_path / "out" / "ct_seg.nii.gz")},
                {"id": 2, "input": str(tmp_path / "broken.nii.gz"), "output": str(tmp_path / "out" / "b.nii.gz")},
                "this is not json", {"id": 4, "input": 7, "output": "x.nii.gz"},
                {"id": 5, "input": str(tmp_path / "ct.nii.gz"), "output": str(tmp_path / "out" / "again.nii.gz"),
                 "series": None}]
    stdin = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    result = subprocess.run([sys.executable, "-m", "engine_builder.cli", "worker", "--engine", str(int8_build.engine_dir),
                             "--threads", "1"], input=stdin, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but JSON events on stdout
    assert [e["event"] for e in events] == ["ready"] + ["result"] * 5
    assert events[0]["worker"] == f"{events[0]['node']}:{events[1]['worker'].rsplit(':', 1)[1]}"
    ok, broken, not_json, bad_field, again = events[1:]
    assert (ok["id"], ok["status"], ok["error"]) == (1, "ok", "") and ok["windows"] >= 1 and ok["seconds"] > 0
    assert broken["id"] == 2 and broken["status"] == "failed" and "cannot be read" in broken["error"]
    assert not_json["id"] is None and not_json["status"] == "failed" and "not JSON" in not_json["error"]
    assert bad_field["id"] == 4 and "'input' and 'output' must be paths" in bad_field["error"]
    assert again["status"] == "ok"
    assert not (tmp_path / "out" / "b.nii.gz").exists()
    engine, spec, _ = open_engine(int8_build.engine_dir, threads=1)  # the worker's thread count (see single_process)
    reference = segment_file(tmp_path / "ct.nii.gz", tmp_path / "reference.nii.gz", engine, spec)
    assert np.array_equal(read_volume(tmp_path / "out" / "ct_seg.nii.gz").array, reference.labels.array)
    assert np.array_equal(read_volume(tmp_path / "out" / "again.nii.gz").array, reference.labels.array)


def test_worker_with_a_bad_engine_reports_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine_builder.cli", "worker", "--engine", str(tmp_path)],
                            input="", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert_clean_error(result, "is not an engine directory")
    event = json.loads(result.stdout)
    assert event["event"] == "error" and "is not an engine directory" in event["message"]


# ---- --workers ------------------------------------------------------------------------------------------------


def test_two_workers_equal_the_single_process_run(cohort, single_process, int8_build, tmp_path):
    target = tmp_path / "two"
    result = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(cohort), "--output", str(target),
                     "--workers", "2", "--quiet", "--report", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    assert "segmented 6, skipped 0 already done, failed 0" in result.stdout
    _assert_equal_to(single_process, target)
    report = json.loads((tmp_path / "report.json").read_text())
    threads = default_threads(2)
    assert report["executor"] == f"2 local worker processes, {threads} thread{'s' if threads > 1 else ''} each"
    assert report["counts"] == {"ok": 6, "retried": 0, "skipped": 0, "failed": 0}
    rows = report["volumes"]
    assert [r["input"] for r in rows] == sorted(p.name for p in cohort.iterdir())
    assert all(r["status"] == "ok" and r["attempts"] == 1 and r["seconds"] > 0 and r["error"] == "" for r in rows)
    assert len({r["worker"] for r in rows}) == 2
    # the wall clock is at least half the summed volume times (two workers), so the rate is at most twice theirs
    assert 0 < report["volumes_per_minute"] <= 6 * 60 / (sum(r["seconds"] for r in rows) / 2)

    again = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(cohort), "--output", str(target),
                    "--workers", "2", "--quiet", "--report", str(tmp_path / "again.csv"))
    assert again.returncode == 0 and "segmented 0, skipped 6 already done, failed 0" in again.stdout
    with open(tmp_path / "again.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["input", "output", "status", "worker", "node", "seconds", "attempts", "error"]
    assert [r["status"] for r in rows] == ["skipped"] * 6


def test_a_killed_worker_has_its_volume_retried(cohort, single_process, int8_build, tmp_path):
    target = tmp_path / "killed"
    tasks = [Task(Source(p), target / (p.name[: -len(".nii.gz")] + "_seg.nii.gz"), p.name) for p in sorted(cohort.iterdir())]
    executor = ProcessExecutor(int8_build.engine_dir, workers=2, threads=1, retries=1)
    killed = []

    def kill_the_other_worker(outcome):
        held = {name: names for name, names in executor.running().items() if name != outcome.worker}
        if not killed and held:  # a worker in the middle of a volume
            victim = next(iter(held))
            os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
            killed.append(victim)

    report = run_job(tasks, executor, progress=False, on_outcome=kill_the_other_worker)
    statuses = [o.status for o in report.outcomes]
    assert statuses.count("retried") == 1 and statuses.count("ok") == 5, statuses
    retried = report.with_status("retried")[0]
    assert retried.attempts == 2 and retried.lost_workers == killed
    assert retried.worker != retried.lost_workers[0]
    assert not _partials(target)
    _assert_equal_to(single_process, target)


def test_ctrl_c_stops_workers_and_leaves_no_half_written_output(cohort, single_process, int8_build, tmp_path):
    target = tmp_path / "interrupted"
    command = [sys.executable, "-m", "engine_builder.cli", "--progress", "json", "segment", "--engine",
               str(int8_build.engine_dir), "--input", str(cohort), "--output", str(target), "--workers", "2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers, seen = [], []
    for line in process.stdout:
        seen.append(line.strip()[:160])
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("stage") == "volumes" and event.get("done", 0) >= 1:
            workers = [p for p in psutil.Process(process.pid).children() if "worker" in p.cmdline()]
            assert 0 < event["per_minute"] and event["eta_s"] > 0
            process.send_signal(signal.SIGINT)
            break
    started = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert workers, f"the run ended (exit {process.returncode}) before a volume was reported done; last lines: {seen[-6:]}"
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 30
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert len(workers) == 2 and not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not _partials(target)
    written = sorted(target.glob("*.nii.gz"))
    assert 1 <= len(written) < 6
    for path in written:  # every output that exists is whole and right
        assert np.array_equal(read_volume(path).array, single_process[path.name])


def test_retry_queue_gives_up_after_the_retries():
    tasks = [Task(Source(Path(f"{n}.nii.gz")), Path(f"out/{n}_seg.nii.gz"), f"{n}.nii.gz") for n in "ab"]
    retry = RetryQueue(tasks, retries=1)
    first = retry.take()
    assert retry.worker_lost(first, "node:1", "its process exited with code -9") is None
    assert retry.take() == first  # back at the front
    failed = retry.worker_lost(first, "node:2", "its process exited with code -9")
    assert failed.status == "failed" and failed.attempts == 2 and failed.lost_workers == ["node:1", "node:2"]
    assert "given up after 2 attempts" in failed.error and retry.open == 1
    done = retry.finished(retry.take(), {"status": "ok", "worker": "node:3", "seconds": 1.5})
    assert (done.status, done.attempts, done.seconds, retry.open) == ("ok", 1, 1.5, 0)


def test_ray_missing_is_one_line(tmp_path, int8_build, small_volumes):
    try:
        import ray  # noqa: F401
        pytest.skip("Ray is installed here: the missing-Ray message cannot be shown")
    except ImportError:
        pass
    result = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(small_volumes),
                     "--output", str(tmp_path / "out"), "--ray", "auto")
    assert_clean_error(result, "--ray needs Ray", "pip install 'ptqsegment[ray]'")
