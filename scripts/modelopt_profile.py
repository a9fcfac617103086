"""Where ModelOpt's INT8 Q/DQ quantization of one registry graph spends its time (cProfile, largest first).

    python scripts/modelopt_profile.py swin_unetr_btcv            # the CI width of Testing/registry_small.py
    python scripts/modelopt_profile.py swin_unetr_btcv --published
    python scripts/modelopt_profile.py swin_unetr_btcv --published --compare-folding

Run it in the TensorRT-RTX venv (ModelOpt + onnxruntime). Random weights, two random calibration patches: the
graph, not the data, sets this time. Prints the node count of the exported graph, the wall clock of
``modelopt_qdq.prepare_graph`` and the ``--top`` functions by cumulative time. ``--compare-folding`` instead
quantizes the export as it is and after ``folded_for_modelopt`` and prints, for each Q/DQ graph, the time, the
node count, the ops quantized and kept in float, the stored constants' elements by type (what folding changes
in the graph TensorRT builds) and, where TensorRT-RTX is installed, the size of the plan it builds from each.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--published", action="store_true", help="the published size, not the CI width")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--compare-folding", action="store_true",
                        help="quantize the graph unfolded and folded and compare the two Q/DQ graphs")
    args = parser.parse_args()

    import numpy as np
    import onnx

    from engine_builder.backends import modelopt_qdq
    from engine_builder.export import export_onnx
    from engine_builder.models import get_spec
    from registry_small import SMALL, small_spec

    spec = get_spec(args.model) if args.published or args.model not in SMALL else small_spec(args.model)
    network = spec.build_network().eval()
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export_onnx(network, Path(scratch) / "fp32.onnx", spec.roi_size, spec.in_channels, 1)
        nodes = len(onnx.load(str(fp32), load_external_data=False).graph.node)
        patches = np.random.default_rng(0).random((2, spec.in_channels, *spec.roi_size), dtype=np.float32)
        if args.compare_folding:
            _compare_folding(fp32, Path(scratch), patches)
            return 0
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.runcall(modelopt_qdq.prepare_graph, fp32, Path(scratch) / "typed.onnx", "int8", patches, "max", ())
        seconds = time.perf_counter() - started
    print(f"{args.model} ({'published size' if args.published else 'CI width'}, ROI {spec.roi_size}): {nodes} ONNX nodes, "
          f"ModelOpt {modelopt_qdq.modelopt_version()} prepare_graph {seconds:.1f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
    return 0


def _compare_folding(fp32: Path, scratch: Path, patches) -> None:
    import numpy as np
    import onnx

    from engine_builder.backends import modelopt_qdq

    trt = _tensorrt_rtx()
    for label, graph in (("unfolded", fp32), ("folded", modelopt_qdq.folded_for_modelopt(fp32, scratch))):
        out = scratch / f"qdq_{label}.onnx"
        started = time.perf_counter()
        modelopt_qdq._quantize_modelopt(graph, out, patches, "max", ())
        seconds = time.perf_counter() - started
        model = onnx.load(str(out))
        report = modelopt_qdq.inspect_graph(model)
        elements: dict[str, int] = {}
        for tensor in model.graph.initializer:
            kind = onnx.TensorProto.DataType.Name(tensor.data_type)
            elements[kind] = elements.get(kind, 0) + int(np.prod(tensor.dims, dtype=np.int64))
        print(f"{label}: ModelOpt {seconds:.0f} s, {len(model.graph.node)} nodes, {len(report.quantized)} ops quantized, "
              f"{len(report.kept_in_float)} kept in float, constants (elements) {dict(sorted(elements.items()))}"
              + (f", TensorRT-RTX plan {_plan_bytes(trt, out) / 1e6:.1f} MB" if trt else ""), flush=True)


def _tensorrt_rtx():
    """The TensorRT-RTX module where it is installed (the plan sizes are then compared too), else None."""
    from engine_builder.backends.tensorrt import TENSORRT_RTX
    from engine_builder.errors import PTQError

    try:
        return TENSORRT_RTX.load()
    except PTQError:
        return None


def _plan_bytes(trt, graph: Path) -> int:
    from engine_builder.backends import BuildOptions
    from engine_builder.backends.tensorrt import build_plan

    return len(build_plan(trt, graph, 1, BuildOptions(method="max", extra={"build_only": True})))


if __name__ == "__main__":
    sys.exit(main())
