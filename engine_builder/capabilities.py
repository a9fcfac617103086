"""What this machine can build and run, and which runtime versions are installed.

Two kinds of question, kept apart because of where they are asked:

- ``probe()`` imports every backend, each in its own ``try``, and reports one dict: per backend whether it is
  installed, whether it can run here and why not, its version and the precisions it can build here; the GPU torch
  sees and its compute capability; bf16 on the CPU; and the backend ``auto`` means. It imports torch, OpenVINO and
  TensorRT, so the Slicer module asks it through a child process (``ptqseg capabilities --json``).
- ``installed_runtime_versions()`` and ``built_runtime_version()`` read package metadata and a manifest only
  (nothing is imported), so that a caller can tell a stale engine without loading any runtime.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

#: The backends ``engine_builder.backends`` registers, named here without importing it (it imports torch).
BACKEND_NAMES = ("openvino", "torch", "tensorrt", "tensorrt-rtx")
AUTO_BACKEND = "auto"
#: Backends whose engines run only on an NVIDIA GPU, in the order ``auto`` prefers them.
GPU_BACKENDS = ("tensorrt", "tensorrt-rtx")
#: Compute capabilities (major, minor): TensorRT 10 needs Turing or newer; the TensorRT-RTX runtime lists
#: 8.0, 8.6, 8.9 and 12.0 and newer (its own error message on other GPUs).
TENSORRT_MIN_CAPABILITY = (7, 5)
TENSORRT_RTX_CAPABILITIES = ((8, 0), (8, 6), (8, 9))
TENSORRT_RTX_MIN_NEWER = (12, 0)

#: Per backend: the import packages whose versions an engine depends on, and how the version string is written
#: (as ``built_runtime_version`` reads it from a manifest). Kept in step with the backends' ``version()`` and, for
#: TensorRT, with the plan report's ``library_version``; a test compares both on every machine that has them.
_RUNTIMES: dict[str, tuple[tuple[str, ...], str]] = {
    "openvino": (("openvino", "nncf"), "openvino {}, nncf {}"),
    "torch": (("torch",), "torch {}"),
    "tensorrt": (("tensorrt",), "{}"),
    "tensorrt-rtx": (("tensorrt_rtx_bindings",), "{}"),
}


# ---------------------------------------------------------------------------------- metadata only (no imports)
def distribution_version(module: str, distributions: Mapping[str, list[str]] | None = None) -> str | None:
    """Version of the installed distribution that provides import package ``module``, or None when there is none.

    ``distributions`` is ``importlib.metadata.packages_distributions()`` (pass it when asking several times).
    """
    if distributions is None:
        distributions = importlib.metadata.packages_distributions()
    for name in distributions.get(module) or [module]:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed_runtime_versions() -> dict[str, str | None]:
    """Per backend, the runtime version installed here in the form ``built_runtime_version`` gives (None: a
    package is missing). Reads package metadata only."""
    distributions = importlib.metadata.packages_distributions()
    found = {}
    for backend, (modules, template) in _RUNTIMES.items():
        versions = [distribution_version(module, distributions) for module in modules]
        found[backend] = None if None in versions else template.format(*versions)
    return found


def built_runtime_version(manifest: Mapping) -> str | None:
    """The runtime version an engine was built with: TensorRT plans record their library's version in the
    ``runs_as`` report (the plan depends on it, not on ModelOpt); other engines in ``backend_version``."""
    if manifest.get("backend") in GPU_BACKENDS:
        return (manifest.get("runs_as") or {}).get("library_version")
    return manifest.get("backend_version")


# --------------------------------------------------------------------------------------- probing (imports)
def probe() -> dict:
    """What works here, as one JSON-ready dict (see the module docstring); each part fails on its own."""
    gpu, gpu_error = _torch_gpu()
    cpu_bf16 = _cpu_bf16()
    found = {
        "backends": {name: _probe_backend(name, gpu, cpu_bf16) for name in BACKEND_NAMES},
        "gpu": gpu,
        "gpu_error": gpu_error,
        "cpu_bf16": cpu_bf16,
        "runtime_versions": installed_runtime_versions(),
    }
    found["auto_backend"] = choose_backend(found)
    return found


def choose_backend(capabilities: Mapping) -> str:
    """The backend ``auto`` means: the first GPU backend usable here (TensorRT, then TensorRT-RTX), else OpenVINO."""
    for name in GPU_BACKENDS:
        if capabilities["backends"].get(name, {}).get("usable"):
            return name
    return "openvino"


def gpu_reason(backend: str, gpu: Mapping | None) -> str | None:
    """Why ``backend`` cannot run on ``gpu`` (``{"name", "compute_capability"}`` or None), or None when it can."""
    if backend not in GPU_BACKENDS:
        return None
    if gpu is None:
        return "needs an NVIDIA GPU that torch can use, and none was found"
    capability = _capability(gpu["compute_capability"])
    if backend == "tensorrt" and capability < TENSORRT_MIN_CAPABILITY:
        return (f"needs compute capability {'.'.join(map(str, TENSORRT_MIN_CAPABILITY))} or newer; "
                f"{gpu['name']} has {gpu['compute_capability']}")
    if backend == "tensorrt-rtx" and not (capability in TENSORRT_RTX_CAPABILITIES or capability >= TENSORRT_RTX_MIN_NEWER):
        return f"runs on RTX-class GPUs (compute capability 8.0, 8.6, 8.9, 12.0+); {gpu['name']} has {gpu['compute_capability']}"
    return None


def describe(capabilities: Mapping) -> str:
    """The probe as a few lines for people."""
    gpu = capabilities["gpu"]
    lines = [f"GPU        {gpu['name']} (compute capability {gpu['compute_capability']})" if gpu
             else "GPU        none usable by torch" + (f" ({capabilities['gpu_error']})" if capabilities.get("gpu_error") else ""),
             f"CPU bf16   {'yes' if capabilities['cpu_bf16'] else 'no'}",
             f"auto       {capabilities['auto_backend']}"]
    for name, backend in capabilities["backends"].items():
        state = ("builds " + ", ".join(backend["precisions"])) if backend["usable"] else f"not usable: {backend['reason']}"
        lines.append(f"{name:12s} {backend['version'] or 'not installed'}  {state}")
    return "\n".join(lines)


def _probe_backend(name: str, gpu: Mapping | None, cpu_bf16: bool) -> dict:
    try:
        from .backends import get_backend

        backend = get_backend(name)
        version = backend.version()
    except Exception as exc:  # noqa: BLE001  a missing or broken runtime: say why, and go on with the others
        return {"installed": False, "usable": False, "version": None, "precisions": [], "reason": _one_line(exc)}
    reason = gpu_reason(name, gpu)
    precisions = [] if reason else [p for p in backend.precisions if _builds_here(name, p, gpu, cpu_bf16)]
    return {"installed": True, "usable": reason is None, "version": version, "precisions": precisions, "reason": reason}


def _builds_here(backend: str, precision: str, gpu: Mapping | None, cpu_bf16: bool) -> bool:
    """Precisions that need hardware: OpenVINO bf16 a CPU with AMX/AVX512-BF16, torch fp16 a CUDA device."""
    if backend == "openvino" and precision == "bf16":
        return cpu_bf16
    if backend == "torch" and precision == "fp16":
        return gpu is not None
    return True


def _torch_gpu() -> tuple[dict | None, str | None]:
    """(the GPU torch sees as {"name", "compute_capability"}, or None; why it could not be asked, or None)."""
    try:
        from .backends.tensorrt import current_gpu

        return current_gpu(), None
    except Exception as exc:  # noqa: BLE001  no torch, or a CUDA driver problem
        return None, _one_line(exc)


def _cpu_bf16() -> bool:
    try:
        from .backends.openvino import cpu_has_bf16

        return bool(cpu_has_bf16())
    except Exception:  # noqa: BLE001  no OpenVINO: no bf16 engines either
        return False


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() else (0, 0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
