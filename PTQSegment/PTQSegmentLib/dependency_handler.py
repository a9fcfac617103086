"""The Python packages engine_builder needs in Slicer's Python, checked at first use and installed with consent.

The list is the module's ``Resources/requirements*.txt`` files, the same ones ``pyproject.toml`` reads for the
``ptqsegment`` package and its ``[tensorrt]`` / ``[tensorrt-rtx]`` extras: one list. Nothing is installed at
import time. ``missingRequirements()`` says what is absent or outside its version range, reading package metadata
only; ``installRequirements()`` installs exactly those, after the caller's ``confirm`` callback (the panel's
question) says yes, with ``slicer.packaging.pip_install`` where the Slicer version has it (5.12 and newer) and
``slicer.util.pip_install`` otherwise. torch goes through the PyTorch extension's installer (``PyTorchUtils``)
when that extension is present, as the Slicer AI extensions do: it picks the CUDA or CPU build that fits the
machine's driver instead of pulling the newest CUDA wheel from the index.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
#: The requirements files of each backend, in install order (the core list first). pyproject.toml names the
#: same files for the package and its extras.
REQUIREMENT_FILES = {
    "openvino": ("requirements.txt",),
    "torch": ("requirements.txt",),
    "tensorrt": ("requirements.txt", "requirements-modelopt.txt", "requirements-tensorrt.txt"),
    "tensorrt-rtx": ("requirements.txt", "requirements-modelopt.txt", "requirements-tensorrt-rtx.txt"),
}


@dataclass(frozen=True)
class Requirement:
    """One line of a requirements file: the distribution, its versions (pip syntax) and what it is for."""

    distribution: str
    versions: str = ""
    marker: str = ""
    purpose: str = ""

    @property
    def pipSpecifier(self) -> str:
        """The line as pip takes it (``monai>=1.4,<2``)."""
        return f"{self.distribution}{self.versions}" + (f"; {self.marker}" if self.marker else "")


def readRequirements(path: Path) -> list[Requirement]:
    """The requirements in a requirements file. A comment line right above a requirement is its purpose."""
    from packaging.requirements import Requirement as PackagingRequirement

    requirements, comment = [], ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            comment = line.lstrip("# ")
            continue
        if line:
            parsed = PackagingRequirement(line)
            name = parsed.name + (f"[{','.join(sorted(parsed.extras))}]" if parsed.extras else "")
            requirements.append(Requirement(name, str(parsed.specifier), str(parsed.marker or ""), comment))
        comment = ""
    return requirements


def requirementsFor(backend: str) -> list[Requirement]:
    """The packages a build with ``backend`` needs (``auto`` and unknown names: the CPU list), without repeats."""
    found: dict[str, Requirement] = {}
    for name in REQUIREMENT_FILES.get(backend, REQUIREMENT_FILES["openvino"]):
        for requirement in readRequirements(RESOURCES / name):
            found.setdefault(requirement.distribution, requirement)
    return list(found.values())


def isSatisfied(requirement: Requirement) -> bool:
    """True when the distribution is installed here in a version inside ``requirement.versions`` (or the
    requirement's marker excludes this Python). Reads metadata; imports nothing."""
    from packaging.markers import Marker
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if requirement.marker and not Marker(requirement.marker).evaluate():
        return True
    distribution = requirement.distribution.split("[")[0]
    try:
        installed = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        # Slicer builds a few packages itself (SimpleITK) without pip metadata: importable under its own name is enough.
        return importlib.util.find_spec(distribution.replace("-", "_")) is not None
    try:
        return SpecifierSet(requirement.versions).contains(Version(installed), prereleases=True)
    except InvalidVersion:
        return True  # a local build with a non-standard version string: trust it


def missingRequirements(backend: str = "openvino") -> list[Requirement]:
    """The requirements for ``backend`` that are absent or outside their version range."""
    return [requirement for requirement in requirementsFor(backend) if not isSatisfied(requirement)]


def describeMissing(missing: list[Requirement]) -> str:
    """What an install will do, for the confirmation question and the log."""
    lines = [f"  {r.pipSpecifier}" + (f"  ({r.purpose})" if r.purpose else "") for r in missing]
    return "PTQSegment needs these Python packages, which will be downloaded and installed into Slicer:\n" + "\n".join(lines)


def installRequirements(missing: list[Requirement], confirm: Callable[[str], bool],
                        pipInstall: Callable[[list[str]], None] | None = None, showStatus: Callable[[str], None] = log.info) -> bool:
    """Install ``missing`` after ``confirm(description)`` agrees; returns False when the user declined.

    ``pipInstall`` (a list of pip specifiers in, one pip run) defaults to Slicer's installer (``slicerPipInstall``).
    torch is installed by ``PyTorchUtils`` when the PyTorch extension is there, else by pip with the rest.
    """
    if not missing:
        return True
    if not confirm(describeMissing(missing)):
        return False
    pipInstall = pipInstall or slicerPipInstall
    rest = list(missing)
    torch = next((r for r in rest if r.distribution == "torch"), None)
    if torch is not None and _installTorchWithPyTorchUtils(torch, showStatus):
        rest.remove(torch)
    if rest:
        showStatus("Installing " + ", ".join(r.pipSpecifier for r in rest) + " ...")
        pipInstall([r.pipSpecifier for r in rest])  # one pip run: one consistent resolution
    importlib.invalidate_caches()
    return True


def slicerPipInstall(specifiers: list[str]) -> None:
    """Install with ``slicer.packaging.pip_install`` (Slicer 5.12+: progress dialog) or ``slicer.util.pip_install``."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_install"):
        packaging.pip_install(specifiers, requester="PTQSegment")
        return
    import slicer

    slicer.util.pip_install(specifiers)


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
