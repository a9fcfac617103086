"""Where results may be written: never onto an input, always somewhere writable, checked before any work.

A label map written over the CT it came from destroys a patient's image; a folder run whose output folder is its
input folder would, on the next run, segment its own label maps as scans. So before an engine is even loaded:

- an output file must not be an input file (same path after resolving ``..`` and symbolic links, or the same
  file through a hard link), must carry a volume suffix, and its folder must be creatable and writable;
- an output folder must not be the input folder; inside it, it is allowed and left out of the input search.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PTQError
from .io import VOLUME_SUFFIXES, is_volume_file


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: equal resolved paths, or one inode (hard links)."""
    a, b = Path(a), Path(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(output: Path, inputs: list[Path], what: str = "output") -> None:
    """PTQError when ``output`` is one of ``inputs`` (an input is never written to)."""
    for source in inputs:
        if same_file(output, source):
            raise PTQError(f"{what} {output} is the input {source}: a scan is never overwritten; choose another {what} path")


def check_writable_file(output: Path, what: str = "--output") -> None:
    """PTQError unless a file can be created at ``output`` (its nearest existing folder is a writable folder)."""
    if output.is_dir():
        raise PTQError(f"{what} {output} is a folder: give a file name such as {output / 'labels.nii.gz'}")
    ancestor = output.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PTQError(f"{what} {output} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise PTQError(f"{what} {output} cannot be created: {ancestor} is not writable")


def check_label_file(output: Path, inputs: list[Path]) -> None:
    """Everything about a label-map output path that can be known before inference."""
    if not is_volume_file(output):
        raise PTQError(f"--output {output}: use a volume suffix ({', '.join(VOLUME_SUFFIXES)})")
    check_not_an_input(output, inputs)
    check_writable_file(output)


def check_output_folder(output: Path, input_folder: Path | None) -> None:
    """A folder or list run's output folder: not a file, writable, and not the input folder (folder runs)."""
    if output.exists() and not output.is_dir():
        raise PTQError(f"--output {output} is a file: a folder or list input needs an output folder")
    if input_folder is not None and os.path.realpath(output) == os.path.realpath(input_folder):
        raise PTQError(f"--output {output} is the input folder: choose another folder (a subfolder such as "
                       f"{input_folder / 'segmentations'} works; it is left out of the input search)")
    check_writable_file(output / "x.nii.gz", "--output")


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it (after resolving)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents
