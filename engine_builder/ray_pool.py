"""``--ray ADDRESS``: a job on a Ray cluster, one engine per actor (Ray is imported only here, only when asked).

- Actors: each is a ``worker.Segmenter`` holding the engine, placed by Ray's own scheduler (``SPREAD`` over the
  nodes). CPU actors reserve ``threads`` CPUs and run the engine with that many threads (the OpenVINO INT8 engine);
  with ``--device cuda`` each actor reserves one GPU and runs the engine there (TensorRT or torch engines).
- Data: actors read the scans and write the label maps themselves, so input, output and engine paths must be on
  storage every node sees; only paths and small result dicts travel through Ray.
- Backpressure: at most ``in_flight`` volumes (default 2) are handed to an actor at a time, so the queue in front of
  a slow actor or slow storage stays short and nothing piles up in memory.
- Faults: an actor that dies (``RayActorError``: its process killed, its node lost) has its volumes queued again for
  other actors (``jobs.RetryQueue``, up to ``retries`` times each) and a new actor is asked for in its place.
- Ctrl-C: the job's actors are killed (``ray.kill``), the cluster is left as it was, and the temporaries of label
  maps being written are removed by ``jobs.run_job`` through the job token.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import PTQError
from .io import Source
from .jobs import Executor, Outcome, RetryQueue, Task, new_job_token

log = logging.getLogger(__name__)
DEFAULT_THREADS = 4  # CPUs per actor unless --threads says otherwise (or a node has fewer)
_POLL_SECONDS = 0.5
_STARTUP_SECONDS = 600  # no actor ready by then: the cluster cannot place one


def import_ray():
    """The ``ray`` module, or one PTQError saying how to install it. Ray's usage statistics stay off (patient data
    projects send nothing anywhere; a cluster started by someone else keeps its own setting)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise PTQError("--ray needs Ray: pip install 'ptqsegment[ray]' (on every node of the cluster)") from None
    return ray


class SegmenterActor:
    """The body of a Ray actor: a ``worker.Segmenter`` named after its Ray node (ip/node id)."""

    def __init__(self, engine_dir: str, threads: int | None, device: str, memory_budget: int | None, job_token: str,
                 verify: int = 0, min_agreement: float | None = None):
        import ray

        from .worker import Segmenter

        os.environ["PTQSEG_JOB_TOKEN"] = job_token
        node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
        try:
            self.segmenter = Segmenter(engine_dir, threads, device, memory_budget, node=node, verify=verify,
                                       min_agreement=min_agreement)
            self.error = ""
        except PTQError as exc:
            self.segmenter, self.error = None, " ".join(str(exc).split())

    def describe(self) -> dict:
        """``worker``, ``node``, ``engine``; or ``error`` when the engine could not be loaded on this node."""
        return {"error": self.error} if self.segmenter is None else self.segmenter.describe()

    def segment(self, path: str, series_uid: str | None, output: str) -> dict:
        return self.segmenter.segment(Source(Path(path), series_uid), output)


