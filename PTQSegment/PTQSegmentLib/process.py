"""``ptqseg`` in a child process, followed through its JSON progress lines without blocking the caller.

Calibration, quantization and whole-volume inference take seconds to minutes, and import torch, OpenVINO and
TensorRT; running them in Slicer's own process would freeze the application (and a crash in a runtime library would
take the scene with it). So the module starts ``python -m engine_builder.cli --progress json ...`` and a
``qt.QTimer`` calls ``poll()``: two reader threads move the child's stdout (one JSON event per line) and stderr
(log) into queues, and ``poll()`` drains them. Nothing here imports Qt, so the same class runs in tests and in
the Python console.

In Slicer the child is started through ``PythonSlicer``, a launcher that starts the real interpreter as its own
child. So a job is named by a token (``$PTQSEG_JOB_TOKEN``, which ``engine_builder.artifact`` writes into the
names of its temporary directories), not by a process id, and Cancel acts on the whole process tree (psutil):
an interrupt first, so that the build removes its temporary engine directory itself, then a kill after a grace
period (at once on Windows, where a child without a console cannot be interrupted); the caller then removes what
a killed build left, by token.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from engine_builder.artifact import JOB_TOKEN_ENV  # standard library only; importable: see PTQSegmentLib/__init__.py

from . import engineBuilderRoot

#: Seconds between the interrupt and the kill on Cancel.
CANCEL_GRACE_S = 5.0
#: Lines of child output kept for the "details" log.
LOG_LINES = 2000
#: Seconds between two listings of the job's process tree while it runs.
TREE_INTERVAL_S = 0.5


def pythonExecutable() -> str:
    """The Python that runs ``ptqseg``: Slicer's ``PythonSlicer`` launcher inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def ptqsegCommand(arguments: list[str], python: str | None = None) -> list[str]:
    """The command line of ``ptqseg --progress json ARGUMENTS`` for a child process."""
    return [python or pythonExecutable(), "-m", "engine_builder.cli", "--progress", "json", *arguments]


def childEnvironment(token: str) -> dict[str, str]:
    """This process's environment, with ``engine_builder`` importable, unbuffered output and the job ``token``."""
    env = dict(os.environ)
    root = engineBuilderRoot()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env[JOB_TOKEN_ENV] = token
    return env


def newJobToken() -> str:
    """A fresh job token: letters and digits only (it becomes part of file names)."""
    return uuid.uuid4().hex[:16]


