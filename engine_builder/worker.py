"""A persistent segmentation worker: the engine is loaded once, then volumes are segmented one after another.

``Segmenter`` is the worker itself (used in-process by a sequential job, inside each ``--workers`` process and
inside each Ray actor). ``serve`` puts it behind a JSON-lines protocol, ``ptqseg worker --engine ENGINE``:

- on start, after the engine is loaded: ``{"event": "ready", "worker": "host:pid", "node": "host", "engine": ...}``;
  an engine that cannot be loaded gives ``{"event": "error", "message": ...}`` and exit code 2;
- each line on stdin is one request ``{"id": ..., "input": PATH, "output": PATH, "series": UID or null}``, answered
  by one line ``{"event": "result", "id": ..., "status": "ok"|"failed", "output", "seconds", "error",
  "timings_ms", "windows", "warnings", "worker", "node"}``; a bad request or a bad file gives a ``failed`` result
  and the worker goes on serving;
- the worker stays up until stdin closes, then exits 0; SIGTERM stops it at once (exit 130), removing the
  temporary of a label map it was writing.

The protocol is written to the process's original stdout; anything else that writes to file descriptor 1 (a
native library) is sent to stderr, so the protocol stream carries only events.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO

from .errors import PTQError, without_subject
from .io import Source

log = logging.getLogger(__name__)


def default_node() -> str:
    """This machine's name, as the report shows it."""
    return socket.gethostname()


class Segmenter:
    """One engine, loaded once, segmenting file after file; every outcome is a plain JSON-able dict.

    Args:
        engine_dir: the engine directory (checked and loaded with ``pipeline.open_engine``).
        threads: CPU threads for the engine and for torch's stitching (None: the runtime's default, all cores).
        device: ``cpu`` or ``cuda``.
        memory_budget: bytes; volumes whose resampled grid needs more are refused (None: the default budget).
        node: the machine's name in reports (default: the host name).
        verify: windows of each scan checked against the engine's FP32 reference (``verify.py``; 0: none).
        min_agreement: the threshold of that check (None: the engine's build threshold).
    """

    def __init__(self, engine_dir: str | os.PathLike, threads: int | None = None, device: str = "cpu",
                 memory_budget: int | None = None, node: str | None = None, verify: int = 0,
                 min_agreement: float | None = None):
        from .engines import open_engine
        from .verify import scan_check

        self.engine_dir = str(engine_dir)
        self.engine, self.spec, self.manifest = open_engine(engine_dir, threads=threads, device=device)
        if threads and "torch" in sys.modules:  # torch stitches only for GPU engines; the CPU path has no torch
            sys.modules["torch"].set_num_threads(int(threads))
        self.check = scan_check(engine_dir, self.engine, self.spec, self.manifest, verify, min_agreement, threads)
        self.memory_budget = memory_budget
        self.node = node or default_node()
        self.worker = f"{self.node}:{os.getpid()}"

    def describe(self) -> dict:
        """Who this worker is: ``worker`` (node:pid), ``node``, ``engine``."""
        return {"worker": self.worker, "node": self.node, "engine": self.engine_dir}

    def segment(self, source: Source, output: str | os.PathLike, progress: bool = False) -> dict:
        """Segment ``source`` into ``output``; a PTQError (bad file, odd volume) becomes a ``failed`` result.

        Returns ``status``, ``output``, ``seconds`` (wall clock), ``error`` (one line or ""), ``timings_ms``
        per stage, ``windows``, ``warnings``, ``worker``, ``node``.
        """
        from .inference import segment_file
        from .outputs import check_not_an_input
        from .sources import source_files

        output = Path(output)
        started = time.perf_counter()
        result = {"status": "ok", "output": str(output), "error": "", "timings_ms": {}, "windows": 0, "warnings": [],
                  "worker": self.worker, "node": self.node}
        try:
            check_not_an_input(output, source_files(source))
            segmentation = segment_file(source, output, self.engine, self.spec, progress=progress,
                                        memory_budget=self.memory_budget, check=self.check)
        except PTQError as exc:
            result.update(status="failed", error=without_subject(" ".join(str(exc).split()), source.path.name))
        except Exception as exc:  # noqa: BLE001  an unforeseen failure on one volume must not end a cohort run
            result.update(status="failed", error=f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        else:
            result.update(timings_ms=segmentation.timings_ms, windows=segmentation.windows,
                          warnings=segmentation.warnings, verification=segmentation.verification)
        result["seconds"] = round(time.perf_counter() - started, 3)
        return result


def serve(segmenter_factory, requests: IO[str], events: IO[str]) -> int:
    """Answer JSON-line requests from ``requests`` with result events on ``events`` until ``requests`` closes.

    ``segmenter_factory()`` loads the engine (a PTQError there is reported as an ``error`` event and raised).
    Returns 0.
    """

    def send(event: dict) -> None:
        events.write(json.dumps(event, default=str) + "\n")
        events.flush()

    try:
        segmenter = segmenter_factory()
    except PTQError as exc:
        send({"event": "error", "message": " ".join(str(exc).split())})
        raise
    send({"event": "ready", **segmenter.describe()})
    for line in requests:
        if line.strip():
            send({"event": "result", **_answer(segmenter, line)})
    return 0


def _answer(segmenter: Segmenter, line: str) -> dict:
    """The result for one request line; a malformed request is a ``failed`` result saying what is wrong."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return _bad_request(segmenter, None, f"not JSON ({exc})")
    if not isinstance(request, dict):
        return _bad_request(segmenter, None, "a request is a JSON object")
    if not isinstance(request.get("input"), str) or not isinstance(request.get("output"), str):
        return _bad_request(segmenter, request.get("id"), "'input' and 'output' must be paths (strings)")
    if request.get("series") is not None and not isinstance(request["series"], str):
        return _bad_request(segmenter, request.get("id"), "'series' must be a Series Instance UID (string) or null")
    return {"id": request.get("id"), **segmenter.segment(Source(Path(request["input"]), request.get("series")),
                                                         request["output"])}


def _bad_request(segmenter: Segmenter, request_id, problem: str) -> dict:
    return {"id": request_id, "status": "failed", "output": None, "error": f"bad request: {problem}", "seconds": 0.0,
            "timings_ms": {}, "windows": 0, "warnings": [], "worker": segmenter.worker, "node": segmenter.node}


def protocol_stream() -> IO[str]:
    """The process's stdout for protocol events; file descriptor 1 is pointed at stderr for everything else."""
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return events


def stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so a label map being written has its temporary removed on the way out."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
