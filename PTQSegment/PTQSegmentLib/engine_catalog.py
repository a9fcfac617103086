"""Built engines on disk, and why one can no longer be trusted (stale).

Every ``ptqseg build`` leaves a copy of its engine in the cache (``<cache>/engines/<key>``), so the cache is the
list of engines built on this machine. An engine is stale when what it was built for has changed:

- its backend's library is missing here or has another version (an OpenVINO IR or a TensorRT plan is tied to it);
- it was built on another GPU (TensorRT plans are specific to a GPU model);
- the weights it was built from changed (the packaged file, or the file the user names, hashes differently).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

#: Backends whose engines only run on an NVIDIA GPU.
GPU_BACKENDS = ("tensorrt", "tensorrt-rtx")


@dataclass(frozen=True)
class GpuInfo:
    """An NVIDIA GPU as ``nvidia-smi`` names it, with its compute capability (``"8.9"``)."""

    name: str
    computeCapability: str = ""

    @property
    def isRtx(self) -> bool:
        return "RTX" in self.name.upper()

    @property
    def capability(self) -> tuple[int, int]:
        major, _, minor = self.computeCapability.partition(".")
        return (int(major), int(minor or 0)) if major.isdigit() else (0, 0)


@lru_cache(maxsize=1)
def detectGpu() -> GpuInfo | None:
    """The first NVIDIA GPU (through ``nvidia-smi``, no CUDA import), or None when there is none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        output = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = output.strip().splitlines()[0] if output.strip() else ""
    if not first:
        return None
    name, _, capability = first.partition(",")
    return GpuInfo(name.strip(), capability.strip())


@lru_cache(maxsize=None)
def backendVersion(name: str) -> str | None:
    """The installed version string of backend ``name`` (as manifests record it), or None when it cannot load here."""
    try:
        from engine_builder.backends import get_backend

        return get_backend(name).version()
    except Exception:  # a missing or broken runtime library: the engine cannot run here
        return None


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fileSha256(path: Path) -> str:
    """SHA-256 of a file, cached while its size and modification time stay the same."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@dataclass
class EngineRecord:
    """A built engine: its directory, its manifest and the reasons it is stale (empty when it is usable)."""

    path: Path
    manifest: dict
    staleReasons: list[str] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        return bool(self.staleReasons)

    @property
    def model(self) -> str:
        return self.manifest["spec"]["name"]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def title(self) -> str:
        """One line for the engine list: model, backend, precision, calibration set, date, and STALE."""
        calibration = self.manifest.get("calibration") or {}
        tag = f" calib {calibration['set_hash'][:8]}" if calibration.get("set_hash") else ""
        created = str(self.manifest.get("created", ""))[:16].replace("T", " ")
        return (f"{self.model} | {self.backend} {self.precision}{tag} | {created}"
                + (" | STALE: " + "; ".join(self.staleReasons) if self.stale else ""))


def staleReasons(manifest: dict, weightsPath: str | Path | None = None, gpu: GpuInfo | None = None) -> list[str]:
    """Why an engine built with ``manifest`` should be rebuilt on this machine (empty: it is current).

    ``weightsPath`` is the weights file the user means to use for the engine's model (None: the packaged weights,
    when the model has them); ``gpu`` the GPU here (``detectGpu()``).
    """
    reasons = []
    current = backendVersion(manifest["backend"])
    if current is None:
        reasons.append(f"backend {manifest['backend']} is not installed here")
    elif current != manifest.get("backend_version"):
        reasons.append(f"built with {manifest.get('backend_version')}, this machine has {current}")
    built_gpu = (manifest.get("runs_as") or {}).get("gpu")  # TensorRT engines: {"name", "compute_capability"}
    if isinstance(built_gpu, dict):
        if gpu is None:
            reasons.append(f"built on {built_gpu.get('name')}, this machine has no NVIDIA GPU")
        elif built_gpu.get("compute_capability") != gpu.computeCapability:
            reasons.append(f"built on {built_gpu.get('name')} (compute capability {built_gpu.get('compute_capability')}), "
                           f"this machine has {gpu.name} ({gpu.computeCapability}): it will be rebuilt on first use")
    reason = _weightsReason(manifest, weightsPath)
    if reason:
        reasons.append(reason)
    return reasons


def _weightsReason(manifest: dict, weightsPath) -> str | None:
    built = (manifest.get("weights") or {}).get("sha256")
    if not built:
        return None  # random-init speed engines have no weights to compare
    if weightsPath is None:
        source = manifest["spec"].get("weights") or {}
        if source.get("kind") != "packaged" or (manifest.get("weights") or {}).get("file") != Path(source["path"]).name:
            return None  # the user's own weights file: nothing to compare with unless the caller names it
        from engine_builder.weights import PACKAGED_WEIGHTS

        weightsPath = PACKAGED_WEIGHTS / source["path"]
    weightsPath = Path(weightsPath)
    if not weightsPath.is_file():
        return f"weights file {weightsPath.name} is missing"
    if fileSha256(weightsPath) != built:
        return f"weights {weightsPath.name} changed since the build"
    return None


def listEngines(folders, weightsPaths: dict[str, str | Path] | None = None, gpu: GpuInfo | None = None) -> list[EngineRecord]:
    """Engines directly inside ``folders`` (newest first), each checked for staleness.

    ``weightsPaths`` maps a model name to the weights file the user chose for it. Folders that are not engines,
    and engines written by another engine format, are left out.
    """
    from engine_builder.artifact import read_manifest
    from engine_builder.errors import PTQError

    records, seen = [], set()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                manifest = read_manifest(path)
            except PTQError:
                continue
            key = manifest.get("cache_key") or str(path)
            if key in seen:
                continue
            seen.add(key)
            weights = (weightsPaths or {}).get(manifest["spec"]["name"])
            records.append(EngineRecord(path, manifest, staleReasons(manifest, weights, gpu)))
    records.sort(key=lambda record: str(record.manifest.get("created", "")), reverse=True)
    return records