def processTree(pid: int) -> list:
    """``psutil.Process`` objects for ``pid`` and all its descendants that exist now (empty when ``pid`` is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signalProcesses(processes: list, how: str) -> None:
    """Send ``how`` (``interrupt`` or ``kill``) to every process in ``processes`` that is still running."""
    import psutil

    for process in processes:
        try:
            if how == "kill":
                process.kill()
            else:
                process.send_signal(signal.SIGINT)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@dataclass
class Progress:
    """The latest progress of a child: the stage name and, where the stage counts, done of total."""

    stage: str = "starting"
    done: int | None = None
    total: int | None = None

    @property
    def fraction(self) -> float | None:
        """done / total in 0..1, or None for a stage without a count."""
        if self.done is None or not self.total:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)


@dataclass
class PtqsegProcess:
    """One ``ptqseg`` run in a child process.

    Attributes:
        arguments: the sub-command and its options (``["build", "--model", "demo", ...]``).
        python: the interpreter or launcher that runs it (default ``pythonExecutable()``).
        token: names the job: the child's temporary files carry it (``engine_builder.artifact.job_partials``).
        status: ``created``, ``running``, ``succeeded``, ``failed`` or ``cancelled``.
        progress: the latest ``progress``/``stage`` event.
        result: the ``result`` event's fields once the child reported it.
        log: the child's non-JSON output (stdout and stderr), the "details" of an error.
    """

    arguments: list[str]
    python: str | None = None
    token: str = field(default_factory=newJobToken)
    status: str = "created"
    progress: Progress = field(default_factory=Progress)
    result: dict | None = None
    log: list[str] = field(default_factory=list)
    returncode: int | None = None
    _error_event: str | None = None
    _process: subprocess.Popen | None = None
    _events: queue.Queue = field(default_factory=queue.Queue)
    _threads: list[threading.Thread] = field(default_factory=list)
    _kill_at: float | None = None
    _tree: list = field(default_factory=list)
    _tree_at: float = 0.0

    def start(self) -> "PtqsegProcess":
        """Start the child; returns at once. Needs psutil (a listed requirement): without it the job could not be
        stopped, so it is not started."""
        import psutil  # noqa: F401

        command = ptqsegCommand(self.arguments, self.python)
        options = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                         env=childEnvironment(self.token), text=True, encoding="utf-8", errors="replace",
                                         bufsize=1, **options)
        self.status = "running"
        self._threads = [threading.Thread(target=self._read, args=(self._process.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self._process.stderr, False), daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    @property
    def pid(self) -> int | None:
        """The id of the process this object started (in Slicer: the launcher's, not the interpreter's)."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def _read(self, stream, parse_json: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            event = _parse_event(line) if parse_json else None
            self._events.put(event if event is not None else {"event": "log", "line": line})
        stream.close()

    def poll(self) -> list[dict]:
        """The events that arrived since the last call; updates status, progress, result and log.

        The run ends when the started process has exited and its output pipes are closed: a launcher's child
        holds them too, so a job is not over while the real interpreter still runs.
        """
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        for event in events:
            self._apply(event)
        if self.running and time.monotonic() >= self._tree_at:
            self._refreshTree()
        if self.running and self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill()
        if self.running and self._process.poll() is not None and not any(t.is_alive() for t in self._threads):
            self._finish()
        return events

    def _apply(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "log":
            self.log.append(event["line"])
            del self.log[:-LOG_LINES]
        elif kind == "progress":
            self.progress = Progress(str(event.get("stage")), event.get("done"), event.get("total"))
        elif kind == "stage" and event.get("status") == "start":
            self.progress = Progress(str(event.get("stage")))
        elif kind == "result":
            self.result = {k: v for k, v in event.items() if k != "event"}
        elif kind == "error":
            self._error_event = str(event.get("message", ""))

    def _finish(self) -> None:
        self.returncode = self._process.returncode
        if self.status == "running":
            cancelled = self._kill_at is not None
            self.status = "cancelled" if cancelled else ("succeeded" if self.returncode == 0 else "failed")

    def wait(self, timeout: float | None = None) -> str:
        """Block until the child ends (console and tests; the panel polls instead); returns the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"ptqseg {self.arguments[0]} still running after {timeout} s")
            time.sleep(0.05)
        return self.status

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """Interrupt the job's whole process tree now, and kill what still runs ``grace_s`` seconds later (in
        ``poll``); on Windows, or with ``grace_s`` 0, kill it at once."""
        if not self.running or self._kill_at is not None:
            return
        self._refreshTree()
        self._kill_at = time.monotonic() + grace_s
        if os.name == "nt" or grace_s <= 0:
            self._kill()
        else:
            signalProcesses(self._tree, "interrupt")

    def _refreshTree(self) -> None:
        """Remember the job's processes: the started one and every descendant seen so far that still runs. Kept
        up to date while the job runs because once a launcher is gone its child cannot be found through it."""
        living = [process for process in self._tree if process.is_running()]
        roots = living or processTree(self._process.pid)[:1]
        found = {process.pid: process for process in roots}
        for process in roots:
            found.update((p.pid, p) for p in processTree(process.pid))
        self._tree = list(found.values())
        self._tree_at = time.monotonic() + TREE_INTERVAL_S

    def _kill(self) -> None:
        self._refreshTree()
        signalProcesses(self._tree, "kill")

    @property
    def errorMessage(self) -> str | None:
        """One readable line for the panel when the child failed (its ``error`` event, else its last output)."""
        if self.status == "cancelled":
            return "cancelled"
        if self.status != "failed":
            return None
        if self._error_event:
            return self._error_event
        lines = [line for line in self.log if line.strip()]
        return lines[-1].strip() if lines else f"ptqseg {self.arguments[0]} stopped with exit code {self.returncode}"

    @property
    def details(self) -> str:
        """The full output of the child (the panel's "details" log)."""
        return "\n".join(self.log)


def _parse_event(line: str) -> dict | None:
    """A JSON event dict from one stdout line, or None for ordinary output."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
