"""INT8 you can trust: the held-out-volume estimate, accuracy control by default, and the per-scan check.

- The build's estimate holds whole calibration volumes out and segments them whole (test_artifact checks its
  figures on the session engine); with one calibration volume there is no estimate, and the manifest, the CLI
  and ``describe_accuracy`` say why instead of printing a number.
- On a calibration folder built to make them differ (two clean phantoms and one with scanner noise of 300 HU),
  the estimate catches what the old patch estimate missed: held-out patches of the calibration volumes
  themselves agree on nearly every voxel, while the noisy volume, held out, agrees much less.
- A threshold the recipe cannot reach switches accuracy control on: the manifest records what stayed in
  float (and it is what the compiled engine really runs in f32), the estimate before and after, and the cost
  per window.
- ``ptqseg segment --verify N`` compares N windows of the scan with the FP32 reference the engine carries, on
  each window's core, reports it (stdout, JSON, the ``verify`` stage time), and refuses on an FP32 engine.
Real phantoms, real OpenVINO engines, nothing mocked.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from conftest import PHANTOM_SHAPE, PHANTOM_SPACING, assert_clean_error, run_cli, write_phantom
from engine_builder.agreement import compare_labels
from engine_builder.describe import describe_accuracy
from engine_builder.io import Volume, write_volume
from engine_builder.phantom import make_phantom
from engine_builder.pipeline import BuildRequest, build_engine, open_engine
from engine_builder.verify import choose_windows


def test_choose_windows_takes_foreground_first_and_spreads_out():
    labels = np.zeros((200, 100, 100), np.uint8)
    labels[10:60, 10:60, 10:60] = 1  # a big organ near the start
    labels[150:170, 40:60, 40:60] = 2  # a small one far away
    starts = choose_windows(labels, (64, 64, 64), 3)
    assert starts[0][0] < 40  # the window with most foreground first
    assert starts[1][0] >= 100  # the next window covers the far organ, not the first organ again
    assert len(starts) == 2  # everything is covered: no third window on background
    core = (slice(16, 48),) * 3  # counted on cores, the big organ needs more than one window
    assert len(choose_windows(labels, (64, 64, 64), 4, core)) == 4
    assert choose_windows(np.zeros((50, 50, 50), np.uint8), (64, 64, 64), 4) == [(0, 0, 0)]


def test_one_calibration_volume_gives_no_estimate_and_says_why(tmp_path, cache_root):
    write_phantom(tmp_path / "calib" / "only.nii.gz", 31)
    result = build_engine(BuildRequest(model="demo", calib=tmp_path / "calib", patches_per_volume=2, progress=False),
                          out=tmp_path / "engine", cache_root=cache_root)
    accuracy = result.manifest["accuracy"]
    assert accuracy["kind"] == "unavailable" and accuracy["passed"] is None
    assert "1 usable volume" in accuracy["reason"] and "at least 2" in accuracy["reason"]
    assert describe_accuracy(accuracy).startswith("not measured: the calibration folder has 1 usable volume")
    assert result.manifest["accuracy_control"] is None  # nothing to act on
    info = run_cli("info", str(tmp_path / "engine"))
    assert "agreement  not measured: the calibration folder has 1 usable volume" in info.stdout


def _noisy_phantom(path, seed: int, sigma_hu: float) -> None:
    hu, _, affine = make_phantom(seed, shape=PHANTOM_SHAPE, spacing_mm=PHANTOM_SPACING)
    noise = np.random.default_rng(seed).normal(0.0, sigma_hu, hu.shape)
    write_volume(Volume(np.clip(hu + noise, -1024, 3000).astype(np.int16), affine), path)


def test_estimate_catches_what_calibration_patches_miss(tmp_path, cache_root):
    folder = tmp_path / "calib"
    write_phantom(folder / "a_clean.nii.gz", 11, PHANTOM_SHAPE, PHANTOM_SPACING)
    write_phantom(folder / "b_clean.nii.gz", 12, PHANTOM_SHAPE, PHANTOM_SPACING)
    _noisy_phantom(folder / "c_noisy.nii.gz", 13, 300.0)
    result = build_engine(BuildRequest(model="demo", calib=folder, patches_per_volume=4, accuracy_control="off",
                                       progress=False), out=tmp_path / "engine", cache_root=cache_root)
    per_volume = {v["volume"]: v["foreground_agreement"] for v in result.manifest["accuracy"]["volumes"]}
    # The old estimate: the final engine on patches of its own calibration volumes.
    engine, spec, _ = open_engine(tmp_path / "engine")
    fp32, _, _ = open_engine(build_engine(BuildRequest(model="demo", calib=folder, precision="fp32", patches_per_volume=4,
                                                       progress=False), out=tmp_path / "fp32", cache_root=cache_root).engine_dir)
    from engine_builder.calibration import build_calibration_set

    patches = build_calibration_set(folder, spec, 4, seed=1, progress=False).patches
    patch_figures = compare_labels(np.concatenate([fp32.infer_labels(p[None]) for p in patches]),
                                   np.concatenate([engine.infer_labels(p[None]) for p in patches]), spec.label_names)
    print(per_volume, patch_figures["foreground_agreement"])
    assert patch_figures["foreground_agreement"] >= 0.97
    assert per_volume["c_noisy.nii.gz"] <= patch_figures["foreground_agreement"] - 0.025  # measured 0.949 vs 0.986
    assert per_volume["c_noisy.nii.gz"] < min(per_volume["a_clean.nii.gz"], per_volume["b_clean.nii.gz"])


def test_unreachable_threshold_switches_accuracy_control_on(tmp_path, calib_dir, cache_root):
    # Two reverted operations at most: the mechanics are the same as the default 8, at a quarter of the build time.
    result = build_engine(BuildRequest(model="demo", calib=calib_dir, patches_per_volume=1, min_agreement=0.9995,
                                       max_reverted=2, progress=False), out=tmp_path / "engine", cache_root=cache_root)
    manifest = result.manifest
    control = manifest["accuracy_control"]
    assert control is not None and control["max_drop"] == 0.005
    assert control["kept_in_float"], "accuracy control kept nothing in float"
    assert manifest["kept_in_float"] == control["kept_in_float"]
    before, after = control["estimate_before"], manifest["accuracy"]
    assert before["kind"] == after["kind"] == "held_out_volumes"
    assert after["foreground_agreement"] >= before["foreground_agreement"] - 0.002
    assert control["window_ms_before"] > 0 and control["window_ms_after"] > 0
    # What the manifest says stayed in float is what the compiled engine runs in f32.
    engine, _, _ = open_engine(tmp_path / "engine")
    f32 = [op.get_friendly_name() for op in engine.compiled.get_runtime_model().get_ordered_ops()
           if op.get_rt_info()["layerType"].astype(str) == "Convolution"
           and op.get_rt_info()["runtimePrecision"].astype(str) == "f32"]
    runtime = Counter(name.split("/")[0] for name in f32)
    for name in control["kept_in_float"]:
        assert any(name in op or op in name for op in f32), (name, sorted(runtime))
    assert len(f32) >= len(control["kept_in_float"])


def test_verify_compares_this_scan_with_the_fp32_reference(tmp_path, int8_build, fp32_build, small_volumes):
    output, report = tmp_path / "seg.nii.gz", tmp_path / "seg.json"
    result = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(small_volumes / "case_22.nii.gz"),
                     "--output", str(output), "--verify", "3", "--json", str(report), "--quiet")
    assert result.returncode == 0, result.stderr
    figures = json.loads(report.read_text())
    verification = figures["verification"]
    assert verification["windows"] >= 1 and verification["seconds"] > 0
    threshold = int8_build.manifest["accuracy"]["min_agreement"]  # the build's threshold unless --min-agreement
    assert verification["min_agreement"] == threshold
    assert verification["foreground_agreement"] >= 0.95
    assert verification["passed"] is (verification["foreground_agreement"] >= threshold)
    assert verification["voxels"] > 1000
    assert "verify" in figures["latency_ms"] and figures["latency_ms"]["verify"] > 0
    said = result.stdout if verification["passed"] else result.stderr  # a warning below the threshold
    assert "seg.nii.gz: INT8 gives the FP32 label to" in said
    refused = run_cli("segment", "--engine", str(fp32_build.engine_dir), "--input", str(small_volumes / "case_22.nii.gz"),
                      "--output", str(tmp_path / "x.nii.gz"), "--verify", "2")
    assert_clean_error(refused, "--verify", "fp32 engine")
    assert not (tmp_path / "x.nii.gz").exists()


def test_verify_warns_below_its_threshold(tmp_path, int8_build, small_volumes):
    result = run_cli("segment", "--engine", str(int8_build.engine_dir), "--input", str(small_volumes / "case_21.nii.gz"),
                     "--output", str(tmp_path / "seg.nii.gz"), "--verify", "2", "--min-agreement", "1.0", "--quiet")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "INT8 gives the FP32 label" in line]
    assert warning and "below 100%" in warning[0] and warning[0].startswith("WARNING")


@pytest.mark.parametrize("flag, value, fragment", [("--preset", "magic", "unknown quantization preset 'magic'"),
                                                   ("--min-agreement", "1.5", "--min-agreement")])
def test_bad_recipe_options_are_one_line(tmp_path, calib_dir, flag, value, fragment):
    result = run_cli("build", "--model", "demo", "--calib", str(calib_dir), "--out", str(tmp_path / "e"), flag, value)
    assert_clean_error(result, fragment)
    assert not (tmp_path / "e").exists()


def test_exclusive_boxes_are_covered_by_their_window_alone():
    from engine_builder.sliding_window import window_starts
    from engine_builder.verify import exclusive_boxes

    shape, roi = (240, 183, 221), (96, 96, 96)
    boxes = exclusive_boxes(shape, roi, 0.25)
    cover = np.zeros(shape, np.int32)
    for start in window_starts(shape, roi, 0.25):
        cover[tuple(slice(s, s + r) for s, r in zip(start, roi))] += 1
    assert len(boxes) == 18  # 27 windows; the clamped last start on the 183-voxel axis leaves its neighbour nothing
    for start, box in boxes:
        assert all(s <= b.start < b.stop <= s + r for s, b, r in zip(start, box, roi))
        assert (cover[box] == 1).all()


def test_stitched_labels_on_exclusive_boxes_are_the_windows_own(int8_engine):
    """Why --verify need not run the INT8 engine again: where no other window overlaps, the stitched label map is
    exactly that window's own argmax (a real phantom through the session's INT8 engine)."""
    from engine_builder.inference import predict_labels
    from engine_builder.preprocess import preprocess
    from engine_builder.timing import StageTimer
    from engine_builder.verify import exclusive_boxes

    engine, spec, _ = int8_engine
    hu, _, affine = make_phantom(3, shape=(200, 160, 120), spacing_mm=(1.0, 1.0, 2.0))
    image = np.asarray(preprocess(Volume(hu, affine), spec).image, dtype=np.float32)
    labels = np.asarray(predict_labels(image, engine, spec, StageTimer()))
    boxes = exclusive_boxes(labels.shape, spec.roi_size, spec.overlap)
    assert boxes and all(n >= r for n, r in zip(labels.shape, spec.roi_size))
    for start, box in boxes:
        window = image[(slice(None), *(slice(s, s + r) for s, r in zip(start, spec.roi_size)))][None]
        own = engine.infer_labels(window)[0][tuple(slice(b.start - s, b.stop - s) for b, s in zip(box, start))]
        assert np.array_equal(own, labels[box]), start
