"""Whole-volume GPU inference without TensorRT: torch FP32 eager at batch 1 vs the torch fp16 fast path.

Two steps, because the GPU machine has no SimpleITK and no registry:

    python scripts/gpu_bench.py prepare CT.nii.gz .carry/volumes.npz     # here: preprocess per model
    python scripts/gpu_bench.py run .carry/volumes.npz [--batch 4]       # on the GPU: time and compare

``run`` times, per model and whole (preprocessed) volume, the sliding window plus the running argmax:
- ``cpu stitch``: the product path (``inference.predict_labels``), logits copied to the host per window
  (it stitches on the CPU image's device; MONAI rejects CUDA logits there, see ``HostLogits``);
- ``gpu stitch``: MONAI's sliding window stitching on the GPU (``sw_device=device=cuda``) and the argmax on
  the GPU, copying only the label map to the host;
each for TorchEngine fp32 on CUDA at batch 1 (TF32 off) and for the fp16 fast path (batch N,
channels_last_3d, CUDA-graph replay).
It prints a markdown table (median of ``--repeats`` after one warm-up) and argmax agreement with fp32.
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
    images = {name: preprocess(volume, get_spec(name)).image.numpy().astype(np.float32) for name in MODELS}
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


def gpu_stitch_labels(image: torch.Tensor, engine, spec) -> np.ndarray:
    """Sliding window with stitching and argmax on the GPU; only the label map crosses to the host."""
    from monai.inferers import sliding_window_inference

    from engine_builder.preprocess import background_value

    with torch.inference_mode():
        logits = sliding_window_inference(image[None].to("cuda"), spec.roi_size, engine.batch_size, engine.infer_torch,
                                          overlap=spec.overlap, mode="gaussian", padding_mode="constant",
                                          cval=background_value(spec.intensity), sw_device="cuda", device="cuda")
        return logits[0].argmax(0).to(torch.uint8).cpu().numpy()


class HostLogits:
    """An engine whose logits come back to the host: what ``inference.predict_labels`` needs today, because it
    stitches on the image's device (CPU) and MONAI refuses CUDA logits there."""

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
    print("| model (weights) | grid | fp32 b1, cpu stitch (ms) | fp32 b1, gpu stitch (ms) | fp16 fast b%d, cpu stitch (ms) "
          "| fp16 fast b%d, gpu stitch (ms) | speed-up vs fp32 b1 cpu / gpu stitch | agreement |" % (batch, batch))
    print("|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        spec, network, weights = network_for(name)
        image = torch.from_numpy(data[name])
        reference = TorchEngine(network, "fp32", 1, "cuda")
        torch.backends.cudnn.allow_tf32 = False  # true FP32 baseline
        t32, labels32 = timed(lambda: predict_labels(image, HostLogits(reference), spec, StageTimer()), repeats)
        t32g, _ = timed(lambda: gpu_stitch_labels(image, reference, spec), repeats)
        fast = TorchEngine(network, "fp16", batch, "cuda")
        t16, _ = timed(lambda: predict_labels(image, HostLogits(fast), spec, StageTimer()), repeats)
        t16g, labels16 = timed(lambda: gpu_stitch_labels(image, fast, spec), repeats)
        agreement = float((labels16 == labels32).mean())
        print(f"| {name} ({weights}) | {'x'.join(map(str, image.shape[1:]))} | {t32:.0f} | {t32g:.0f} | {t16:.0f} | {t16g:.0f} | "
              f"{t32 / t16g:.2f}x / {t32g / t16g:.2f}x | {agreement:.4f} |", flush=True)
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
