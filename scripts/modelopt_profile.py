"""Where ModelOpt's INT8 Q/DQ quantization of one registry graph spends its time (cProfile, largest first).

    python scripts/modelopt_profile.py swin_unetr_btcv            # the CI width of Testing/registry_small.py
    python scripts/modelopt_profile.py swin_unetr_btcv --published

Run it in the TensorRT-RTX venv (ModelOpt + onnxruntime). Random weights, two random calibration patches: the
graph, not the data, sets this time. Prints the node count of the exported graph, the wall clock of
``modelopt_qdq.prepare_graph`` and the ``--top`` functions by cumulative time.
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
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.runcall(modelopt_qdq.prepare_graph, fp32, Path(scratch) / "typed.onnx", "int8", patches, "max", ())
        seconds = time.perf_counter() - started
    print(f"{args.model} ({'published size' if args.published else 'CI width'}, ROI {spec.roi_size}): {nodes} ONNX nodes, "
          f"ModelOpt {modelopt_qdq.modelopt_version()} prepare_graph {seconds:.1f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
