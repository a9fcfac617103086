"""Wall-clock stage timings (milliseconds), light enough for the Slicer module's own process."""

from __future__ import annotations

import time
from contextlib import contextmanager


class StageTimer:
    """Collects wall-clock milliseconds per named stage."""

    def __init__(self, timings: dict[str, float] | None = None):
        self.timings = timings if timings is not None else {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + (time.perf_counter() - start) * 1e3
