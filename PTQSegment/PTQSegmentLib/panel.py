"""What the panel needs besides widgets, without Qt (so that it runs on the ``slicer-core`` wheel in tests):

    describeFailure / reportFailures   any exception of an action as one readable line plus details
    JobRunner                          the panel's one background job: polled from a timer, finished into an
                                       ``Outcome``, cancelled when the scene closes
"""

from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from engine_builder.describe import describe_verification
from engine_builder.errors import PTQError

log = logging.getLogger(__name__)
#: Characters of an exception's message kept in the panel's one line (the details keep everything).
LINE_CHARS = 300


def describeFailure(action: str, exc: BaseException) -> tuple[str, str]:
    """(one line for the status label, details for the log box) of an exception raised by ``action``.

    ``PTQError`` (and so ``InputError``) messages are written for people and stand alone; anything else is a fault
    of the module or a library: the line names the action and the exception, the details hold the traceback.
    """
    message = " ".join(str(exc).split()) or type(exc).__name__
    if len(message) > LINE_CHARS:
        message = message[: LINE_CHARS - 1] + "…"
    if isinstance(exc, PTQError):
        return message, ""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{action} failed: {type(exc).__name__}: {message}", details


@contextmanager
def reportFailures(action: str, show: Callable[[str, str], None]):
    """Run the block; an exception ends it, goes to the log with its traceback, and reaches ``show(line, details)``."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001  every failure of a panel action ends in the panel, none in a traceback only
        line, details = describeFailure(action, exc)
        log.error("PTQSegment: %s", line, exc_info=not isinstance(exc, PTQError))
        show(line, details)


@dataclass
class Outcome:
    """How a background job ended, for the panel.

    Attributes:
        kind: ``build`` or ``segment``; status: ``succeeded``, ``failed`` or ``cancelled``.
        message: one line for the status label; details: the child's output (and a traceback, if any).
        engine: the built ``EngineRecord``; segmentation, timings: the filled node and the ms per stage.
    """

    kind: str
    status: str
    message: str
    details: str = ""
    engine: object = None
    segmentation: object = None
    timings: dict[str, float] = field(default_factory=dict)


class JobRunner:
    """The panel's background job (at most one), scene-aware.

    ``start(job)``, then ``poll()`` from a timer: when the job ends, ``onFinished(outcome)`` is called once with
    what the Logic made of it (a build's engine, a segmentation node) or why it failed. Closing the scene cancels a
    running job (its process tree is stopped and its temporary files removed) and a segmentation finished for the
    old scene is discarded instead of being added to the new one.
    """

    def __init__(self, logic, scene, onFinished: Callable[[Outcome], None]):
        self.logic = logic
        self.scene = scene
        self.onFinished = onFinished
        self.job = None
        self._segmentation = None
        self._sceneClosed = False
        self._observer = scene.AddObserver(scene.StartCloseEvent, self._onSceneStartClose)

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, job, segmentationNode=None) -> None:
        """Follow ``job``; a segment job fills ``segmentationNode`` (None: a new node)."""
        if self.running:
            job.cancel(0)
            raise RuntimeError("a PTQSegment job is already running")
        self.job, self._segmentation, self._sceneClosed = job, segmentationNode, False

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def poll(self) -> list[dict]:
        """The job's new events; calls ``onFinished`` when it has ended."""
        job = self.job
        if job is None:
            return []
        events = job.poll()
        if not job.running:
            self.job = None
            self.onFinished(self._finish(job))
        return events

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop observing the scene; kill a running job's process tree at once and remove what it left (the module
        is being cleaned up: no timer will poll a graceful cancel to its end)."""
        self.scene.RemoveObserver(self._observer)
        job, self.job = self.job, None
        if job is None:
            return
        job.cancel(0)
        try:
            job.wait(timeout_s)
        except TimeoutError:
            log.warning("PTQSegment: the cancelled job's processes did not end within %s s", timeout_s)
        self.logic.discardJob(job)

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        if self.job is not None:
            self._sceneClosed = True
            self.job.cancel()

    def _finish(self, job) -> Outcome:
        details = job.process.details
        if self._sceneClosed and job.kind == "segment":
            self.logic.discardJob(job)
            return Outcome(job.kind, "cancelled", "The scene was closed: the segmentation was cancelled.", details)
        action = "Build" if job.kind == "build" else "Segmentation"
        try:
            if job.kind == "build":
                record = self.logic.finishBuild(job)
                return Outcome("build", "succeeded", f"Engine ready: {record.title}", details, engine=record)
            node, timings = self.logic.finishSegment(job, self._segmentation)
            check = describe_verification(job.verification)
            return Outcome("segment", "succeeded", f"Segmented {job.volumeNode.GetName()}." + (f" {check}." if check else ""),
                           details, segmentation=node, timings=timings)
        except Exception as exc:  # noqa: BLE001  the panel shows every failure as a line plus details
            line, trace = describeFailure(action, exc)
            status = "cancelled" if job.process.status == "cancelled" else "failed"
            return Outcome(job.kind, status, line, "\n".join(filter(None, [details, trace])))
