"""``ptqseg``: build INT8 engines, segment volumes, show manifests, run the demo and the benchmark.

Thin over ``pipeline``, ``inference`` and ``demo``; errors are one line and exit code 2 (a traceback
only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import PTQError, without_subject
from .progress import emit

log = logging.getLogger("ptqseg")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    level = logging.DEBUG if args.debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    for noisy in ("nncf", "openvino"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .progress import set_mode

    set_mode("off" if quiet and args.progress == "tqdm" else args.progress)
    try:
        status = int(args.func(args) or 0)
        emit("done", status=status)
        return status
    except PTQError as exc:
        if args.debug:
            raise
        return _fail(" ".join(str(exc).split()))
    except KeyboardInterrupt:
        print("ptqseg: interrupted (nothing half-written was kept)", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        return _fail("out of memory: close other programs, or lower --max-memory-gb so that large volumes are refused early")
    except Exception as exc:  # noqa: BLE001  a bug or an unforeseen input: one line, the traceback with --debug
        if args.debug:
            raise
        return _fail(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                     "(run again with --debug for the traceback, and please report it)")


def _fail(message: str) -> int:
    print(f"ptqseg: error: {message}", file=sys.stderr)
    emit("error", message=message)
    return 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptqseg", description="Real INT8 engines for 3D medical segmentation networks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--progress", choices=("tqdm", "json", "off"), default="tqdm",
                        help="progress bars (tqdm), JSON lines on stdout for a parent process (json), or none")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="calibrate on a folder of unlabeled volumes and build an engine")
    model = build.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="registry name (see 'ptqseg models')")
    model.add_argument("--onnx", help="your own ONNX graph (with --spec)")
    model.add_argument("--torchscript", help="your own TorchScript file (with --spec)")
    model.add_argument("--bundle", help="a MONAI model-zoo bundle: folder or .zip")
    model.add_argument("--nnunet", help="an nnU-Net v2 results folder: DatasetXXX_Name/<Trainer>__<Plans>__<configuration>")
    build.add_argument("--spec", help="spec file (JSON/YAML: roi_size, spacing_mm, intensity, labels, ...) for --onnx/--torchscript")
    build.add_argument("--fold", nargs="+", help="nnU-Net folds to use (numbers or 'all' for fold_all; default: every "
                                                 "fold present, logits averaged)")
    build.add_argument("--mirror", action="store_true", help="nnU-Net test-time mirroring (off by default: 8x the work)")
    build.add_argument("--weights", help="the model's weights: a state-dict file, a MONAI bundle folder or an nnU-Net "
                                         "folder, whichever the model's published checkpoint is (default: found on "
                                         "this machine, see 'ptqseg models')")
    build.add_argument("--download", action="store_true",
                       help="fetch the model's published weights (MONAI bundle, TotalSegmentator) when they are not here")
    build.add_argument("--calib", help="folder of unlabeled volumes (NIfTI, NRRD, DICOM), searched recursively")
    build.add_argument("--out", help="engine directory to write (default: the engine cache; the path is printed)")
    build.add_argument("--precision", default="int8", help="int8 (default), fp32, bf16 (openvino), fp16 (torch on CUDA)")
    build.add_argument("--backend", default="openvino", help="openvino (default, CPU) or torch")
    build.add_argument("--method", help="activation range estimator (openvino: minmax, mean_minmax, percentile, ...)")
    build.add_argument("--preset", help="openvino: mixed (default: asymmetric activations) or performance (symmetric)")
    build.add_argument("--bias-correction", default="fast", choices=("fast", "full", "none"), help="NNCF bias correction")
    build.add_argument("--sampling", default="body", choices=("body", "tissue", "fov"),
                       help="where calibration patches are centred: on the body (default), on soft tissue, anywhere")
    build.add_argument("--max-drop", type=float,
                       help="accuracy control: keep harmful layers in float until foreground agreement drops at most this")
    build.add_argument("--accuracy-control", default="auto", choices=("auto", "off"),
                       help="auto (default): when the held-out-volume estimate is below --min-agreement, rebuild "
                            "with accuracy control; off: never")
    build.add_argument("--keep-float", nargs="*", default=[], help="node names to leave unquantized")
    build.add_argument("--batch", type=int, default=1, help="windows per engine call (static batch)")
    build.add_argument("--patches", type=int, default=8, help="calibration patches per volume")
    build.add_argument("--min-agreement", type=float, default=0.98,
                       help="foreground agreement with FP32 on held-out calibration volumes that INT8 must reach")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--threads", type=int)
    build.add_argument("--device", default="cpu")
    build.add_argument("--cache", help="cache folder (default $PTQSEG_CACHE or ~/.cache/ptqsegment)")
    build.add_argument("--random-init", action="store_true", help="random weights (speed measurements only)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=cmd_build)

    segment = sub.add_parser("segment", help="segment a volume, a DICOM series or a folder with a built engine")
    segment.add_argument("--engine", required=True, help="engine directory from 'ptqseg build'")
    segment.add_argument("--input", required=True, help="volume file, DICOM series folder, or folder of volumes")
    segment.add_argument("--output", required=True, help="label file (.nii.gz, .nrrd, ...) or output folder")
    segment.add_argument("--threads", type=int)
    segment.add_argument("--device", default="cpu")
    segment.add_argument("--json", help="write timings and label volumes here")
    segment.add_argument("--verify", type=int, default=0, metavar="N",
                         help="after segmenting, run N windows of the scan through the FP32 reference too and report "
                              "INT8-vs-FP32 agreement for this scan (warns below --min-agreement)")
    segment.add_argument("--min-agreement", type=float,
                         help="threshold of --verify (default: the engine's build threshold, 0.98)")
    segment.add_argument("--series", help="DICOM folder with several series: the Series Instance UID to segment, or 'all'")
    segment.add_argument("--max-memory-gb", type=float,
                         help="refuse volumes whose resampled grid needs more memory (default: 8 GB or 80%% of RAM)")
    segment.add_argument("--quiet", action="store_true", help="no progress bars, only warnings and results")
    segment.set_defaults(func=cmd_segment)

    info = sub.add_parser("info", help="show an engine's manifest")
    info.add_argument("engine")
    info.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    info.set_defaults(func=cmd_info)

    models = sub.add_parser("models", help="list the model registry")
    models.set_defaults(func=cmd_models)

    capabilities = sub.add_parser("capabilities", help="which backends work here, their versions, the GPU, bf16 on the CPU")
    capabilities.add_argument("--json", action="store_true", help="one JSON object on one line")
    capabilities.set_defaults(func=cmd_capabilities)

    demo = sub.add_parser("demo", help="build FP32 and INT8 engines of the demo model and segment a volume")
    demo.add_argument("--input", help="a CT volume (default: a synthetic phantom)")
    demo.add_argument("--calib", help="calibration folder (default: synthetic phantoms)")
    demo.add_argument("--workdir", default="ptqseg-demo", help="where engines and outputs go")
    demo.add_argument("--repeats", type=int, default=5, help="repeats of the per-window timing")
    demo.add_argument("--json", help="write the figures here")
    demo.add_argument("--threads", type=int)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="torch FP32 vs OpenVINO FP32/bf16/INT8, per window and per whole volume")
    bench.add_argument("--models", nargs="*", default=["demo", "unet", "segresnet"])
    bench.add_argument("--volume", help="whole-volume input (default: the chest CT in ../shared/data if present)")
    bench.add_argument("--calib", help="calibration folder (default: synthetic phantoms)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--volume-repeats", type=int, default=3)
    bench.add_argument("--out", default="docs/benchmarks", help="folder for the markdown table and the chart")
    bench.add_argument("--json", help="write the figures here")
    bench.add_argument("--threads", type=int)
    bench.set_defaults(func=cmd_bench)
    return parser


def build_model_argument(args):
    """``--model NAME`` or the ``CustomModel`` that ``--onnx/--torchscript/--bundle/--nnunet`` name."""
    from .model_source import CUSTOM_KINDS, CustomModel

    kind = next((k for k in CUSTOM_KINDS if getattr(args, k, None)), None)
    if kind is None:
        for flag in ("spec", "fold"):
            if getattr(args, flag):
                raise PTQError(f"--{flag} belongs to a custom model (--onnx, --torchscript, --nnunet), not --model")
        return args.model
    if args.spec and kind in ("bundle", "nnunet"):
        raise PTQError(f"--spec is for --onnx and --torchscript; a {kind} model carries its own spec")
    if (args.fold or args.mirror) and kind != "nnunet":
        raise PTQError("--fold and --mirror are for --nnunet models")
    return CustomModel(kind, getattr(args, kind), spec_file=args.spec, folds=tuple(args.fold) if args.fold else None,
                       mirror=args.mirror)


def cmd_build(args) -> int:
    from .describe import describe_manifest
    from .pipeline import BuildRequest, build_engine

    request = BuildRequest(model=build_model_argument(args), calib=args.calib, weights=args.weights, backend=args.backend,
                           precision=args.precision, method=args.method, preset=args.preset,
                           bias_correction=args.bias_correction, sampling=args.sampling, max_drop=args.max_drop,
                           accuracy_control=args.accuracy_control, batch_size=args.batch,
                           patches_per_volume=args.patches, seed=args.seed, min_agreement=args.min_agreement,
                           keep_float=tuple(args.keep_float), threads=args.threads, device=args.device,
                           allow_random_weights=args.random_init, download=args.download, progress=not args.quiet)
    result = build_engine(request, out=args.out, cache_root=args.cache)
    emit("result", engine_dir=str(result.engine_dir), cache_hit=result.cache_hit, warnings=result.warnings)
    print(("reused cached engine " if result.cache_hit else "built engine ") + str(result.engine_dir))
    print(describe_manifest(result.manifest))
    return 0


def cmd_segment(args) -> int:
    from .engines import open_engine
    from .outputs import check_label_file, check_not_an_input, check_output_folder, check_writable_file
    from .sources import source_files

    source, target = Path(args.input), Path(args.output)
    if not source.exists():
        raise PTQError(f"input not found: {source}")
    budget = None if args.max_memory_gb is None else int(args.max_memory_gb * 2**30)
    jobs = _file_jobs(source, target, args.series)  # None: a folder of volumes
    if jobs is None:
        check_output_folder(target, source)
    else:
        for job_source, output in jobs:
            check_label_file(output, source_files(job_source))
    if args.json:
        check_not_an_input(Path(args.json), [source] if jobs is None else source_files(jobs[0][0]), "--json")
        check_writable_file(Path(args.json), "--json")
    engine, spec, manifest = open_engine(args.engine, threads=args.threads, device=args.device)
    check = _verifier(args, engine, spec, manifest)
    if jobs is None:
        return _segment_folder(source, target, engine, spec, args, budget, check)
    records = [_segment_one(job_source, output, engine, spec, args, budget, check) for job_source, output in jobs]
    if args.json:
        _write_json(args.json, records[0] if len(records) == 1 else {"engine": str(args.engine), "results": records})
    return 0


def _file_jobs(source: Path, target: Path, series_choice: str | None):
    """(source, output) pairs for a file or a DICOM folder (one per chosen series); None for a folder of volumes."""
    from .io import Source, choose_series, dicom_series

    if not source.is_dir():
        return [(Source(source), target)]
    series = dicom_series(source)
    if not series:
        return None
    if series_choice == "all":
        if len(series) == 1:
            return [(Source(source), target)]
        stem, suffix = _stem(target.name), target.name[len(_stem(target.name)):]
        return [(Source(source, s.uid), target.with_name(f"{stem}_{s.uid or 'no-uid'}{suffix}")) for s in series]
    chosen = choose_series(source, series, series_choice)
    return [(Source(source, chosen.uid if len(series) > 1 else None), target)]


def _verifier(args, engine, spec, manifest):
    """``verify.verify_scan`` bound to the engine and its FP32 reference, or None without ``--verify``."""
    if not args.verify:
        return None
    from functools import partial

    from .engines import open_reference
    from .verify import verify_scan

    if args.verify < 1:
        raise PTQError(f"--verify takes a number of windows (1 or more), not {args.verify}")
    reference = open_reference(args.engine, manifest, args.threads)
    threshold = args.min_agreement if args.min_agreement is not None else \
        float((manifest.get("accuracy") or {}).get("min_agreement", 0.98))
    return partial(verify_scan, engine=engine, reference=reference, spec=spec, windows=args.verify,
                   min_agreement=threshold)


def _report_verification(name: str, verification: dict | None) -> None:
    if not verification:
        return
    line = (f"{name}: INT8 gives the FP32 label to {verification['foreground_agreement']:.2%} of foreground voxels in "
            f"{verification['windows']} windows of this scan (checked in {verification['seconds']:.2f} s)")
    if verification["passed"]:
        print("verify: " + line)
    else:
        log.warning("%s: below %.0f%%: check this segmentation, or segment it with the fp32 engine", line,
                    100 * verification["min_agreement"])


def _segment_one(source, output: Path, engine, spec, args, budget, check) -> dict:
    from .inference import segment_file

    result = segment_file(source, output, engine, spec, progress=not args.quiet, memory_budget=budget, check=check)
    for warning in result.warnings:
        log.warning("%s", warning)
    emit("result", output=str(output), latency_ms=result.timings_ms, windows=result.windows, warnings=result.warnings,
         verification=result.verification)
    print(f"wrote {output}: {result.windows} windows, {result.total_ms / 1e3:.2f} s")
    _report_verification(Path(str(output)).name, result.verification)
    if not args.quiet:
        print(timings_table(result.timings_ms))
    return {"engine": str(args.engine), "input": str(source), "output": str(output), "latency_ms": result.timings_ms,
            "total_ms": result.total_ms, "windows": result.windows, "warnings": result.warnings,
            "verification": result.verification, "label_volumes_ml": label_volumes_ml(result)}


def _segment_folder(source: Path, target: Path, engine, spec, args, budget, check) -> int:
    """Segment every volume under ``source`` into ``target``; skip finished outputs, go on after failures.

    An output folder inside the input folder is left out of the search (its label maps are not scans).
    """
    from .inference import segment_file
    from .outputs import check_not_an_input, inside
    from .progress import track
    from .sources import find_volumes, source_files, source_name

    volumes, _ = find_volumes(source, "input folder", exclude=target if inside(target, source) else None)
    if not volumes:
        raise PTQError(f"no volume found in input folder {source}: put NIfTI, NRRD or DICOM volumes there")
    done, failed, skipped, records = 0, [], 0, []
    for volume in track(volumes, "volumes", enabled=not args.quiet, unit="vol"):
        name = source_name(volume, source)
        output = target / _output_name(volume, source)
        if output.exists():
            skipped += 1
            continue
        try:
            check_not_an_input(output, source_files(volume))
            result = segment_file(volume, output, engine, spec, memory_budget=budget, check=check)
        except PTQError as exc:
            reason = without_subject(str(exc), volume.path.name)
            failed.append((name, reason))
            log.error("%s: %s", name, reason)
            continue
        for warning in result.warnings:
            log.warning("%s", warning)
        _report_verification(name, result.verification)
        done += 1
        records.append({"input": name, "output": str(output), "latency_ms": result.timings_ms,
                        "total_ms": result.total_ms, "warnings": result.warnings, "verification": result.verification})
    print(f"segmented {done}, skipped {skipped} already done, failed {len(failed)}")
    for name, reason in failed:
        print(f"  failed: {name}: {reason}")
    if args.json:
        _write_json(args.json, {"segmented": records, "skipped": skipped, "failed": [list(f) for f in failed]})
    return 1 if failed else 0


def _output_name(volume, folder: Path) -> Path:
    """``<relative path without suffix>[_<series uid>]_seg.nii.gz`` (DICOM folders: the folder path, joined by _)."""
    relative = volume.path.relative_to(folder) if volume.path != folder else Path(volume.path.name)
    if volume.path.is_dir():
        name = str(relative).replace(os.sep, "_")
        parent = Path()
    else:
        name, parent = _stem(relative.name), relative.parent
    if volume.series_uid is not None:
        name += f"_{volume.series_uid or 'no-uid'}"
    return parent / f"{name}_seg.nii.gz"


def _stem(name: str) -> str:
    from .io import VOLUME_SUFFIXES

    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def cmd_info(args) -> int:
    from .artifact import read_manifest, verify_engine_files
    from .describe import describe_manifest

    manifest = read_manifest(args.engine)
    verify_engine_files(args.engine, manifest)
    print(json.dumps(manifest, indent=2) if args.json else describe_manifest(manifest))
    return 0


def cmd_models(args) -> int:
    from .describe import weights_origin
    from .models import registry

    for name, spec in sorted(registry().items()):
        print(f"{name:20s} {spec.architecture.rsplit('.', 1)[-1]:12s} {len(spec.labels):4d} labels  "
              f"roi {'x'.join(map(str, spec.roi_size)):11s} {'x'.join(f'{s:g}' for s in spec.spacing_mm):11s} mm  "
              f"{spec.description}\n{'':20s} weights: {weights_origin(spec)}")
    return 0



def cmd_capabilities(args) -> int:
    from .capabilities import describe, probe

    found = probe()
    emit("result", capabilities=found)
    print(json.dumps(found) if args.json else describe(found))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    figures = run_demo(args.workdir, input_path=args.input, calib=args.calib, repeats=args.repeats,
                       threads=args.threads, progress=not args.quiet)
    if args.json:
        _write_json(args.json, figures)
    return 0


def cmd_bench(args) -> int:
    from .bench import run_benchmark

    figures = run_benchmark(models=args.models, volume=args.volume, calib=args.calib, repeats=args.repeats,
                            volume_repeats=args.volume_repeats, out_dir=args.out, threads=args.threads)
    if args.json:
        _write_json(args.json, figures)
    return 0


def timings_table(timings_ms: dict[str, float]) -> str:
    from .evaluate import markdown_table

    rows = [[stage, f"{ms:.0f}"] for stage, ms in timings_ms.items()] + [["total", f"{sum(timings_ms.values()):.0f}"]]
    return markdown_table(["stage", "ms"], rows)


def label_volumes_ml(result) -> dict[str, float]:
    import numpy as np

    counts = np.bincount(result.labels.array.ravel(), minlength=len(result.spec.labels))
    voxel_ml = abs(np.linalg.det(result.labels.affine[:3, :3])) / 1000.0
    return {label.name: round(float(counts[label.value] * voxel_ml), 2) for label in result.spec.labels if label.value}


def _write_json(path: str, figures: dict) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(figures, indent=2, default=float))
    except OSError as exc:
        raise PTQError(f"cannot write {path} ({exc.strerror})") from None
    print(f"figures written to {target}")


if __name__ == "__main__":
    sys.exit(main())
