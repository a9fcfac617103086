"""An engine directory is data, not code: tampered or damaged engines give one clear line, never run anything.

Every case copies a real engine built in this session (OpenVINO INT8 of the demo model; a torch FP32 engine for
the code-execution case), changes one thing as an attacker or a broken disk would, and runs ``ptqseg segment``
and ``ptqseg info`` on it: exit code 2, exactly one ``ptqseg: error:`` line naming the engine's problem (the
field, or "damaged engine"), no traceback, and no output file. The ``os.system`` manifest is run in a fresh
process (as a user would) and must leave no marker file behind. Most cases call ``cli.main`` in this process
(the same code path, minus the 5 s of imports per case); nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from engine_builder import cli
from engine_builder.artifact import read_manifest
from engine_builder.files import file_sha256


def run_main(capsys, *argv: str) -> subprocess.CompletedProcess:
    """``ptqseg ARGV`` in this process, as a CompletedProcess (for ``assert_clean_error``)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.fixture
def engine_copy(int8_build, tmp_path) -> Path:
    target = tmp_path / "engine"
    shutil.copytree(int8_build.engine_dir, target)
    return target


@pytest.fixture(scope="module")
def torch_engine(tmp_path_factory, calib_dir, cache_root) -> Path:
    from engine_builder.pipeline import BuildRequest, build_engine

    out = tmp_path_factory.mktemp("torch") / "demo_torch"
    build_engine(BuildRequest(model="demo", backend="torch", precision="fp32", progress=False), out=out,
                 cache_root=cache_root)
    return out


def _edit_manifest(engine: Path, change) -> None:
    path = engine / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest = change(manifest)
    path.write_text(json.dumps(manifest))


def _rehash(engine: Path, name: str) -> None:
    """What a careful tamperer does: fix the recorded hash, so only the content check can catch it."""
    _edit_manifest(engine, lambda m: {**m, "file_sha256": {**m["file_sha256"], name: file_sha256(engine / name)}})


def _segment_and_info(capsys, engine: Path, volume: Path, tmp_path: Path, *fragments: str) -> None:
    output = tmp_path / "labels.nii.gz"
    result = run_main(capsys, "segment", "--engine", str(engine), "--input", str(volume), "--output", str(output), "--quiet")
    assert_clean_error(result, *fragments)
    assert not output.exists()
    assert_clean_error(run_main(capsys, "info", str(engine)), *fragments)


def test_manifest_naming_os_system_runs_nothing(torch_engine, tmp_path, small_volumes):
    engine = tmp_path / "evil"
    shutil.copytree(torch_engine, engine)
    marker = tmp_path / "PWNED"
    _edit_manifest(engine, lambda m: {**m, "spec": {**m["spec"], "architecture": "os.system",
                                                   "arch_args": {"command": f"touch {marker}"}}})
    for argv in (("segment", "--engine", str(engine), "--input", str(small_volumes / "case_21.nii.gz"),
                  "--output", str(tmp_path / "seg.nii.gz")), ("info", str(engine))):
        result = run_cli(*argv)
        assert_clean_error(result, "architecture", "os.system", "not an allow-listed")
        assert not marker.exists(), "the manifest's architecture was imported and called"
    assert not (tmp_path / "seg.nii.gz").exists()


