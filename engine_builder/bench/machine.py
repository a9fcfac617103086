"""The machine a benchmark ran on: CPU model and instruction-set flags, versions, load average.

The processor behind this project's machines varies (AMD EPYC with AVX512-VNNI/BF16, Intel Xeon with AMX), and
the machine is shared: every figure is quoted with the CPU, the versions and the load average around it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from .common import REPO_ROOT

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (runnable processes), or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_flags() -> dict[str, bool]:
    """The instruction-set flags that decide INT8/bf16 speed on x86 (from ``/proc/cpuinfo``)."""
    flags: set[str] = set()
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {flag: flag in flags for flag in _FLAGS}


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def machine_info(threads: int | None) -> dict:
    """CPU, cores, threads used, flags, OpenVINO's CPU capabilities, OS, Python, load average now."""
    from ..backends.openvino import ov
    from ..pipeline import cpu_name

    try:
        capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - informational only
        capabilities = []
    return {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "threads": threads or os.cpu_count(),
            "flags": cpu_flags(), "openvino_cpu_capabilities": capabilities, "system": platform.platform(),
            "python": platform.python_version(), "load_average": {"start": load_average()},
            # Without byte-code files every fresh process compiles the project's modules again (start-up time).
            "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))}


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (no runtime is imported for this)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    found: dict[str, str | None] = {"engine_builder": __version__, "git": git_describe()}
    for package in ("openvino", "nncf", "torch", "monai", "numpy", "SimpleITK"):
        try:
            found[package.lower()] = version(package)
        except PackageNotFoundError:
            found[package.lower()] = None
    return found


def git_describe() -> str | None:
    """The commit benchmarked, with ``+modified`` when engine_builder has uncommitted changes."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if commit.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "engine_builder").stdout.strip()
        return commit.stdout.strip() + ("+modified" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
