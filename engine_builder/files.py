"""Files on disk: SHA-256 of files, atomic writes, and the temporaries that killed processes leave behind.

Everything the project writes (engine directories, label maps, the calibration cache, charts, timing caches) is
written under a hidden temporary name beside its target and renamed into place, so a reader never sees half a
file and an interrupted run leaves no half-made output. A temporary's name carries the writer's process id and
job token, ``.<target name>.partial-<pid>-<token>-<ns><suffix>``:

- the next writer into the same folder removes temporaries whose process is gone (``remove_stale_partials``);
- a parent process that started the writer (the Slicer module) removes what its job left by the token
  (``PTQSEG_JOB_TOKEN``), which it chooses itself, where the pid would be the launcher's and not the writer's.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from pathlib import Path

from .errors import PTQError

PARTIAL = ".partial-"
#: Environment variable through which a parent process names the job of a ``ptqseg`` child.
JOB_TOKEN_ENV = "PTQSEG_JOB_TOKEN"
#: An engine directory moved aside while a newer one takes its place; restored if its mover was killed.
_ASIDE = "old"
_WINDOWS_STALE_SECONDS = 6 * 3600
_TOKEN_CHARS = re.compile(r"[^A-Za-z0-9_]")
_OCCUPIED = {errno.ENOTEMPTY, errno.EEXIST, errno.EACCES, errno.EPERM}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    update_digest(digest, Path(path))
    return digest.hexdigest()


def update_digest(digest, path: Path) -> None:
    """Feed the bytes of ``path`` into ``digest``."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def job_token() -> str:
    """The job token of this process (``PTQSEG_JOB_TOKEN``, letters, digits and ``_`` only), or ``x``."""
    return _TOKEN_CHARS.sub("", os.environ.get(JOB_TOKEN_ENV, ""))[:40] or "x"


def partial_path(target: Path, tag: str = "") -> Path:
    """A fresh hidden temporary name beside ``target`` (same folder, so the final rename is atomic).

    The target's volume suffix is repeated at the end: writers that choose the format by suffix (SimpleITK)
    write the right one.
    """
    target = Path(target)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".gz") else target.suffix
    tag = f"{tag}-" if tag else ""
    return target.with_name(f".{target.name}{PARTIAL}{os.getpid()}-{job_token()}-{tag}{time.monotonic_ns()}{suffix}")


def partial_owner(path: Path) -> tuple[int, str] | None:
    """(pid, token) of a temporary named by ``partial_path``; None for any other name."""
    name = Path(path).name
    if not name.startswith(".") or PARTIAL not in name:
        return None
    pid, _, rest = name.rsplit(PARTIAL, 1)[1].partition("-")
    if not pid.isdigit():
        return None
    return int(pid), rest.partition("-")[0]


def _target_of(path: Path) -> Path:
    """The target a temporary (or moved-aside engine) belongs to."""
    return path.with_name(path.name[1:].rsplit(PARTIAL, 1)[0])


def remove_stale_partials(folder: str | os.PathLike) -> None:
    """Delete temporaries in ``folder`` whose writing process is gone; put back an engine that was moved aside
    by a process killed before its replacement arrived."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob(f".*{PARTIAL}*"):
        owner = partial_owner(path)
        if owner is None or _process_alive(owner[0], path):
            continue
        target = _target_of(path)
        if f"-{_ASIDE}-" in path.name and path.is_dir() and not target.exists():
            try:
                os.rename(path, target)
                continue
            except OSError:
                pass
        remove_path(path)


def job_partials(folder: str | os.PathLike, token: str) -> list[Path]:
    """The temporaries that a job with ``token`` left in ``folder`` (a killed child cannot remove its own)."""
    if not token or _TOKEN_CHARS.search(token):
        return []
    return sorted(p for p in Path(folder).glob(f".*{PARTIAL}*") if (partial_owner(p) or (0, ""))[1] == token)


def remove_job_partials(folder: str | os.PathLike, token: str) -> list[Path]:
    """Delete the temporaries a job with ``token`` left in ``folder`` (it was cancelled); returns them."""
    removed = job_partials(folder, token)
    for path in removed:
        remove_path(path)
    return removed


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _process_alive(pid: int, path: Path) -> bool:
    """Whether the process that owns ``path`` may still be running."""
    if pid == os.getpid():
        return True
    if os.name == "nt":
        # os.kill(pid, 0) would terminate the process on Windows: judge by age there instead.
        try:
            return time.time() - path.stat().st_mtime < _WINDOWS_STALE_SECONDS
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def commit_dir(tmp: Path, target: Path, attempts: int = 50) -> Path:
    """Move the finished directory ``tmp`` into place as ``target``, replacing an older one there.

    Safe when several processes commit the same target at once (the last one stays, none fails) and when a
    process is killed between its two renames (the older directory, moved aside, is put back by the next
    ``remove_stale_partials``). ``is_replaceable(target)`` must be checked by the caller.
    """
    target, tmp = Path(target), Path(tmp)
    moved_aside = []
    try:
        for _ in range(attempts):
            try:
                os.replace(tmp, target)
                return target
            except OSError as exc:
                if exc.errno not in _OCCUPIED and not isinstance(exc, (FileExistsError, PermissionError)):
                    raise
            aside = partial_path(target, _ASIDE)
            try:
                os.replace(target, aside)
                moved_aside.append(aside)
            except FileNotFoundError:
                pass  # another process moved it first: try again
        raise PTQError(f"could not put {target.name} in place: other processes keep replacing it; try again")
    finally:
        for aside in moved_aside:
            remove_path(aside)
