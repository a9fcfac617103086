"""``ptqseg demo``: the whole job on the shipped demo model, with figures a person can compare.

Makes (or takes) a CT and a calibration folder, builds an FP32 and an INT8 OpenVINO engine of the demo
model, times one window on torch FP32, OpenVINO FP32 and OpenVINO INT8, segments the volume file-in to
file-out with both engines, and reports sizes, per-stage latency and INT8-vs-FP32 agreement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .agreement import compare_labels
from .backends.torch_backend import TorchEngine
from .describe import describe_accuracy, describe_verification
from .evaluate import dice_per_label, markdown_table, measure_ms
from .inference import segment_file
from .io import Volume, write_volume
from .pipeline import BuildRequest, build_engine, open_engine
from .verify import scan_check
from .weights import load_network, resolve_weights

DEMO_CALIBRATION_SEEDS = (101, 102, 103, 104)
DEMO_VERIFY_WINDOWS = 4


def make_phantom_files(folder: Path, seeds, prefix: str = "phantom") -> list[Path]:
    """Write phantom CTs (and ``*_labels``) as NIfTI into ``folder``; existing files are kept."""
    from .phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"{prefix}_{seed:03d}.nii.gz"
        if not path.exists():
            hu, labels, affine = make_phantom(seed)
            write_volume(Volume(hu, affine), path)
        paths.append(path)
    return paths


def run_demo(workdir: str | Path, input_path: str | Path | None = None, calib: str | Path | None = None,
             repeats: int = 5, threads: int | None = None, progress: bool = True) -> dict:
    """Run the demo in ``workdir``; print a summary table and return the figures (JSON-ready)."""
    from .phantom import make_phantom

    workdir = Path(workdir)
    truth = None
    if input_path is None:
        hu, truth, affine = make_phantom(0)
        input_path = workdir / "phantom_ct.nii.gz"
        write_volume(Volume(hu, affine), input_path)
        write_volume(Volume(truth, affine), workdir / "phantom_truth.nii.gz")
    if calib is None:
        calib = workdir / "calibration"
        make_phantom_files(Path(calib), DEMO_CALIBRATION_SEEDS)

    cache = workdir / "cache"
    common = dict(model="demo", calib=calib, threads=threads, progress=progress)
    int8 = build_engine(BuildRequest(precision="int8", **common), out=workdir / "engine_int8", cache_root=cache)
    fp32 = build_engine(BuildRequest(precision="fp32", **common), out=workdir / "engine_fp32", cache_root=cache)

    engine8, spec, _ = open_engine(int8.engine_dir, threads=threads)
    engine32, _, _ = open_engine(fp32.engine_dir, threads=threads)
    if threads:
        torch.set_num_threads(threads)
    reference = TorchEngine(load_network(spec, resolve_weights(spec)), "fp32", 1)  # what a user runs today
    window = _demo_window(calib, spec, cache)
    latency = {name: measure_ms(lambda e=e: e.infer(window), repeats)["median"]
               for name, e in (("torch_fp32", reference), ("openvino_fp32", engine32), ("openvino_int8", engine8))}

    check = scan_check(int8.engine_dir, engine8, spec, int8.manifest, DEMO_VERIFY_WINDOWS, threads=threads)
    seg8 = segment_file(input_path, workdir / "segmentation_int8.nii.gz", engine8, spec, progress=progress, check=check)
    seg32 = segment_file(input_path, workdir / "segmentation_fp32.nii.gz", engine32, spec, progress=False)
    volume_ml = float(abs(np.linalg.det(seg8.labels.affine[:3, :3]))) / 1000.0
    agreement = compare_labels(seg32.labels.array, seg8.labels.array, spec.label_names, max(1, int(1.0 / volume_ml)))
    figures = {
        "model": spec.name,
        "input": str(input_path),
        "fp32_size_bytes": fp32.manifest["sizes"]["engine_bytes"],
        "int8_size_bytes": int8.manifest["sizes"]["engine_bytes"],
        "int8_vs_fp32_on_this_volume": agreement,
        "held_out_estimate": int8.manifest["accuracy"],
        "verification": seg8.verification,
        "latency_ms": {**latency, "volume_int8_stages": seg8.timings_ms, "volume_int8_total": seg8.total_ms,
                       "volume_fp32_total": seg32.total_ms},
        "windows": seg8.windows,
        "int8_runs_as": int8.manifest["runs_as"],
        "kept_in_float": int8.manifest["kept_in_float"],
    }
    if truth is not None:
        figures["dice_int8_vs_phantom_truth"] = dice_per_label(truth, seg8.labels.array, spec.label_names)
    print(summary(figures))
    return figures


def _demo_window(calib, spec, cache: Path) -> np.ndarray:
    """The first held-out calibration patch, batch of 1: read from the set the builds above cached."""
    from .calibration import build_calibration_set

    request = BuildRequest(model=spec)
    calibration = build_calibration_set(calib, spec, request.patches_per_volume, seed=request.seed,
                                        cache_dir=cache / "calibration", progress=False)
    return calibration.volumes[-1].patches[:1]


def summary(figures: dict) -> str:
    """The table printed at the end of the demo."""
    latency = figures["latency_ms"]
    rows = [
        ["engine size (MB)", figures["fp32_size_bytes"] / 1e6, figures["int8_size_bytes"] / 1e6,
         f"{figures['int8_size_bytes'] / figures['fp32_size_bytes']:.2f}x"],
        ["one 96^3 window (ms), torch FP32 eager", latency["torch_fp32"], "", ""],
        ["one 96^3 window (ms), OpenVINO", latency["openvino_fp32"], latency["openvino_int8"],
         f"{latency['torch_fp32'] / latency['openvino_int8']:.1f}x vs torch, "
         f"{latency['openvino_fp32'] / latency['openvino_int8']:.1f}x vs OV FP32"],
        ["whole volume, file to file (ms)", latency["volume_fp32_total"], latency["volume_int8_total"],
         f"{figures['windows']} windows"],
    ]
    rows += [[f"  stage: {stage}", "", ms, ""] for stage, ms in latency["volume_int8_stages"].items()]
    agreement = figures["int8_vs_fp32_on_this_volume"]
    rows.append(["INT8 vs FP32 on this volume: foreground agreement", "", agreement["foreground_agreement"],
                 f"mean per-label Dice {agreement['mean_dice']:.3f}" if agreement["mean_dice"] is not None else ""])
    rows.append(["build-time estimate (calibration volumes held out)", "", "", describe_accuracy(figures["held_out_estimate"])])
    if figures.get("verification"):
        rows.append(["per-scan check (--verify)", "", "", describe_verification(figures["verification"])])
    truth = figures.get("dice_int8_vs_phantom_truth")
    if truth:
        rows.append(["INT8 Dice vs phantom truth (mean)", "", float(np.mean([v for v in truth.values() if v is not None])), ""])
    return markdown_table(["", "FP32", "INT8", "ratio / note"], rows)
