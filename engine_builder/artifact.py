"""The engine directory: the backend's files + ``manifest.json``, written atomically, and the engine cache.

A build writes into a hidden temporary directory beside the target and renames it into place, so an
interrupted build leaves no half-made engine (stale temporaries are removed by the next build). A parent
process that runs builds (the Slicer module) names each one by a job token in ``$PTQSEG_JOB_TOKEN``: the
temporary directory carries it, so the parent can remove what a killed build left (``job_partials``). The cache
key covers everything that changes the engine: weights hash, spec, calibration set hash, method, options,
backend and its version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .errors import PTQError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_PARTIAL = ".partial-"
#: Environment variable through which a parent process names a build's job (letters and digits).
JOB_TOKEN_ENV = "PTQSEG_JOB_TOKEN"
_WINDOWS_STALE_SECONDS = 6 * 3600


def default_cache_root() -> Path:
    """``$PTQSEG_CACHE`` or ``~/.cache/ptqsegment``."""
    return Path(os.environ.get("PTQSEG_CACHE", Path.home() / ".cache" / "ptqsegment"))


def cache_key(**parts) -> str:
    """A stable hash of the named parts (strings, numbers, lists)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def temporary_dir_for(target: Path) -> Path:
    """A fresh hidden directory beside ``target`` (same filesystem, so the final rename is atomic)."""
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PTQError(f"cannot create {parent} ({exc.strerror}): choose a writable --out") from None
    if not os.access(parent, os.W_OK):
        raise PTQError(f"{parent} is not writable: choose a writable --out")
    remove_stale_partials(parent)
    token = job_token()
    owner = f"{os.getpid()}-{token}" if token else str(os.getpid())  # the pid first: stale detection reads it
    tmp = parent / f".{target.name}{_PARTIAL}{owner}-{time.monotonic_ns()}"
    tmp.mkdir()
    return tmp


def job_token() -> str:
    """The job token of this process (``$PTQSEG_JOB_TOKEN``, letters and digits kept), or "" when none was given."""
    return "".join(c for c in os.environ.get(JOB_TOKEN_ENV, "") if c.isalnum())


def job_partials(folder: str | os.PathLike, token: str) -> list[Path]:
    """The temporary directories that builds of job ``token`` left in ``folder`` (a killed build cannot remove its own)."""
    if not token or not token.isalnum():
        return []
    return sorted(Path(folder).glob(f".*{_PARTIAL}*-{token}-*"))


def remove_stale_partials(parent: Path) -> None:
    """Delete temporaries left by builds whose process is gone."""
    for path in Path(parent).glob(f".*{_PARTIAL}*"):
        try:
            pid = int(path.name.split(_PARTIAL)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not _build_alive(pid, path):
            shutil.rmtree(path, ignore_errors=True)


def _build_alive(pid: int, path: Path) -> bool:
    """Whether the build that owns ``path`` may still be running."""
    if os.name == "nt":
        # os.kill(pid, 0) would terminate the process on Windows: judge by age there instead.
        return time.time() - path.stat().st_mtime < _WINDOWS_STALE_SECONDS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def commit_dir(tmp: Path, target: Path) -> Path:
    """Move the finished ``tmp`` into place as ``target``, replacing an older engine there."""
    target = Path(target)
    if target.exists():
        if not (target / MANIFEST).exists() and any(target.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise PTQError(f"{target} exists and is not an engine directory: choose another --out")
        old = target.with_name(f".{target.name}{_PARTIAL}{os.getpid()}-old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def write_manifest(folder: Path, manifest: dict) -> None:
    with open(Path(folder) / MANIFEST, "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False, default=str)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an engine directory; a clear error when ``folder`` is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise PTQError(f"{folder} is not an engine directory (no {MANIFEST}): build one with 'ptqseg build'")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PTQError(f"{path} is damaged ({exc.msg}): rebuild the engine") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PTQError(f"{folder} was written by another engine format ({manifest.get('format_version')}): rebuild it")
    return manifest


def copy_engine(source: Path, target: Path) -> Path:
    """Copy a finished engine directory to ``target`` atomically."""
    tmp = temporary_dir_for(target)
    shutil.copytree(source, tmp, dirs_exist_ok=True)
    return commit_dir(tmp, target)
