"""``--workers N``: N ``ptqseg worker`` processes on this machine, each with the engine loaded once.

Each worker gets one volume at a time over its JSON-lines stdin (``worker.serve``) and answers with a result
line; the next volume goes to whichever worker answers first, so a slow volume never holds up the others. A
worker that exits while holding a volume (killed, out of memory) has the volume queued again for another worker
(``jobs.RetryQueue``) and a fresh worker takes its place. The workers run in their own session, so the
terminal's Ctrl-C reaches only this process, which then stops them (SIGTERM: the label map being written has its
temporary removed) and returns.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import PTQError
from .jobs import Executor, Outcome, RetryQueue, Task, new_job_token

log = logging.getLogger(__name__)
_STOP_SECONDS = 15  # how long a stopped worker may take to exit before it is killed
_POLL_SECONDS = 0.5  # the longest wait for an event, so that Ctrl-C is seen at once


@dataclass
class _Worker:
    """One worker process: its name in reports (node:pid once ready), the task it holds (None: idle)."""

    name: str
    process: subprocess.Popen
    ready: bool = False
    task: Task | None = None
    error: str = ""


class ProcessExecutor(Executor):
    """Local worker processes (``python -m engine_builder.cli worker``).

    Args:
        engine_dir: the engine directory every worker loads.
        workers: number of processes.
        threads: CPU threads per worker (engine and torch).
        device: ``cpu`` or ``cuda``.
        memory_budget: bytes per volume's resampled grid (None: the default budget).
        retries: how often a volume whose worker died is run again.
        verify, min_agreement: each worker's per-scan check (``ptqseg worker --verify``).
    """

    def __init__(self, engine_dir: str | os.PathLike, workers: int, threads: int, device: str = "cpu",
                 memory_budget: int | None = None, retries: int = 2, verify: int = 0, min_agreement: float | None = None):
        self.engine_dir, self.workers, self.threads = str(engine_dir), workers, threads
        self.device, self.memory_budget, self.retries = device, memory_budget, retries
        self.verify, self.min_agreement = verify, min_agreement
        self.job_token = new_job_token()
        self._pool: _Pool | None = None
        self.label = f"{workers} local worker processes, {threads} thread{'s' if threads > 1 else ''} each"

    def command(self) -> list[str]:
        """The command line of one worker."""
        command = [sys.executable, "-m", "engine_builder.cli", "--progress", "off", "worker", "--engine", self.engine_dir,
                   "--threads", str(self.threads), "--device", self.device]
        if self.memory_budget is not None:
            command += ["--max-memory-gb", repr(self.memory_budget / 2**30)]
        if self.verify:
            command += ["--verify", str(self.verify)]
        if self.min_agreement is not None:
            command += ["--min-agreement", repr(self.min_agreement)]
        return command

    def environment(self) -> dict:
        """The workers' environment: this job's token, and this process's engine_builder first on the path."""
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PTQSEG_JOB_TOKEN": self.job_token, "PYTHONPATH": path}

    def running(self) -> dict[str, list[str]]:
        pool = self._pool
        return {} if pool is None else {w.name: [w.task.name] for w in pool.workers.values() if w.task is not None}

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        if not tasks:
            return
        retry = RetryQueue(tasks, self.retries)
        pool = self._pool = _Pool(self.command(), self.environment(), spare=self.workers * self.retries)
        for _ in range(min(self.workers, len(tasks))):
            pool.start()
        finished = False
        try:
            while retry.open:
                pool.dispatch(retry)
                if not pool.workers:
                    if not pool.ever_ready:
                        raise PTQError(pool.startup_error)
                    yield from retry.abandon("no worker process is left to run it")
                    break
                outcome = pool.next_outcome(retry)
                if outcome is not None:
                    yield outcome
            finished = True
        finally:
            pool.stop(graceful=finished)


class _Pool:
    """The running worker processes, their events (one queue, fed by a reader thread per worker)."""

    def __init__(self, command: list[str], env: dict, spare: int):
        self.command, self.env, self.spare = command, env, spare
        self.workers: dict[str, _Worker] = {}
        self.events: queue.Queue = queue.Queue()
        self.ever_ready = False
        self.startup_error = "no worker process could start"
        self._started = 0
        self._sent = 0

    def start(self) -> None:
        self._started += 1
        key = f"worker {self._started}"
        process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                   encoding="utf-8", env=self.env, start_new_session=True)
        self.workers[key] = _Worker(key, process)
        threading.Thread(target=self._read, args=(key, process), daemon=True).start()

    def _read(self, key: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                log.debug("%s: %s", key, line.rstrip())
                continue
            if isinstance(event, dict):
                self.events.put((key, event))
        self.events.put((key, {"event": "exit", "returncode": process.wait()}))

    def dispatch(self, retry: RetryQueue) -> None:
        """Give each idle, ready worker the next waiting task."""
        for worker in self.workers.values():
            if worker.ready and worker.task is None and retry.waiting:
                self._send(worker, retry.take())

    def _send(self, worker: _Worker, task: Task) -> None:
        worker.task = task
        self._sent += 1
        request = {"id": self._sent, "input": str(task.source.path), "output": str(task.output),
                   "series": task.source.series_uid}
        try:
            worker.process.stdin.write(json.dumps(request) + "\n")
            worker.process.stdin.flush()
        except OSError:
            pass  # the worker is gone: its exit event puts the task back in the queue

    def next_outcome(self, retry: RetryQueue) -> Outcome | None:
        """Handle the next event (waiting at most a moment); the Outcome it settles, if any."""
        try:
            key, event = self.events.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            return None
        worker = self.workers.get(key)
        kind = event.get("event")
        if worker is None:
            return None
        if kind == "ready":
            worker.ready = self.ever_ready = True
            worker.name = str(event.get("worker") or key)
        elif kind == "error":
            worker.error = str(event.get("message") or "")
        elif kind == "result" and worker.task is not None:
            task, worker.task = worker.task, None
            return retry.finished(task, event)
        elif kind == "exit":
            return self._exited(worker, key, event["returncode"], retry)
        return None

    def _exited(self, worker: _Worker, key: str, code: int, retry: RetryQueue) -> Outcome | None:
        """A worker process ended: before its engine loaded (no replacement) or while serving (replaced)."""
        del self.workers[key]
        if not worker.ready:
            self.startup_error = worker.error or f"a worker process exited with code {code} before its engine was loaded"
            return None
        if self.spare > 0 and (retry.waiting or worker.task is not None):
            self.spare -= 1
            self.start()
        if worker.task is None:
            return None
        return retry.worker_lost(worker.task, worker.name, f"its process exited with code {code}")

    def stop(self, graceful: bool) -> None:
        """Close the workers' stdin (they exit after their volume) or, when interrupted, stop them at once."""
        for worker in self.workers.values():
            if not graceful:
                worker.process.terminate()
            try:
                worker.process.stdin.close()
            except OSError:
                pass
        for worker in self.workers.values():
            try:
                worker.process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
