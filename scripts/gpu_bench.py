"""Whole-volume GPU inference without TensorRT: torch FP32 eager at batch 1 vs the torch fp16 fast path.

Two steps, because the GPU machine has no SimpleITK and no registry:

    python scripts/gpu_bench.py prepare CT.nii.gz .carry/volumes.npz     # here: preprocess per model
    python scripts/gpu_bench.py run .carry/volumes.npz [--batch 4]       # on the GPU: time and compare

``run`` times, per model and whole (preprocessed) volume, the product path ``inference.predict_labels``
(sliding window, stitching on the engine's ``stitch_device``, i.e. the GPU for CUDA engines, running argmax
on the GPU, label map copied to the host):
- torch FP32 eager at batch 1 on CUDA, cuDNN TF32 off (strict FP32, the baseline) and on (torch's default);
- the torch fp16 fast path (batch N, channels_last_3d, CUDA-graph replay);
- diagnostic: the fp16 fast path with its logits copied to the host per window and stitched on the CPU
  (``HostLogits``: what the product path did before it stitched on the engine's device).
Weights: the packaged ones where present, else random (speed only; agreement then means little).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("demo", "unet", "segresnet")


def prepare(ct: str, out: str) -> None:
    from engine_builder.io import read_volume
    from engine_builder.models import get_spec
    from engine_builder.preprocess import preprocess

    volume = read_volume(ct)
    images = {name: preprocess(volume, get_spec(name)).image.astype(np.float32) for name in MODELS}
    np.savez_compressed(out, **images)
    print({k: v.shape for k, v in images.items()})


def network_for(name: str):
    from engine_builder.models import get_spec
    from engine_builder.weights import load_network, resolve_weights

    spec = get_spec(name)
    try:
        return spec, load_network(spec, resolve_weights(spec, None)), "trained"
    except Exception:  # noqa: BLE001  no packaged weights: random init, speed only
        torch.manual_seed(0)
        return spec, spec.build_network().eval(), "random"


class HostLogits:
    """Diagnostic: an engine whose logits come back to the host, so ``predict_labels`` stitches on the CPU."""

    stitch_device = None

    def __init__(self, engine):
        self.engine, self.batch_size = engine, engine.batch_size

    def infer_torch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.engine.infer_torch(batch).cpu()


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up: cuDNN autotuning, CUDA-graph capture
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def run(volumes: str, batch: int, repeats: int) -> None:
    from engine_builder.backends.torch_backend import TorchEngine
    from engine_builder.inference import StageTimer, predict_labels

    data = np.load(volumes)
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    print("| model (weights) | grid | fp32 b1 (ms) | fp32 b1, TF32 (ms) | fp16 fast b%d (ms) "
          "| speed-up vs fp32 b1 / TF32 | fp16 fast b%d, host stitch (ms) | agreement |" % (batch, batch))
    print("|---|---|---|---|---|---|---|---|")
    product = lambda image, engine, spec: predict_labels(image, engine, spec, StageTimer())  # noqa: E731
    for name in MODELS:
        spec, network, weights = network_for(name)
        image = torch.from_numpy(data[name])
        reference = TorchEngine(network, "fp32", 1, "cuda")
        torch.backends.cudnn.benchmark = False  # as a fresh process running FP32 (the fp16 engine turns it on)
        torch.backends.cudnn.allow_tf32 = False  # strict FP32 baseline
        t32, labels32 = timed(lambda: product(image, reference, spec), repeats)
        torch.backends.cudnn.allow_tf32 = True  # torch's default for cuDNN convolutions
        t32tf, _ = timed(lambda: product(image, reference, spec), repeats)
        torch.backends.cudnn.allow_tf32 = False
        fast = TorchEngine(network, "fp16", batch, "cuda")
        t16, labels16 = timed(lambda: product(image, fast, spec), repeats)
        t16h, _ = timed(lambda: product(image, HostLogits(fast), spec), repeats)
        agreement = float((labels16 == labels32).mean())
        print(f"| {name} ({weights}) | {'x'.join(map(str, image.shape[1:]))} | {t32:.0f} | {t32tf:.0f} | {t16:.0f} | "
              f"{t32 / t16:.2f}x / {t32tf / t16:.2f}x | {t16h:.0f} | {agreement:.4f} |", flush=True)
        del reference, fast
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("ct")
    p.add_argument("out")
    r = sub.add_parser("run")
    r.add_argument("volumes")
    r.add_argument("--batch", type=int, default=4)
    r.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.ct, args.out)
    else:
        run(args.volumes, args.batch, args.repeats)


if __name__ == "__main__":
    main()