class RayExecutor(Executor):
    """Ray actors on a cluster (``ray.init(address=...)``; an already connected driver is used as it is).

    Args:
        engine_dir: the engine directory, on storage every node sees.
        address: ``auto`` (the cluster this machine belongs to) or ``ray://HEAD:10001``.
        workers: number of actors (default: as many as the cluster's CPUs, or GPUs, hold).
        threads: CPUs reserved by, and engine threads of, each CPU actor (default: 4, or a node's CPU count if less).
        device: ``cpu``, or ``cuda`` for GPU actors.
        memory_budget: bytes per volume's resampled grid (None: the default budget).
        retries: how often a volume whose actor died is run again.
        in_flight: volumes handed to one actor at a time.
        verify, min_agreement: each actor's per-scan check (``verify.py``).
    """

    def __init__(self, engine_dir: str | os.PathLike, address: str, workers: int | None = None, threads: int | None = None,
                 device: str = "cpu", memory_budget: int | None = None, retries: int = 2, in_flight: int = 2,
                 verify: int = 0, min_agreement: float | None = None):
        self.engine_dir, self.address, self.workers, self.threads = str(engine_dir), address, workers, threads
        self.device, self.memory_budget, self.retries, self.in_flight = device, memory_budget, retries, in_flight
        self.verify, self.min_agreement = verify, min_agreement
        self.job_token = new_job_token()
        self._pool: _ActorPool | None = None
        self.label = f"Ray at {address}"

    def running(self) -> dict[str, list[str]]:
        pool = self._pool
        if pool is None:
            return {}
        held: dict[str, list[str]] = {}
        for _, name, task in list(pool.running.values()):
            held.setdefault(name, []).append(task.name)
        return held

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        if not tasks:
            return
        ray = import_ray()
        connected_here = not ray.is_initialized()
        if connected_here:
            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise PTQError(f"cannot join the Ray cluster at {self.address}: {' '.join(str(exc).split())[:200]}") from None
        try:
            yield from self._run(ray, tasks)
        finally:
            if connected_here:
                ray.shutdown()

    def _run(self, ray, tasks: list[Task]) -> Iterator[Outcome]:
        threads, count, options = self._placement(ray)
        count = min(count, len(tasks))
        self.label = f"Ray at {self.address}, {count} actors, " + (
            "1 GPU each" if "num_gpus" in options else f"{threads} CPU{'s' if threads > 1 else ''} each")
        actor = ray.remote(SegmenterActor).options(**options)
        pool = self._pool = _ActorPool(ray, lambda: actor.remote(self.engine_dir, threads, self.device, self.memory_budget,
                                                                 self.job_token, self.verify, self.min_agreement),
                                       self.in_flight, spare=count * self.retries)
        retry = RetryQueue(tasks, self.retries)
        for _ in range(count):
            pool.start()
        try:
            while retry.open:
                pool.dispatch(retry)
                if not pool.actors:
                    if not pool.ever_ready:
                        raise PTQError(pool.startup_error)
                    yield from retry.abandon("no Ray actor is left to run it")
                    break
                yield from pool.wait(retry)
        finally:
            pool.stop()

    def _placement(self, ray) -> tuple[int, int, dict]:
        """(threads per actor, number of actors, actor options) from the flags and the cluster's alive nodes."""
        options = {"max_restarts": 0, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if self.device.startswith("cuda"):
            gpus = sum(int(n.get("GPU", 0)) for n in nodes)
            if gpus == 0:
                raise PTQError(f"--device cuda: the Ray cluster at {self.address} has no GPU")
            return self.threads or 1, self.workers or gpus, {**options, "num_gpus": 1, "num_cpus": 1}
        smallest = min((int(n.get("CPU", 0)) for n in nodes if n.get("CPU")), default=1)
        threads = self.threads or max(1, min(DEFAULT_THREADS, smallest))
        count = self.workers or max(1, sum(int(n.get("CPU", 0)) // threads for n in nodes))
        return threads, count, {**options, "num_cpus": threads}


@dataclass
class _Actor:
    handle: object
    name: str = ""
    ready: bool = False
    running: set = field(default_factory=set)  # object refs of its volumes in flight


class _ActorPool:
    """The job's actors, their readiness and their volumes in flight."""

    def __init__(self, ray, make_actor, in_flight: int, spare: int):
        self.ray, self.make_actor, self.in_flight, self.spare = ray, make_actor, in_flight, spare
        self.actors: dict[int, _Actor] = {}
        self.starting: dict = {}  # describe() ref -> actor key
        self.running: dict = {}  # segment() ref -> (actor key, actor name, task)
        self.ever_ready = False
        self.startup_error = "no Ray actor could start"
        self._keys = 0
        self._since = time.monotonic()

    def start(self) -> None:
        self._keys += 1
        actor = _Actor(self.make_actor(), name=f"actor {self._keys}")
        self.actors[self._keys] = actor
        self.starting[actor.handle.describe.remote()] = self._keys

    def dispatch(self, retry: RetryQueue) -> None:
        """Hand waiting volumes to ready actors, at most ``in_flight`` each."""
        for key, actor in self.actors.items():
            while actor.ready and len(actor.running) < self.in_flight and retry.waiting:
                task = retry.take()
                ref = actor.handle.segment.remote(str(task.source.path), task.source.series_uid, str(task.output))
                actor.running.add(ref)
                self.running[ref] = (key, actor.name, task)

    def wait(self, retry: RetryQueue) -> list[Outcome]:
        """Wait a moment for actors to start or volumes to finish; the Outcomes settled."""
        refs = [*self.starting, *self.running]
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=_POLL_SECONDS, fetch_local=False) if refs else ([], [])
        outcomes = []
        for ref in done:
            if ref in self.starting:
                self._started(ref)
            else:
                outcome = self._answered(ref, retry)
                if outcome is not None:
                    outcomes.append(outcome)
        if not self.ever_ready and time.monotonic() - self._since > _STARTUP_SECONDS:
            raise PTQError(f"no Ray actor started within {_STARTUP_SECONDS} s: the cluster has no node with the "
                           "CPUs (or GPU) one actor asks for; lower --threads or add nodes")
        return outcomes

    def _started(self, ref) -> None:
        from ray.exceptions import RayError

        key = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except RayError as exc:
            info = {"error": f"a Ray actor could not start ({_first_line(exc)})"}
        if info.get("error"):
            self.startup_error = info["error"]
            self._remove(key)
            return
        actor = self.actors[key]
        actor.ready, actor.name, self.ever_ready = True, str(info.get("worker") or actor.name), True

    def _answered(self, ref, retry: RetryQueue) -> Outcome | None:
        from ray.exceptions import RayActorError, RayError

        key, name, task = self.running.pop(ref)
        try:
            result = self.ray.get(ref)
        except RayActorError as exc:
            self._lost(key, retry)
            return retry.worker_lost(task, name, f"its Ray actor died ({_first_line(exc)[:120]})")
        except RayError as exc:
            result = {"status": "failed", "error": f"unexpected Ray error: {_first_line(exc)[:200]}", "worker": name}
        if key in self.actors:
            self.actors[key].running.discard(ref)
        return retry.finished(task, result)

    def _lost(self, key: int, retry: RetryQueue) -> None:
        """An actor died: drop it, and ask Ray for a new one while spares and work are left."""
        if key not in self.actors:
            return
        self._remove(key)
        if self.spare > 0 and (retry.waiting or self.running):
            self.spare -= 1
            self.start()

    def _remove(self, key: int) -> None:
        actor = self.actors.pop(key)
        try:
            self.ray.kill(actor.handle)
        except Exception:  # noqa: BLE001  already gone
            pass

    def stop(self) -> None:
        """Kill every actor of this job (running volumes stop; their temporaries are removed by the job)."""
        for key in list(self.actors):
            self._remove(key)


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