def test_untampered_torch_engine_still_segments(torch_engine, tmp_path, small_volumes, capsys):
    result = run_main(capsys, "segment", "--engine", str(torch_engine), "--input", str(small_volumes / "case_21.nii.gz"),
                      "--output", str(tmp_path / "seg.nii.gz"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seg.nii.gz").is_file()


def _drop(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


def _spec(**change):
    return lambda m: {**m, "spec": {**m["spec"], **change}}


MANIFEST_CASES = {
    "no backend": (_drop("backend"), ["field 'backend' is missing"]),
    "no spec": (_drop("spec"), ["field 'spec' is missing"]),
    "no precision": (_drop("precision"), ["field 'precision' is missing"]),
    "no batch_size": (_drop("batch_size"), ["field 'batch_size' is missing"]),
    "no labels": (lambda m: {**m, "spec": {k: v for k, v in m["spec"].items() if k != "labels"}}, ["spec.labels", "missing"]),
    "a list": (lambda m: [m], ["must be an object"]),
    "extra spec key": (_spec(post_hook="import os"), ["unknown field", "post_hook"]),
    "batch_size abc": (lambda m: {**m, "batch_size": "abc"}, ["batch_size", "must be an integer"]),
    "spacing 0": (_spec(spacing_mm=[0, 1.5, 1.5]), ["spec.spacing_mm[0]", "must be above 0"]),
    "unknown backend": (lambda m: {**m, "backend": "../../evil"}, ["field 'backend'", "not one of"]),
    "file outside the engine": (lambda m: {**m, "files": ["../model.xml", "model.bin"]}, ["files[0]", "plain file"]),
    "label count vs network": (_spec(labels=[{"value": 0, "name": "background"}, {"value": 1, "name": "liver"}]),
                               ["spec.labels", "output channels"]),
    "NaN overlap": (_spec(overlap=float("nan")), ["spec.overlap", "finite number"]),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_tampered_manifest_is_one_line(case, engine_copy, small_volumes, tmp_path, capsys):
    change, fragments = MANIFEST_CASES[case]
    _edit_manifest(engine_copy, change)
    _segment_and_info(capsys, engine_copy, small_volumes / "case_21.nii.gz", tmp_path, str(engine_copy), *fragments)


def test_roi_that_does_not_match_the_graph(engine_copy, small_volumes, tmp_path, capsys):
    # A consistent manifest (input_shape follows the ROI) whose graph is another size: caught at load.
    _edit_manifest(engine_copy, lambda m: {**m, "input_shape": [1, 1, 64, 64, 64],
                                           "spec": {**m["spec"], "roi_size": [64, 64, 64]}})
    output = tmp_path / "labels.nii.gz"
    result = run_main(capsys, "segment", "--engine", str(engine_copy), "--input", str(small_volumes / "case_21.nii.gz"),
                      "--output", str(output), "--quiet")
    assert_clean_error(result, "graph's input", "[1, 1, 64, 64, 64]", "rebuild")
    assert not output.exists()
    # An inconsistent one is refused by the schema already.
    _edit_manifest(engine_copy, lambda m: {**m, "input_shape": [1, 1, 96, 96, 96]})
    _segment_and_info(capsys, engine_copy, small_volumes / "case_21.nii.gz", tmp_path, "input_shape", "roi_size")


FILE_CASES = {
    "garbage model.xml": (lambda e: (e / "model.xml").write_text("<not really xml"), False),
    "missing model.xml": (lambda e: (e / "model.xml").unlink(), False),
    "truncated model.bin": (lambda e: (e / "model.bin").write_bytes((e / "model.bin").read_bytes()[:1000]), False),
    "empty model.bin": (lambda e: (e / "model.bin").write_bytes(b""), False),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_damaged_engine_file_is_one_line(case, engine_copy, small_volumes, tmp_path, capsys):
    damage, _ = FILE_CASES[case]
    damage(engine_copy)
    _segment_and_info(capsys, engine_copy, small_volumes / "case_21.nii.gz", tmp_path, "damaged engine", "rebuild")


@pytest.mark.parametrize("name", ["model.xml", "model.bin"])
def test_damaged_file_with_a_recomputed_hash_is_one_line(name, engine_copy, small_volumes, tmp_path, capsys):
    path = engine_copy / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    _rehash(engine_copy, name)
    read_manifest(engine_copy)  # the manifest itself is sound now
    output = tmp_path / "labels.nii.gz"
    result = run_main(capsys, "segment", "--engine", str(engine_copy), "--input", str(small_volumes / "case_21.nii.gz"),
                      "--output", str(output), "--quiet")
    assert_clean_error(result, str(engine_copy))
    assert not output.exists()


def test_engine_of_an_older_format_asks_for_a_rebuild(engine_copy, capsys):
    _edit_manifest(engine_copy, lambda m: {**m, "format_version": 1})
    assert_clean_error(run_main(capsys, "info", str(engine_copy)), "another engine format", "rebuild")


def test_manifest_that_is_not_json(engine_copy, capsys):
    (engine_copy / "manifest.json").write_bytes(b"\xff\xfe{ not json")
    assert_clean_error(run_main(capsys, "info", str(engine_copy)), "manifest.json is damaged", "rebuild")
