"""Find the volumes in a folder (recursively): volume files and DICOM series, each one ``io.Source``.

Used for calibration folders and for segmenting a folder. Hidden files are ignored, non-images are reported as
skipped, a DICOM folder with several series gives one source per series, and an ``exclude`` subtree (a folder
run's output folder inside its input folder) is never searched, so label maps are never read as scans.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import PTQError
from .files import update_digest
from .io import Source, dicom_series, is_volume_file

_DICOM_SUFFIXES = (".dcm", ".ima", "")


def find_volumes(folder: str | os.PathLike, purpose: str = "calibration folder",
                 exclude: str | os.PathLike | None = None) -> tuple[list[Source], list[tuple[str, str]]]:
    """Recursively list volume files and DICOM series under ``folder``.

    Returns (sources, skipped) where skipped holds ``(name, reason)`` for files that are not images.
    Raises PTQError (naming the ``purpose``: "calibration folder", "input folder") for a missing or empty folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise PTQError(f"{purpose} {folder} {state}: pass a folder of volumes (NIfTI, NRRD or DICOM)")
    excluded = Path(exclude).resolve() if exclude is not None else None
    sources: list[Source] = []
    skipped: list[tuple[str, str]] = []
    n_files = 0
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != excluded)
        n_files += len(files)
        others = []
        for name in sorted(files):
            if name.startswith("."):
                continue
            if is_volume_file(name):
                sources.append(Source(root_path / name))
            else:
                others.append(root_path / name)
        if any(p.suffix.lower() in _DICOM_SUFFIXES for p in others):
            series = dicom_series(root_path)
            sources += [Source(root_path, s.uid if len(series) > 1 else None) for s in series]
            in_series = {f for s in series for f in s.files}
            others = [p for p in others if str(p) not in in_series]
        skipped += [(str(p.relative_to(folder)), "not an image") for p in others]
    if n_files == 0:
        raise PTQError(f"{purpose} {folder} is empty: put volumes in it (NIfTI, NRRD or DICOM)")
    return sources, skipped


def source_name(source: Source, folder: str | os.PathLike) -> str:
    """``source`` relative to ``folder``, with its series UID where the folder holds several series."""
    relative = str(source.path.relative_to(folder)) if source.path != Path(folder) else source.path.name
    return relative if source.series_uid is None else f"{relative} [series {source.series_uid or '(no UID)'}]"


def source_files(source: Source) -> list[Path]:
    """The files a source reads: the file itself, or the files of its DICOM series."""
    if not source.path.is_dir():
        return [source.path]
    series = [s for s in dicom_series(source.path) if source.series_uid is None or s.uid == source.series_uid]
    return sorted(Path(f) for f in series[0].files) if series else []


def hash_sources(sources: list[Source]) -> str:
    """SHA-256 over the bytes of every file the sources read (what the set *is*, independent of paths)."""
    digest = hashlib.sha256()
    for source in sources:
        for file in source_files(source):
            update_digest(digest, file)
    return digest.hexdigest()
