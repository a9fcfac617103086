"""Built engines on disk, and why one can no longer be trusted (stale). Reads JSON and package metadata only:
listing engines imports no runtime (torch, OpenVINO, NNCF, TensorRT) into Slicer's process.

Every ``ptqseg build`` leaves its engine in the cache (``<cache>/engines/<key>``), so the cache is the list of
engines built on this machine. An engine is stale when what it was built for has changed:

- its backend's runtime is missing here or has another version (an OpenVINO IR or a TensorRT plan is tied to it),
  read from the installed packages' metadata (``engine_builder.capabilities``);
- it was built on another GPU (TensorRT plans are specific to a GPU model), judged once the child process has
  said which GPU is here (``ptqseg capabilities``);
- the weights it was built from changed (the packaged file, or the file the user names, hashes differently).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from engine_builder.capabilities import built_runtime_version, installed_runtime_versions


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


def staleReasons(manifest: dict, weightsPath: str | Path | None = None, runtimeVersions: dict | None = None,
                 capabilities: dict | None = None) -> list[str]:
    """Why an engine built with ``manifest`` should be rebuilt on this machine (empty: it is current).

    ``weightsPath`` is the weights file the user means to use for the engine's model (None: the packaged weights,
    when the model has them); ``runtimeVersions`` is ``installed_runtime_versions()`` (read now when None);
    ``capabilities`` is the child process's answer (``ptqseg capabilities``), None while it is not known: then the
    GPU an engine was built on is not compared.
    """
    reasons = []
    backend = manifest["backend"]
    installed = (installed_runtime_versions() if runtimeVersions is None else runtimeVersions).get(backend)
    built = built_runtime_version(manifest)
    if installed is None:
        reasons.append(f"backend {backend} is not installed here")
    elif installed != built:
        reasons.append(f"built with {built}, this machine has {installed}")
    reason = _gpuReason(manifest, capabilities)
    if reason:
        reasons.append(reason)
    reason = _weightsReason(manifest, weightsPath)
    if reason:
        reasons.append(reason)
    return reasons


def _gpuReason(manifest: dict, capabilities: dict | None) -> str | None:
    built = (manifest.get("runs_as") or {}).get("gpu")  # TensorRT engines: {"name", "compute_capability"}
    if not isinstance(built, dict) or capabilities is None:
        return None
    here = capabilities.get("gpu")
    if here is None:
        return f"built on {built.get('name')}, this machine has no NVIDIA GPU that torch can use"
    if built.get("compute_capability") != here.get("compute_capability"):
        return (f"built on {built.get('name')} (compute capability {built.get('compute_capability')}), this machine has "
                f"{here.get('name')} ({here.get('compute_capability')}): it will be rebuilt on first use")
    return None


def _weightsReason(manifest: dict, weightsPath) -> str | None:
    built = (manifest.get("weights") or {}).get("sha256")
    if not built:
        return None  # random-init speed engines have no weights to compare
    if weightsPath is None:
        source = manifest["spec"].get("weights") or {}
        if source.get("kind") != "packaged" or (manifest.get("weights") or {}).get("file") != Path(source["path"]).name:
            return None  # the user's own weights file: nothing to compare with unless the caller names it
        from engine_builder.models import PACKAGED_WEIGHTS

        weightsPath = PACKAGED_WEIGHTS / source["path"]
    weightsPath = Path(weightsPath)
    if not weightsPath.is_file():
        return f"weights file {weightsPath.name} is missing"
    if fileSha256(weightsPath) != built:
        return f"weights {weightsPath.name} changed since the build"
    return None


def listEngines(folders, weightsPaths: dict[str, str | Path] | None = None, capabilities: dict | None = None) -> list[EngineRecord]:
    """Engines directly inside ``folders`` (newest first), each checked for staleness.

    ``weightsPaths`` maps a model name to the weights file the user chose for it; ``capabilities`` as in
    ``staleReasons``. Folders that are not engines, and engines written by another engine format, are left out.
    """
    from engine_builder.artifact import read_manifest
    from engine_builder.errors import PTQError

    runtimeVersions = installed_runtime_versions()  # read once per listing, never cached: an install changes it
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
            records.append(EngineRecord(path, manifest, staleReasons(manifest, weights, runtimeVersions, capabilities)))
    records.sort(key=lambda record: str(record.manifest.get("created", "")), reverse=True)
    return records
