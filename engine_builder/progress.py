"""Progress reporting: tqdm bars for people, or JSON lines for a parent process (the Slicer module).

``set_mode("json")`` makes every stage print lines like
``{"event": "progress", "stage": "calibration", "done": 3, "total": 8}`` and
``{"event": "stage", "stage": "quantize", "status": "start"}`` on stdout, flushed, one per line.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_mode = "tqdm"


def set_mode(mode: str) -> None:
    """``tqdm`` (default), ``json`` or ``off``."""
    global _mode
    if mode not in ("tqdm", "json", "off"):
        raise ValueError(mode)
    _mode = mode


def mode() -> str:
    return _mode


def emit(event: str, **fields) -> None:
    """Print one JSON event line (json mode only)."""
    if _mode == "json":
        sys.stdout.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        sys.stdout.flush()


def track(iterable: Iterable[T], stage: str, total: int | None = None, enabled: bool = True, unit: str = "it") -> Iterator[T]:
    """Iterate with a tqdm bar or JSON progress events for ``stage``."""
    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    if _mode == "tqdm" and enabled:
        from tqdm import tqdm

        yield from tqdm(iterable, desc=stage, total=total, unit=unit)
        return
    emit("progress", stage=stage, done=0, total=total)
    for done, item in enumerate(iterable, 1):
        yield item
        emit("progress", stage=stage, done=done, total=total)


class Counter:
    """Counts calls of a step (e.g. sliding windows) towards a known total."""

    def __init__(self, stage: str, total: int, enabled: bool = True):
        self.stage, self.total, self.done = stage, total, 0
        self._bar = None
        if _mode == "tqdm" and enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=stage, unit="win")

    def step(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        emit("progress", stage=self.stage, done=self.done, total=self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def stage(name: str):
    """Announce the start and end of a stage without a count (quantization, export, ...)."""
    emit("stage", stage=name, status="start")
    yield
    emit("stage", stage=name, status="done")
