"""The PyTorch reference: the FP32 network in eager mode (CPU or CUDA); the fast GPU path without TensorRT.

FP32 (CPU or CUDA) is what a user runs without this project, so it is the baseline every speed-up is
measured against. ``fp16`` on CUDA is the fast GPU path for machines without TensorRT: FP16 autocast
(normalisation statistics stay FP32), channels_last_3d activations, and the fixed-shape window batch
captured once in a CUDA graph and replayed (small 3D networks at batch 1 are launch-bound, measured in
docs/benchmarks/gpu.md). Partial batches are zero-padded to the captured shape; outputs stay on the GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import PTQError
from ..spec import ModelSpec
from ..weights import load_state_dict
from .base import Backend, BuildOptions, Engine, FP32Graph

STATE_FILE = "network.pt"


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, network: torch.nn.Module, precision: str, batch_size: int, device: str = "cpu"):
        self.precision = precision
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.network = network.eval().to(self.device)
        self.fast_gpu = self.device.type == "cuda" and precision == "fp16"
        # Where MONAI's sliding window should stitch: on the GPU for CUDA engines (no host copies per window).
        self.stitch_device = self.device if self.device.type == "cuda" else None
        self._graph: torch.cuda.CUDAGraph | None = None
        if self.fast_gpu:
            torch.backends.cudnn.benchmark = True
            self.network = self.network.to(memory_format=torch.channels_last_3d)

    def infer_torch(self, batch: torch.Tensor) -> torch.Tensor:
        if self.fast_gpu:
            return self._replay(batch)
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, torch.float16, enabled=self.precision == "fp16"):
                return self.network(batch.to(self.device, torch.float32)).float()
        except RuntimeError as exc:  # e.g. a ROI the network's strides do not divide
            raise PTQError(f"the network cannot run on a {list(batch.shape)} window ({str(exc).splitlines()[0][:160]}): "
                           "the engine's ROI does not fit its network; rebuild the engine") from None

    def _forward_fp16(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", torch.float16):
            return self.network(batch.contiguous(memory_format=torch.channels_last_3d)).float()

    def _replay(self, batch: torch.Tensor) -> torch.Tensor:
        """Copy the batch into the captured input, replay the CUDA graph, return a copy of the logits."""
        n = len(batch)
        with torch.inference_mode():
            if self._graph is None:
                self._capture((self.batch_size, *batch.shape[1:]))
            self._input[:n].copy_(batch, non_blocking=True)
            if n < self.batch_size:
                self._input[n:].zero_()
            self._graph.replay()
            return self._output[:n].clone()

    def _capture(self, shape) -> None:
        self._input = torch.zeros(shape, device=self.device, dtype=torch.float32)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: cuDNN picks its kernels before capture
            for _ in range(3):
                self._forward_fp16(self._input)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._output = self._forward_fp16(self._input)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_torch(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).cpu().numpy()

    def save(self, folder: Path) -> list[str]:
        torch.save({k: v.cpu() for k, v in self.network.state_dict().items()}, Path(folder) / STATE_FILE)
        return [STATE_FILE]


class TorchBackend(Backend):
    name = "torch"
    precisions = ("fp32", "fp16")

    def version(self) -> str:
        return f"torch {torch.__version__}"

    def build(self, graph: FP32Graph, calibration_patches, precision: str, options: BuildOptions) -> Engine:
        self._check(precision, options.device)
        return TorchEngine(graph.network, precision, graph.batch_size, options.device)

    def load(self, folder: Path, manifest: dict, options: BuildOptions) -> Engine:
        """The network named by the (checked, allow-listed) spec with the engine's plain state dict."""
        self._check(manifest["precision"], options.device)
        spec = ModelSpec.from_dict(manifest["spec"], f"engine {folder}")
        try:
            network = spec.build_network()
        except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
            raise PTQError(f"engine {folder}: {spec.architecture} cannot be built with the manifest's arch_args "
                           f"({str(exc).splitlines()[0][:160]}): rebuild the engine") from None
        state = load_state_dict(Path(folder) / STATE_FILE)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise PTQError(f"engine {folder}: {STATE_FILE} does not fit its spec's network "
                           f"({str(exc).splitlines()[0][:160]}): rebuild the engine") from None
        return TorchEngine(network, manifest["precision"], int(manifest["batch_size"]), options.device)

    def _check(self, precision: str, device: str) -> None:
        if precision not in self.precisions:
            raise PTQError(f"backend torch runs {', '.join(self.precisions)}, not '{precision}' (INT8 needs --backend openvino)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PTQError("no CUDA device is available to torch: use --device cpu or install a CUDA build of torch")
        if precision == "fp16" and not device.startswith("cuda"):
            raise PTQError("fp16 with torch needs a CUDA device (--device cuda); on the CPU use --backend openvino")
