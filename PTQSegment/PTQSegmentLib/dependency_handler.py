"""The Python packages engine_builder needs in Slicer's Python, checked at first use and installed with consent.

Nothing is installed at import time. ``missingRequirements()`` says what is absent or too old;
``installRequirements()`` installs exactly those, pinned to versions engine_builder is tested with, after the
caller's ``confirm`` callback (the panel's question) says yes. torch goes through the PyTorch extension's
installer (``PyTorchUtils``) when that extension is present, as the Slicer AI extensions do: it picks the CUDA or
CPU build that fits the machine's driver instead of pulling the newest CUDA wheel from the index.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Requirement:
    """A package: the name it is imported by, its distribution name and the versions that work (pip syntax)."""

    importName: str
    distribution: str
    versions: str = ""
    purpose: str = ""

    @property
    def pipSpecifier(self) -> str:
        return f"{self.distribution}{self.versions}"


#: What every build and segmentation needs (numpy and SimpleITK ship with Slicer but are checked all the same).
REQUIRED = (
    Requirement("numpy", "numpy", ">=1.24", "arrays"),
    Requirement("SimpleITK", "SimpleITK", ">=2.3", "reading volumes"),
    Requirement("torch", "torch", ">=2.2", "the network and its ONNX export"),
    Requirement("monai", "monai", ">=1.4,<2", "networks and preprocessing"),
    Requirement("onnx", "onnx", ">=1.16,<2", "the FP32 graph"),
    Requirement("openvino", "openvino", ">=2025.0,<2027", "the CPU INT8 runtime"),
    Requirement("nncf", "nncf", ">=2.16,<4", "INT8 quantization for OpenVINO"),
    Requirement("scipy", "scipy", ">=1.10", "resampling"),
    Requirement("nibabel", "nibabel", ">=5.0", "NIfTI support in MONAI"),
    Requirement("tqdm", "tqdm", ">=4.60", "progress"),
)

#: What the TensorRT backends add (NVIDIA GPUs only; large downloads).
TENSORRT = (
    Requirement("tensorrt", "tensorrt", ">=10.0", "TensorRT engines"),
    Requirement("modelopt", "nvidia-modelopt[onnx]", ">=0.30", "INT8 quantization for TensorRT"),
)
TENSORRT_RTX = (
    Requirement("tensorrt_rtx_bindings", "tensorrt-rtx-cu13-bindings", ">=1.0", "TensorRT-RTX engines"),
    Requirement("modelopt", "nvidia-modelopt[onnx]", ">=0.30", "INT8 quantization for TensorRT"),
)


def requirementsFor(backend: str) -> tuple[Requirement, ...]:
    """The packages a build with ``backend`` needs."""
    extra = {"tensorrt": TENSORRT, "tensorrt-rtx": TENSORRT_RTX}.get(backend, ())
    return REQUIRED + extra


def isSatisfied(requirement: Requirement) -> bool:
    """True when the package imports here in a version inside ``requirement.versions``."""
    if importlib.util.find_spec(requirement.importName) is None:
        return False
    if not requirement.versions:
        return True
    try:
        installed = importlib.metadata.version(requirement.distribution.split("[")[0])
    except importlib.metadata.PackageNotFoundError:
        return True  # importable but not pip-managed (bundled with Slicer): trust it
    return versionMatches(installed, requirement.versions)


def versionMatches(version: str, specifier: str) -> bool:
    """``version`` inside a pip ``specifier`` such as ``">=1.4,<2"`` (local tags like ``+cpu`` ignored)."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version.split("+")[0]) in SpecifierSet(specifier)
    except ImportError:  # no packaging module: accept what imports
        return True


def missingRequirements(backend: str = "openvino") -> list[Requirement]:
    """The requirements for ``backend`` that are absent or outside their version range."""
    return [requirement for requirement in requirementsFor(backend) if not isSatisfied(requirement)]


def describeMissing(missing: list[Requirement]) -> str:
    """What an install will do, for the confirmation question and the log."""
    lines = [f"  {r.pipSpecifier}  ({r.purpose})" for r in missing]
    return "PTQSegment needs these Python packages, which will be downloaded and installed into Slicer:\n" + "\n".join(lines)


def installRequirements(missing: list[Requirement], confirm: Callable[[str], bool],
                        pipInstall: Callable[[str], None] | None = None, showStatus: Callable[[str], None] = log.info) -> bool:
    """Install ``missing`` after ``confirm(description)`` agrees; returns False when the user declined.

    ``pipInstall`` defaults to ``slicer.util.pip_install``. torch is installed by ``PyTorchUtils`` when the
    PyTorch extension is there, else by pip.
    """
    if not missing:
        return True
    if not confirm(describeMissing(missing)):
        return False
    if pipInstall is None:
        import slicer

        pipInstall = slicer.util.pip_install
    rest = list(missing)
    torch = next((r for r in rest if r.importName == "torch"), None)
    if torch is not None and _installTorchWithPyTorchUtils(torch, showStatus):
        rest.remove(torch)
    for requirement in rest:
        showStatus(f"Installing {requirement.pipSpecifier} ...")
        pipInstall(requirement.pipSpecifier)
    importlib.invalidate_caches()
    return True


def _installTorchWithPyTorchUtils(requirement: Requirement, showStatus) -> bool:
    """True when the PyTorch extension installed torch; False when the extension is absent."""
    try:
        import PyTorchUtils
    except ImportError:
        return False
    showStatus(f"Installing torch{requirement.versions} with the PyTorch extension ...")
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement.versions)
    if torch is None:
        raise RuntimeError("the PyTorch extension did not install torch: install it from the PyTorch module, then try again")
    return True
