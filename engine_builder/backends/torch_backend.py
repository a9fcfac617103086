"""The PyTorch reference: the FP32 network in eager mode (CPU or CUDA), FP16 autocast on CUDA.

It is what a user runs without this project, so it is the baseline every speed-up is measured against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import PTQError
from ..spec import ModelSpec
from .base import Backend, BuildOptions, Engine, FP32Graph

STATE_FILE = "network.pt"


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, network: torch.nn.Module, precision: str, batch_size: int, device: str = "cpu"):
        self.precision = precision
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.network = network.eval().to(self.device)

    def infer_torch(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, torch.float16, enabled=self.precision == "fp16"):
            return self.network(batch.to(self.device, torch.float32)).float()

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

    def build(self, graph: FP32Graph, calibration_patches, precision: str, options: BuildOptions, held_out_patches=None) -> Engine:
        self._check(precision, options.device)
        return TorchEngine(graph.network, precision, graph.batch_size, options.device)

    def load(self, folder: Path, manifest: dict, options: BuildOptions) -> Engine:
        self._check(manifest["precision"], options.device)
        network = ModelSpec.from_dict(manifest["spec"]).build_network()
        network.load_state_dict(torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True))
        return TorchEngine(network, manifest["precision"], int(manifest["batch_size"]), options.device)

    def _check(self, precision: str, device: str) -> None:
        if precision not in self.precisions:
            raise PTQError(f"backend torch runs {', '.join(self.precisions)}, not '{precision}' (INT8 needs --backend openvino)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PTQError("no CUDA device is available to torch: use --device cpu or install a CUDA build of torch")
        if precision == "fp16" and not device.startswith("cuda"):
            raise PTQError("fp16 with torch needs a CUDA device (--device cuda); on the CPU use --backend openvino")
