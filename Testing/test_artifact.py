"""The engine directory: atomic builds, stale temporaries, the engine cache, and the manifest.

Covers: a ``ptqseg --progress json build`` killed with SIGKILL once its quantize stage has started leaves no
engine at --out (only a hidden temporary), and the next build removes that stale ``.<name>.partial-*``
temporary and commits a complete engine; temporaries of live processes are left alone; an existing non-engine
folder is never replaced; a second identical build is a quick cache hit with the same cache_key, also into
another --out; a changed calibration method gives another key; the manifest holds the spec, labels,
precision, backend and version, calibration method and set hash, kept_in_float, sizes, build_seconds and
accuracy (argmax agreement, per-label Dice, logits relative L2) and ``ptqseg info`` prints it. The killed
build uses random weights (``--random-init``): atomicity does not depend on the weights. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from conftest import REPO, run_cli
from engine_builder.artifact import commit_dir, read_manifest, remove_stale_partials, temporary_dir_for
from engine_builder.errors import PTQError
from engine_builder.models import get_spec
from engine_builder.calibration import CalibrationSet
from engine_builder.pipeline import BuildRequest, build_engine, build_key, check_request, open_engine


def _partials(parent: Path) -> list[Path]:
    return sorted(parent.glob(".*.partial-*"))


def test_killed_build_leaves_no_engine_and_next_build_cleans_up(tmp_path, calib_dir):
    out = tmp_path / "engines" / "demo_int8"
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "engine_builder.cli", "--progress", "json", "build", "--model", "demo",
               "--random-init", "--calib", str(calib_dir), "--out", str(out), "--cache", str(cache), "--patches", "2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               encoding="utf-8", errors="replace")
    events = []
    try:
        for line in process.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1] == {"event": "stage", "stage": "quantize", "status": "start"}:
                    process.send_signal(signal.SIGKILL)
                    break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        process.stdout.close()
    assert events and events[-1]["stage"] == "quantize", f"the build ended before quantizing: {events[-3:]}"
    assert process.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed build left an engine at --out"
    stale = _partials(out.parent)
    assert len(stale) == 1 and stale[0].name.startswith(".demo_int8.partial-")  # it really was mid-build
    assert not (cache / "engines").exists() or not any((cache / "engines").iterdir())

    # The next build (same --out) removes the dead process's temporary and commits a complete engine.
    result = build_engine(BuildRequest(model="demo", calib=calib_dir, precision="fp32", allow_random_weights=True,
                                       patches_per_volume=2, progress=False), out=out, cache_root=cache)
    assert not stale[0].exists()
    assert _partials(out.parent) == []
    assert result.engine_dir == out and (out / "manifest.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    open_engine(out)  # loads: complete


def test_temporaries_of_live_processes_are_kept(tmp_path):
    target = tmp_path / "engine"
    live = tmp_path / f".engine.partial-{os.getpid()}-1"
    live.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    dead = tmp_path / f".engine.partial-{dead_pid}-2"
    dead.mkdir()
    (dead / "model.bin").write_bytes(b"half")
    remove_stale_partials(tmp_path)
    assert live.exists() and not dead.exists()
    tmp = temporary_dir_for(target)
    assert tmp.parent == tmp_path and tmp.name.startswith(".engine.partial-")
    (tmp / "manifest.json").write_text("{}")
    commit_dir(tmp, target)
    assert (target / "manifest.json").is_file() and not tmp.exists()
    # A newer build replaces the older engine as a whole; nothing of the old one stays behind.
    (target / "old_only.bin").write_bytes(b"old")
    newer = temporary_dir_for(target)
    (newer / "manifest.json").write_text('{"n": 2}')
    commit_dir(newer, target)
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]
    assert (target / "manifest.json").read_text() == '{"n": 2}'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [live.name]


def test_a_folder_that_is_not_an_engine_is_never_replaced(tmp_path):
    target = tmp_path / "important"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    tmp = temporary_dir_for(target)
    (tmp / "manifest.json").write_text("{}")
    with pytest.raises(PTQError, match="not an engine directory"):
        commit_dir(tmp, target)
    assert (target / "thesis.tex").read_text() == "years of work"
    assert not tmp.exists()
    with pytest.raises(PTQError, match="not an engine directory"):
        read_manifest(target)


def test_second_identical_build_is_a_quick_cache_hit(int8_build, demo_request, cache_root, tmp_path):
    manifest = int8_build.manifest
    request = BuildRequest(precision="int8", **demo_request)
    start = time.perf_counter()
    again = build_engine(request, out=int8_build.engine_dir, cache_root=cache_root)
    elapsed = time.perf_counter() - start
    assert again.cache_hit is True
    assert again.manifest["cache_key"] == manifest["cache_key"]
    assert again.manifest["created"] == manifest["created"]  # the same engine, not a rebuild
    assert elapsed < 0.5 * manifest["build_seconds"], (elapsed, manifest["build_seconds"])
    # Into another --out: copied from the cache, byte-identical.
    copy = build_engine(request, out=tmp_path / "copy", cache_root=cache_root)
    assert copy.cache_hit is True and copy.manifest["cache_key"] == manifest["cache_key"]
    for name in ("model.xml", "model.bin", "manifest.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (int8_build.engine_dir / name).read_bytes()
    assert _partials(tmp_path) == []


def test_each_setting_is_in_the_key():
    """The cache key changes with every build setting (computed without building)."""
    request = BuildRequest(model="demo", calib="calib", patches_per_volume=2, progress=False)
    source, backend = check_request(request)
    calibration = CalibrationSet(volumes=[], set_hash="0" * 64)
    key = build_key(request, source, backend, calibration)
    assert key == build_key(BuildRequest(**vars(request)), source, backend, calibration)
    changes = {"method": "minmax", "preset": "performance", "bias_correction": "none", "sampling": "tissue",
               "max_drop": 0.01, "accuracy_control": "off", "max_reverted": 3, "estimate": False, "batch_size": 2,
               "patches_per_volume": 4, "seed": 1, "min_agreement": 0.9, "keep_float": ("conv",), "precision": "bf16"}
    keys = {name: build_key(dataclasses.replace(request, **{name: value}), source, backend, calibration)
            for name, value in changes.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(keys), keys
    other_set = dataclasses.replace(calibration, set_hash="1" * 64)
    assert build_key(request, source, backend, other_set) != key


def test_changed_method_gives_another_key(int8_build, demo_request, cache_root, tmp_path):
    request = BuildRequest(precision="int8", method="minmax", accuracy_control="off", estimate=False, **demo_request)
    other = build_engine(request, out=tmp_path / "minmax", cache_root=cache_root)
    assert other.cache_hit is False
    assert other.manifest["cache_key"] != int8_build.manifest["cache_key"]
    # Built without the held-out estimate (--no-estimate): the manifest says so instead of a figure.
    assert other.manifest["accuracy"]["kind"] == "unavailable" and "--no-estimate" in other.manifest["accuracy"]["reason"]
    assert int8_build.manifest["accuracy"]["kind"] == "held_out_volumes"
    assert other.manifest["calibration"]["method"] == "minmax"
    assert int8_build.manifest["calibration"]["method"] == "mean_minmax"
    # Same calibration set, same weights: only the method differs.
    assert other.manifest["calibration"]["set_hash"] == int8_build.manifest["calibration"]["set_hash"]
    assert other.manifest["weights"] == int8_build.manifest["weights"]


def test_manifest_describes_the_engine(int8_build, calib_dir):
    manifest = read_manifest(int8_build.engine_dir)
    assert manifest == int8_build.manifest
    spec = get_spec("demo")
    assert manifest["spec"] == spec.to_dict()
    assert [l["name"] for l in manifest["spec"]["labels"]] == spec.label_names
    assert manifest["precision"] == "int8" and manifest["backend"] == "openvino"
    assert manifest["backend_version"].startswith(f"openvino {ov.__version__.split('-')[0]}") and "nncf" in manifest["backend_version"]
    assert manifest["input_shape"] == [1, 1, 96, 96, 96]
    # The calibration set hash is the SHA-256 of the calibration files' bytes, in sorted order.
    digest = hashlib.sha256()
    for path in sorted(calib_dir.iterdir()):
        digest.update(path.read_bytes())
    calibration = manifest["calibration"]
    assert calibration["method"] == "mean_minmax" and calibration["set_hash"] == digest.hexdigest()
    assert calibration["preset"] == "mixed" and calibration["sampling"] == "body"
    assert sorted(calibration["sources"]) == sorted(p.name for p in calib_dir.iterdir())
    assert calibration["patches"] == 2 * len(calibration["sources"])
    assert isinstance(manifest["kept_in_float"], list)
    files = manifest["files"]
    assert sorted(files) == ["model.bin", "model.xml", "reference.bin", "reference.xml"]
    engine_bytes = sum((int8_build.engine_dir / f).stat().st_size for f in files if f.startswith("model."))
    assert manifest["sizes"]["engine_bytes"] == engine_bytes > 0
    assert manifest["sizes"]["fp32_onnx_bytes"] > 3 * engine_bytes
    # The FP32 reference of --verify: the FP32 graph with fp16-stored weights, about half the FP32 size.
    assert 0.4 < manifest["sizes"]["reference_bytes"] / manifest["sizes"]["fp32_onnx_bytes"] < 0.6
    assert 0 < manifest["build_seconds"] < 900
    accuracy = manifest["accuracy"]
    assert accuracy["kind"] == "held_out_volumes" and accuracy["folds"] == 3
    assert sorted(v["volume"] for v in accuracy["volumes"]) == sorted(calibration["sources"])
    # Phantoms the fold's engine was not calibrated on: INT8 keeps the FP32 label on nearly all foreground voxels.
    assert accuracy["foreground_agreement"] >= 0.97 and accuracy["min_foreground_agreement"] >= 0.95, accuracy
    assert accuracy["mean_dice"] >= 0.9, accuracy
    assert accuracy["passed"] is True and manifest["accuracy_control"] is None
    for volume in accuracy["volumes"]:
        assert volume["voxels"] > 10_000 and {"liver", "lung", "bone"} <= set(volume["dice"])
    assert manifest["runs_as"]["convolutions_by_precision"]
    assert manifest["weights"]["sha256"] and len(manifest["weights"]["sha256"]) == 64


def test_ptqseg_info_prints_the_manifest(int8_build):
    summary = run_cli("info", str(int8_build.engine_dir))
    assert summary.returncode == 0, summary.stderr
    manifest = int8_build.manifest
    assert "demo (UNet, 8 labels)" in summary.stdout
    assert "precision int8" in summary.stdout and manifest["backend_version"] in summary.stdout
    assert f"calibrated mean_minmax on {manifest['calibration']['patches']} patches" in summary.stdout
    assert manifest["calibration"]["set_hash"][:12] in summary.stdout
    assert f"{manifest['accuracy']['foreground_agreement']:.2%} of foreground voxels get the FP32 label on 3 calibration " \
           "volumes the engine was not calibrated on" in summary.stdout
    assert "convolutions" in summary.stdout and "u8" in summary.stdout
    full = run_cli("info", "--json", str(int8_build.engine_dir))
    assert full.returncode == 0 and json.loads(full.stdout) == manifest


def _commit_many(target: str, index: int, start_at: float, rounds: int) -> None:
    """One of several processes committing engines into the same target at the same instants."""
    from engine_builder.artifact import commit_dir, temporary_dir_for

    while time.time() < start_at:
        time.sleep(0.001)
    for n in range(rounds):
        tmp = temporary_dir_for(Path(target))
        (tmp / "model.bin").write_bytes(f"{index}-{n}".encode() * 1000)
        (tmp / "manifest.json").write_text(json.dumps({"writer": index, "round": n}))
        commit_dir(tmp, Path(target))


def test_concurrent_commits_into_one_target_never_fail(tmp_path):
    import multiprocessing

    target = tmp_path / "engine"
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    workers = [context.Process(target=_commit_many, args=(str(target), i, start_at, 30)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    manifest = json.loads((target / "manifest.json").read_text())
    assert (target / "model.bin").read_bytes() == f"{manifest['writer']}-{manifest['round']}".encode() * 1000
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.bin"]
    assert _partials(tmp_path) == []


def test_engine_moved_aside_by_a_killed_build_is_put_back(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    # A build killed between its two renames: the old engine moved aside, the new one not yet in place.
    aside = tmp_path / f".engine.partial-{dead_pid}-x-old-12345"
    aside.mkdir()
    (aside / "manifest.json").write_text('{"the": "old engine"}')
    remove_stale_partials(tmp_path)
    assert (tmp_path / "engine" / "manifest.json").read_text() == '{"the": "old engine"}'
    assert _partials(tmp_path) == []
    # A stale aside whose target exists again is just removed.
    aside.mkdir()
    remove_stale_partials(tmp_path)
    assert not aside.exists() and (tmp_path / "engine" / "manifest.json").is_file()


def test_job_token_names_the_temporaries_of_a_job(tmp_path, monkeypatch):
    from engine_builder.files import partial_owner, remove_job_partials

    monkeypatch.setenv("PTQSEG_JOB_TOKEN", "slicer_job_7")
    tmp = temporary_dir_for(tmp_path / "engine")
    assert partial_owner(tmp) == (os.getpid(), "slicer_job_7")
    monkeypatch.setenv("PTQSEG_JOB_TOKEN", "other")
    other = temporary_dir_for(tmp_path / "engine")
    assert remove_job_partials(tmp_path, "slicer_job_7") == [tmp]
    assert not tmp.exists() and other.exists()
