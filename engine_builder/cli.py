"""``ptqseg``: build INT8 engines, segment volumes, show manifests, run the demo and the benchmark.

Thin over ``pipeline``, ``inference`` and ``demo``; errors are one line and exit code 2 (a traceback
only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import PTQError
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
    build.add_argument("--max-reverted", type=int, default=8,
                       help="accuracy control: at most this many operations go back to float (default 8; each one "
                            "costs a re-evaluation, so this bounds the build time)")
    build.add_argument("--accuracy-control", default="auto", choices=("auto", "off"),
                       help="auto (default): when the held-out-volume estimate is below --min-agreement, rebuild "
                            "with accuracy control; off: never")
    build.add_argument("--no-estimate", dest="estimate", action="store_false",
                       help="skip the held-out-volume estimate (quicker builds while trying settings; the manifest "
                            "then says 'not measured', and accuracy control cannot run)")
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
    segment.add_argument("--workers", type=int, help="folder or list runs: N worker processes, each with the engine "
                         "loaded once and cores/N threads (default: this process)")
    segment.add_argument("--ray", metavar="ADDRESS", help="folder or list runs on a Ray cluster: 'auto' or ray://HEAD:10001 "
                         "(inputs, outputs and the engine on storage every node sees; needs the [ray] extra)")
    segment.add_argument("--retries", type=int, default=2, help="runs of a volume whose worker died, before it is "
                         "reported failed (default 2)")
    segment.add_argument("--report", help="per-volume run report (.json or .csv): status, worker, node, seconds, error")
    segment.set_defaults(func=cmd_segment)

    worker = sub.add_parser("worker", help="serve segmentation requests: JSON lines on stdin, one result line each on "
                            "stdout, until stdin closes (the engine is loaded once)")
    worker.add_argument("--engine", required=True, help="engine directory from 'ptqseg build'")
    worker.add_argument("--threads", type=int)
    worker.add_argument("--device", default="cpu")
    worker.add_argument("--max-memory-gb", type=float, help="refuse volumes whose resampled grid needs more memory")
    worker.add_argument("--verify", type=int, default=0, metavar="N", help="check N windows of each scan against FP32")
    worker.add_argument("--min-agreement", type=float, help="threshold of --verify")
    worker.set_defaults(func=cmd_worker, quiet=True)

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

    bench = sub.add_parser("bench", help="torch FP32 vs OpenVINO FP32/bf16/INT8: one window, and `ptqseg segment` of a "
                                         "whole volume in fresh processes and with the engine loaded")
    bench.add_argument("--models", nargs="*", default=["demo", "unet", "segresnet"],
                       help="models timed per window (none: skip); without trained weights here: random weights, "
                            "speed only")
    bench.add_argument("--volume-models", nargs="*", default=["demo"],
                       help="models run on the whole volume (none: skip)")
    bench.add_argument("--volume", help="whole-volume input (default: the chest CT in ../shared/data if present)")
    bench.add_argument("--calib", help="calibration folder (default: synthetic phantoms)")
    bench.add_argument("--repeats", type=int, default=5, help="repeats per window (after one warm-up)")
    bench.add_argument("--fresh-repeats", type=int, default=3,
                       help="fresh-process `ptqseg segment` runs per engine after the cold one")
    bench.add_argument("--warm-repeats", type=int, default=3, help="scans per engine with the engine loaded, after the first")
    bench.add_argument("--out", default="docs/benchmarks", help="folder for cpu.md, cpu.json and cpu.png")
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
                           accuracy_control=args.accuracy_control, max_reverted=args.max_reverted, estimate=args.estimate,
                           batch_size=args.batch, patches_per_volume=args.patches, seed=args.seed,
                           min_agreement=args.min_agreement, keep_float=tuple(args.keep_float), threads=args.threads,
                           device=args.device, allow_random_weights=args.random_init, download=args.download,
                           progress=not args.quiet)
    result = build_engine(request, out=args.out, cache_root=args.cache)
    emit("result", engine_dir=str(result.engine_dir), cache_hit=result.cache_hit, warnings=result.warnings)
    print(("reused cached engine " if result.cache_hit else "built engine ") + str(result.engine_dir))
    print(describe_manifest(result.manifest))
    return 0


def cmd_segment(args) -> int:
    from .engines import open_engine
    from .jobs import file_tasks, is_task_list
    from .outputs import check_label_file, check_not_an_input, check_writable_file
    from .sources import source_files
    from .verify import scan_check

    source, target = Path(args.input), Path(args.output)
    if not source.exists():
        raise PTQError(f"input not found: {source}")
    budget = _memory_budget(args)
    tasks = None if is_task_list(source) else file_tasks(source, target, args.series)  # None: a folder or a list
    if tasks is None:
        return _segment_job(source, target, args, budget)
    if args.workers or args.ray or args.report:
        raise PTQError("--workers, --ray and --report are for a folder or a CSV list as --input, not one volume")
    for task in tasks:
        check_label_file(task.output, source_files(task.source))
    if args.json:
        check_not_an_input(Path(args.json), source_files(tasks[0].source), "--json")
        check_writable_file(Path(args.json), "--json")
    started = time.perf_counter()
    engine, spec, manifest = open_engine(args.engine, threads=args.threads, device=args.device)
    engine_open_ms = (time.perf_counter() - started) * 1e3
    check = scan_check(args.engine, engine, spec, manifest, args.verify, args.min_agreement, args.threads)
    records = [_segment_one(task.source, task.output, engine, spec, args, budget, check) for task in tasks]
    if args.json:
        figures = records[0] if len(records) == 1 else {"engine": str(args.engine), "results": records}
        _write_json(args.json, {**figures, "process": _process_record(engine_open_ms)})
    return 0


def _memory_budget(args) -> int | None:
    """``--max-memory-gb`` in bytes (None: the default budget)."""
    return None if args.max_memory_gb is None else int(args.max_memory_gb * 2**30)


def _process_record(engine_open_ms: float) -> dict:
    """This process's costs beside the stages: opening the engine (ms) and its peak resident memory so far (bytes,
    imports and every stage included)."""
    from .memory import peak_rss_bytes

    return {"engine_open_ms": engine_open_ms, "peak_rss_bytes": peak_rss_bytes()}



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


def _segment_job(source: Path, target: Path, args, budget) -> int:
    """Segment every volume of a folder or a CSV list into the folder ``target``; skip finished outputs, go on
    after failures, retry volumes whose worker died. Exit code 1 when any volume failed."""
    from .jobs import check_report_path, folder_tasks, is_task_list, list_tasks, run_job
    from .outputs import check_not_an_input, check_output_folder, check_writable_file

    listed = is_task_list(source)
    check_output_folder(target, None if listed else source)
    for flag, value in (("--json", args.json), ("--report", args.report)):
        if value:
            check_not_an_input(Path(value), [source], flag)
    if args.json:
        check_writable_file(Path(args.json), "--json")
    if args.report:
        check_report_path(Path(args.report))
    if args.workers is not None and args.workers < 1:
        raise PTQError(f"--workers must be at least 1, got {args.workers}")
    if args.retries < 0:
        raise PTQError(f"--retries must be 0 or more, got {args.retries}")
    tasks = list_tasks(source, target) if listed else folder_tasks(source, target)
    report = run_job(tasks, _executor(args, budget), progress=not args.quiet,
                     report_path=Path(args.report) if args.report else None)
    for line in report.summary_lines():
        print(line)
    if args.json:
        _write_json(args.json, report.figures())
    return 1 if report.with_status("failed") else 0


def _executor(args, budget):
    """The executor the flags ask for; the engine is checked here, before any worker starts."""
    from .artifact import read_manifest, verify_engine_files
    from .jobs import SequentialExecutor, default_threads

    if args.ray:
        from .ray_pool import RayExecutor

        verify_engine_files(args.engine, read_manifest(args.engine))
        return RayExecutor(args.engine, args.ray, workers=args.workers, threads=args.threads, device=args.device,
                           memory_budget=budget, retries=args.retries, verify=args.verify, min_agreement=args.min_agreement)
    if args.workers:
        from .pool import ProcessExecutor

        verify_engine_files(args.engine, read_manifest(args.engine))
        return ProcessExecutor(args.engine, args.workers, args.threads or default_threads(args.workers),
                               device=args.device, memory_budget=budget, retries=args.retries, verify=args.verify,
                               min_agreement=args.min_agreement)
    from .worker import Segmenter

    return SequentialExecutor(Segmenter(args.engine, threads=args.threads, device=args.device, memory_budget=budget,
                                        verify=args.verify, min_agreement=args.min_agreement))


def cmd_worker(args) -> int:
    """``ptqseg worker``: the JSON-lines protocol of ``worker.serve`` on stdin/stdout."""
    from .worker import Segmenter, protocol_stream, serve, stop_on_sigterm

    stop_on_sigterm()
    events = protocol_stream()
    budget = _memory_budget(args)
    return serve(lambda: Segmenter(args.engine, threads=args.threads, device=args.device, memory_budget=budget,
                                   verify=args.verify, min_agreement=args.min_agreement),
                 sys.stdin, events)


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
                            fresh_repeats=args.fresh_repeats, warm_repeats=args.warm_repeats, out_dir=args.out,
                            threads=args.threads, volume_models=args.volume_models)
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
