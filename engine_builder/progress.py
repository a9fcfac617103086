"""Progress reporting: tqdm bars for people, or JSON lines for a parent process (the Slicer module).

``set_mode("json")`` makes every stage print lines like
``{"event": "progress", "stage": "calibration", "done": 3, "total": 8}`` and
``{"event": "stage", "stage": "quantize", "status": "start"}`` on stdout, flushed, one per line.
"""

from __future__ import annotations

import json
import sys
import time
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
    """Counts calls of a step (e.g. sliding windows) towards a known total.

    With ``rate=True`` (a job's volumes) the bar shows ``<unit>/min`` and each JSON event carries ``per_minute``
    and ``eta_s`` (seconds left at the rate so far; None before the first step).
    """

    def __init__(self, stage: str, total: int, enabled: bool = True, unit: str = "win", rate: bool = False):
        self.stage, self.total, self.done, self.unit, self.rate = stage, total, 0, unit, rate
        self._started = time.perf_counter()
        self._bar = None
        if _mode == "tqdm" and enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=stage, unit=unit)

    def step(self, n: int = 1) -> None:
        self.done += n
        speed = self.rate_fields() if self.rate else {}
        if self._bar is not None:
            if speed:
                self._bar.set_postfix_str(f"{speed['per_minute']:.1f} {self.unit}/min", refresh=False)
            self._bar.update(n)
        emit("progress", stage=self.stage, done=self.done, total=self.total, **speed)

    def rate_fields(self) -> dict:
        """``per_minute`` (steps per minute so far) and ``eta_s`` (seconds to the total at that rate)."""
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        per_second = self.done / elapsed
        eta = (self.total - self.done) / per_second if per_second > 0 else None
        return {"per_minute": round(60.0 * per_second, 3), "eta_s": None if eta is None else round(eta, 1)}

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def stage(name: str):
    """Announce the start and end of a stage without a count (quantization, export, ...)."""
    emit("stage", stage=name, status="start")
    yield
    emit("stage", stage=name, status="done")
