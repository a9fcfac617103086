"""Backends by name. Nothing outside this package imports a runtime (openvino, nncf, tensorrt, ...)."""

from __future__ import annotations

import importlib

from ..errors import PTQError
from .base import Backend, BuildOptions, Engine, FP32Graph

_BACKENDS = {
    "openvino": "engine_builder.backends.openvino:OpenVINOBackend",
    "torch": "engine_builder.backends.torch_backend:TorchBackend",
    "tensorrt": "engine_builder.backends.tensorrt:TensorRTBackend",
    "tensorrt-rtx": "engine_builder.backends.tensorrt:TensorRTRTXBackend",
}
DEFAULT_BACKEND = "openvino"


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; an unknown name lists the valid ones, a missing library says what to install."""
    if name not in _BACKENDS:
        raise PTQError(f"unknown backend '{name}': choose one of {', '.join(_BACKENDS)}")
    module_name, _, class_name = _BACKENDS[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


__all__ = ["Backend", "BuildOptions", "Engine", "FP32Graph", "get_backend", "backend_names", "DEFAULT_BACKEND"]
