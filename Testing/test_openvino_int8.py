"""The OpenVINO INT8 engine is really INT8, and with the shipped demo weights it agrees with FP32.

Covers: the saved INT8 model holds int8 weight constants that carry most of the weight bytes (the FP32 engine
holds none); the compiled model's runtime graph executes convolutions in i8/u8 (what really runs, not only the
file); the INT8 weights file is at most 0.26x the FP32
one's (the whole engine directory, graph text included, 0.33x); the INT8 engine is faster per window
than the FP32 one; whole-volume ``segment_volume`` with the INT8 engine agrees with the FP32 engine on >= 98% of
voxels (and per label) on phantoms and on a real CT from ../shared/data (skipped when absent). The engines
are built once per session from the SHIPPED demo weights: if those are missing the tests FAIL. Nothing is
mocked.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from conftest import shared_data
from engine_builder.agreement import compare_labels, min_voxels
from engine_builder.inference import segment_volume
from engine_builder.io import Volume, read_volume
from engine_builder.phantom import make_phantom


def _constant_bytes(model_xml: Path) -> tuple[Counter, Counter]:
    """Bytes of Constant nodes per element type: all constants, and those feeding (de)convolution weights."""
    model = ov.Core().read_model(str(model_xml))
    total, weights = Counter(), Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        element = op.get_output_element_type(0)
        size = element.size * int(np.prod(list(op.get_output_shape(0))))
        total[element.get_type_name()] += size
        if size >= 4096:  # weight tensors, not scales and shapes
            weights[element.get_type_name()] += size
    return total, weights


def test_int8_file_holds_int8_weights(int8_build, fp32_build):
    total, weights = _constant_bytes(int8_build.engine_dir / "model.xml")
    assert total["i8"] > 0
    assert weights["i8"] >= 0.9 * sum(weights.values()), weights
    assert total["i8"] >= 0.9 * sum(total.values()), total
    fp32_total, _ = _constant_bytes(fp32_build.engine_dir / "model.xml")
    assert fp32_total["i8"] == 0 and fp32_total["f32"] > 4 * total["i8"] * 0.9


def test_int8_runs_int8_convolutions(int8_engine, fp32_engine):
    engine, _, manifest = int8_engine
    report = engine.runtime_report()
    convs = report["convolutions_by_precision"]
    int8_convs = convs.get("i8", 0) + convs.get("u8", 0)
    assert int8_convs > 0 and int8_convs >= 0.75 * sum(convs.values()), convs
    assert manifest["runs_as"]["convolutions_by_precision"] == convs
    # Independently of runtime_report: walk the compiled model's runtime graph ourselves.
    precisions = Counter()
    for op in engine.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            precisions[info["runtimePrecision"].astype(str)] += 1
    # Every convolution runs int8, the decoder's transposed ones too (their exact sub-pixel form, rewrite.py),
    # and the manifest's kept_in_float says the same thing the compiled engine does.
    assert precisions["u8"] + precisions["i8"] >= 18 and set(precisions) <= {"u8", "i8"}, precisions
    assert manifest["kept_in_float"] == [] and engine.kept_in_float() == []
    fp32_convs = fp32_engine[0].runtime_report()["convolutions_by_precision"]
    assert set(fp32_convs) == {"f32"} and fp32_convs["f32"] == 18  # 15 convolutions + 3 transposed ones


def test_manifest_and_info_report_the_int8_share_of_convolution_time(int8_build, fp32_build):
    """The build profiles one calibration window (OpenVINO PERF_COUNT): by time, not by count, how much of the
    convolution work runs in int8 kernels; ``ptqseg info`` says it (the Slicer panel: test_slicer_logic)."""
    from conftest import run_cli
    from engine_builder.describe import describe_manifest

    runs_as = int8_build.manifest["runs_as"]
    share, profile = runs_as["int8_conv_time_share"], runs_as["profile"]
    assert 0.5 <= share <= 1, runs_as  # every convolution of the sub-pixel INT8 graph is quantized
    assert 0 < profile["conv_ms"] <= profile["window_ms"] and profile["by_layer_type"]
    assert fp32_build.manifest["runs_as"]["int8_conv_time_share"] == 0
    line = f"{share:.0%} of convolution time in int8 kernels"
    assert line in describe_manifest(int8_build.manifest)
    assert "of convolution time" not in describe_manifest(fp32_build.manifest)
    info = run_cli("info", str(int8_build.engine_dir))
    assert info.returncode == 0 and line in info.stdout, info.stderr


def test_int8_engine_is_about_a_quarter_of_fp32(int8_build, fp32_build):
    int8_bytes = sum(f.stat().st_size for f in int8_build.engine_dir.iterdir()
                     if f.name != "manifest.json" and not f.name.startswith("reference."))  # the --verify reference
    fp32_bytes = sum(f.stat().st_size for f in fp32_build.engine_dir.iterdir() if f.name != "manifest.json")
    assert int8_build.manifest["sizes"]["engine_bytes"] == int8_bytes
    assert fp32_build.manifest["sizes"]["engine_bytes"] == fp32_bytes
    # The weights file is int8; the graph text (model.xml) is not, and the sub-pixel form's per-phase convolutions
    # make it ~0.37 MB, about a quarter of this small network's INT8 engine: hence 0.33x for the whole directory
    # (0.287x before the rewrite), while the weights alone must come close to 1/4.
    weights = (int8_build.engine_dir / "model.bin").stat().st_size, (fp32_build.engine_dir / "model.bin").stat().st_size
    assert weights[0] <= 0.26 * weights[1], f"INT8 weights {weights[0]} B vs FP32 {weights[1]} B"
    assert int8_bytes <= 0.33 * fp32_bytes, f"INT8 {int8_bytes} B vs FP32 {fp32_bytes} B ({int8_bytes / fp32_bytes:.3f}x)"


def test_int8_window_is_faster_than_fp32(int8_engine, fp32_engine):
    window = np.random.default_rng(0).random((1, 1, 96, 96, 96), dtype=np.float32)

    def best_of(engine, n=3):
        engine.infer(window)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            engine.infer(window)
            times.append(time.perf_counter() - start)
        return min(times)

    assert best_of(int8_engine[0]) < best_of(fp32_engine[0])


def _compare(volume: Volume, int8_engine, fp32_engine, min_foreground: float, min_dice: float) -> dict:
    """Whole-volume INT8 vs FP32 label maps: foreground agreement, and the Dice of every label of at least 1 mL
    (kidneys and stomach included), with the figures printed for the log."""
    engine8, spec, manifest8 = int8_engine
    engine32, _, manifest32 = fp32_engine
    assert manifest8["weights"] == manifest32["weights"], "the two engines were built from different weight files"
    seg8 = segment_volume(volume, engine8, spec)
    seg32 = segment_volume(volume, engine32, spec)
    for seg in (seg8, seg32):
        assert seg.labels.shape == volume.shape
        np.testing.assert_array_equal(seg.labels.affine, volume.affine)
    reference = seg32.labels.array
    assert (reference > 0).mean() > 0.01, "the FP32 engine finds no organ: are the shipped weights trained?"
    figures = compare_labels(reference, seg8.labels.array, spec.label_names, min_voxels(volume.spacing_mm))
    print({name: round(entry["dice"], 3) for name, entry in figures["dice"].items()}, figures["foreground_agreement"])
    assert figures["foreground_agreement"] >= min_foreground, figures
    counted = {name: entry for name, entry in figures["dice"].items() if entry["fp32_voxels"] >= min_voxels(volume.spacing_mm)}
    assert len(counted) >= 3, f"too few labels of 1 mL or more to judge: {figures['dice']}"
    for name, entry in counted.items():
        assert entry["dice"] >= min_dice, f"{name} ({entry['fp32_voxels']} voxels): Dice INT8 vs FP32 {entry['dice']:.3f}"
    return figures


@pytest.mark.parametrize("seed", [0, 7])
def test_int8_agrees_with_fp32_on_phantom(seed, int8_engine, fp32_engine):
    hu, _, affine = make_phantom(seed)
    # Phantom organs are small (the kidneys ~800 voxels): a one-voxel shell is ~15 % of them, hence 0.80 there.
    _compare(Volume(hu, affine), int8_engine, fp32_engine, min_foreground=0.97, min_dice=0.80)


def test_int8_agrees_with_fp32_on_real_ct(int8_engine, fp32_engine):
    """A real CT the calibration (phantoms) never saw; it is a training volume of the demo model."""
    volume = read_volume(shared_data("totalsegmentator/example_ct.nii.gz"))
    _compare(volume, int8_engine, fp32_engine, min_foreground=0.95, min_dice=0.85)


def test_int8_engine_spends_its_convolution_time_in_int8_kernels(int8_engine, fp32_engine):
    """By time, not by count (OpenVINO PERF_COUNT): with the transposed convolutions in their sub-pixel form,
    nearly all convolution time runs in int8 kernels; the FP32 engine's runs in none."""
    window = np.random.default_rng(1).random((1, 1, 96, 96, 96), dtype=np.float32) * 0.6
    profile = int8_engine[0].profile(window, repeats=1)
    assert profile["conv_ms"] > 0 and profile["int8_conv_share"] >= 0.9, profile
    assert fp32_engine[0].profile(window, repeats=1)["int8_conv_share"] == 0.0
