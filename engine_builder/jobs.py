"""Cohort runs: a job is a list of tasks (one volume in, one label map out) run by an executor over one engine.

    tasks = folder_tasks(input_folder, output_folder)      or  list_tasks("cohort.csv", output_folder)
    report = run_job(tasks, SequentialExecutor(segmenter) | ProcessExecutor(...) | RayExecutor(...))

- **Resumable**: a task whose output exists is skipped. Label maps are written under a temporary name and
  renamed (``io.write_volume``), so an existing output is a finished one. This also keeps inputs safe in list
  runs: an output path that names an existing file (another row's scan, say) is never written.
- **Fault-tolerant**: when a worker dies (its process killed, its node lost) the volumes it held go back to the
  queue and run on another worker, up to ``retries`` times each, and are then reported failed. A volume that fails
  by itself (a corrupt file, a constant volume) is reported at once and the run goes on.
- **Report**: one row per volume: ``input``, ``output``, ``status`` (``ok``; ``retried``: written after a worker
  died holding it; ``skipped``: already done; ``failed``), ``worker`` (node:pid), ``node``, ``seconds`` (wall
  clock of the successful attempt), ``attempts``, ``error`` (one line), ``lost_workers``. JSON or CSV by the
  report file's suffix.

Executors yield one ``Outcome`` per task, in the order volumes finish. ``SequentialExecutor`` is this process
(what ``ptqseg segment FOLDER`` does without ``--workers``); ``pool.ProcessExecutor`` runs ``ptqseg worker``
processes on this machine; ``ray_pool.RayExecutor`` runs Ray actors on a cluster.
"""

from __future__ import annotations

import abc
import csv
import json
import logging
import os
import secrets
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import PTQError
from .io import VOLUME_SUFFIXES, Source, choose_series, dicom_series, is_volume_file

log = logging.getLogger(__name__)
REPORT_SUFFIXES = (".json", ".csv")
LIST_COLUMNS = ("input", "output", "series")
REPORT_COLUMNS = ("input", "output", "status", "worker", "node", "seconds", "attempts", "error")


@dataclass(frozen=True)
class Task:
    """One volume to segment: its source, the label map to write, and its name in reports."""

    source: Source
    output: Path
    name: str


@dataclass
class Outcome:
    """What became of one task. ``seconds`` is the wall clock of the attempt that finished, in s."""

    task: Task
    status: str  # ok, retried, skipped, failed
    worker: str = ""
    node: str = ""
    seconds: float = 0.0
    error: str = ""
    attempts: int = 0
    timings_ms: dict = field(default_factory=dict)
    windows: int = 0
    warnings: list = field(default_factory=list)
    lost_workers: list = field(default_factory=list)

    @property
    def written(self) -> bool:
        return self.status in ("ok", "retried")

    def row(self) -> dict:
        """The report row (JSON-able)."""
        return {"input": self.task.name, "output": str(self.task.output), "status": self.status, "worker": self.worker,
                "node": self.node, "seconds": round(self.seconds, 3), "attempts": self.attempts, "error": self.error,
                "lost_workers": list(self.lost_workers), "windows": self.windows, "timings_ms": self.timings_ms,
                "warnings": list(self.warnings)}


def outcome_from_result(task: Task, result: dict, lost_workers: list[str] = ()) -> Outcome:
    """An Outcome from a worker's result dict (``worker.Segmenter.segment``); ``lost_workers`` died holding it."""
    written = result.get("status") == "ok"
    return Outcome(task, ("retried" if lost_workers else "ok") if written else "failed", worker=result.get("worker", ""),
                   node=result.get("node", ""), seconds=float(result.get("seconds") or 0.0), error=result.get("error", ""),
                   attempts=len(lost_workers) + 1, timings_ms=result.get("timings_ms") or {},
                   windows=int(result.get("windows") or 0), warnings=result.get("warnings") or [],
                   lost_workers=list(lost_workers))


# ---- tasks ----------------------------------------------------------------------------------------------------


def folder_tasks(folder: Path, output_folder: Path) -> list[Task]:
    """Every volume under ``folder`` (recursively), its label map at the same relative place in ``output_folder``.

    An output folder inside the input folder is left out of the search (its label maps are not scans).
    """
    from .outputs import inside
    from .sources import find_volumes, source_name

    volumes, _ = find_volumes(folder, "input folder", exclude=output_folder if inside(output_folder, folder) else None)
    if not volumes:
        raise PTQError(f"no volume found in input folder {folder}: put NIfTI, NRRD or DICOM volumes there")
    return [Task(v, output_folder / output_name(v, folder), source_name(v, folder)) for v in volumes]


def is_task_list(path: Path) -> bool:
    """True for a CSV list of volumes (``--input LIST.csv``)."""
    return path.suffix.lower() == ".csv" and path.is_file()


def list_tasks(list_file: Path, output_folder: Path) -> list[Task]:
    """The tasks of a CSV list: column ``input`` (file or DICOM folder), optional ``output`` and ``series``.

    Relative inputs are resolved against the list's folder, relative outputs against ``output_folder``; an empty
    output is ``<input name>_seg.nii.gz`` in ``output_folder``. ``series`` picks a DICOM series by UID, or ``all``.
    A bad row is a PTQError naming the list's line.
    """
    tasks, lines = [], {}
    for line, row in _read_list(list_file):
        where = f"{list_file.name} line {line}"
        for task in _row_tasks(row, list_file.parent, output_folder, where):
            key = os.path.realpath(task.output)
            if key in lines:
                raise PTQError(f"{where}: output {task.output} is also the output of line {lines[key]}: "
                               "give each row its own 'output'")
            lines[key] = line
            tasks.append(task)
    if not tasks:
        raise PTQError(f"{list_file} lists no volume: one row per volume under a header with an 'input' column")
    return tasks


def _read_list(list_file: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row with lower-case keys and stripped values) for each non-empty row."""
    try:
        with open(list_file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(name or "").strip().lower() for name in reader.fieldnames or []]
            unknown = [name for name in header if name not in LIST_COLUMNS]
            if "input" not in header or unknown:
                raise PTQError(f"{list_file}: the header must name the columns input[,output][,series], found "
                               f"{','.join(header) or 'nothing'}")
            reader.fieldnames = header
            for row in reader:
                if None in row:
                    raise PTQError(f"{list_file.name} line {reader.line_num}: more cells than the header has columns")
                values = {key: (value or "").strip() for key, value in row.items()}
                if any(values.values()):
                    yield reader.line_num, values
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PTQError(f"{list_file}: cannot be read as a CSV list ({' '.join(str(exc).split())[:160]})") from None


def _row_tasks(row: dict, list_folder: Path, output_folder: Path, where: str) -> list[Task]:
    """The task(s) of one list row (several for a DICOM folder with ``series`` = ``all``)."""
    if not row.get("input"):
        raise PTQError(f"{where}: the 'input' cell is empty")
    path = Path(row["input"]).expanduser()
    path = path if path.is_absolute() else list_folder / path
    if not path.exists():
        raise PTQError(f"{where}: input {path} not found")
    if row.get("output") and not is_volume_file(row["output"]):
        raise PTQError(f"{where}: output {row['output']}: use a volume suffix ({', '.join(VOLUME_SUFFIXES)})")
    try:
        sources = file_sources(path, row.get("series") or None)
    except PTQError as exc:
        raise PTQError(f"{where}: {exc}") from None
    if sources is None:
        raise PTQError(f"{where}: {path} is a folder with no DICOM series in it: list volume files or DICOM series folders")
    explicit = output_folder / Path(row["output"]).expanduser() if row.get("output") else None
    return [Task(s, series_output(explicit, s, len(sources)) if explicit else output_folder / output_name(s, path.parent),
                 row["input"] if s.series_uid is None else f"{row['input']} [series {s.series_uid or '(no UID)'}]")
            for s in sources]


def file_tasks(path: Path, output: Path, series_choice: str | None) -> list[Task] | None:
    """The task(s) of one volume file or DICOM folder (``--series all``: one per series, the UID in the output
    name); None for a folder of volumes."""
    sources = file_sources(path, series_choice)
    if sources is None:
        return None
    return [Task(s, series_output(output, s, len(sources)), str(s)) for s in sources]


def file_sources(path: Path, series_choice: str | None) -> list[Source] | None:
    """The volume(s) a file or DICOM folder gives: one, the chosen series, or every series (``all``).

    None for a folder without DICOM series (a folder of volumes).
    """
    if not path.is_dir():
        return [Source(path)]
    series = dicom_series(path)
    if not series:
        return None
    if series_choice == "all":
        return [Source(path)] if len(series) == 1 else [Source(path, s.uid) for s in series]
    chosen = choose_series(path, series, series_choice)
    return [Source(path, chosen.uid if len(series) > 1 else None)]


def series_output(target: Path, source: Source, n_sources: int) -> Path:
    """``target``, or ``<stem>_<series uid><suffix>`` where one input gives several series."""
    if n_sources == 1:
        return target
    stem = volume_stem(target.name)
    return target.with_name(f"{stem}_{source.series_uid or 'no-uid'}{target.name[len(stem):]}")


def output_name(volume: Source, folder: Path) -> Path:
    """``<relative path without suffix>[_<series uid>]_seg.nii.gz`` (DICOM folders: the folder path, joined by _)."""
    relative = volume.path.relative_to(folder) if volume.path != folder else Path(volume.path.name)
    if volume.path.is_dir():
        name = str(relative).replace(os.sep, "_")
        parent = Path()
    else:
        name, parent = volume_stem(relative.name), relative.parent
    if volume.series_uid is not None:
        name += f"_{volume.series_uid or 'no-uid'}"
    return parent / f"{name}_seg.nii.gz"


def volume_stem(name: str) -> str:
    """A file name without its volume suffix (``ct.nii.gz`` -> ``ct``)."""
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---- executors ------------------------------------------------------------------------------------------------


class Executor(abc.ABC):
    """Runs tasks and yields one Outcome per task as each finishes; closing the generator stops the workers.

    Attributes:
        label: what runs the job, for reports ("2 local worker processes, 1 thread each").
        job_token: the token in the names of this job's temporaries (``files.partial_path``), or None when the
            executor writes from this process only (its temporaries go with its exceptions).
    """

    label: str = ""
    job_token: str | None = None

    @abc.abstractmethod
    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Yield an Outcome for every task (any order)."""

    def running(self) -> dict[str, list[str]]:
        """What each worker holds now: worker name (node:pid) -> names of its volumes in flight."""
        return {}


class SequentialExecutor(Executor):
    """This process, one volume after another, with one loaded ``worker.Segmenter``."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.label = "this process"

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            yield outcome_from_result(task, self.segmenter.segment(task.source, task.output))


class RetryQueue:
    """Tasks waiting for a worker; a task whose worker died goes back to the front, up to ``retries`` times.

    ``open`` counts tasks without a final Outcome yet.
    """

    def __init__(self, tasks: list[Task], retries: int):
        self._waiting = deque(tasks)
        self._lost: dict[Task, list[str]] = {}
        self.retries = retries
        self.open = len(tasks)

    def take(self) -> Task | None:
        return self._waiting.popleft() if self._waiting else None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def finished(self, task: Task, result: dict) -> Outcome:
        """The worker answered for ``task``."""
        self.open -= 1
        return outcome_from_result(task, result, self._lost.get(task, []))

    def worker_lost(self, task: Task, worker: str, reason: str) -> Outcome | None:
        """``worker`` died holding ``task``: queue it again, or return its failed Outcome once retries are spent."""
        lost = self._lost.setdefault(task, [])
        lost.append(worker)
        if len(lost) <= self.retries:
            log.warning("%s: worker %s died (%s); retrying on another worker", task.name, worker, reason)
            self._waiting.appendleft(task)
            return None
        self.open -= 1
        return Outcome(task, "failed", worker=worker, error=f"{reason}; given up after {len(lost)} attempts",
                       attempts=len(lost), lost_workers=list(lost))

    def abandon(self, reason: str) -> list[Outcome]:
        """Fail every waiting task (no worker is left to run it)."""
        outcomes = [Outcome(t, "failed", error=reason, attempts=len(self._lost.get(t, [])),
                            lost_workers=list(self._lost.get(t, []))) for t in self._waiting]
        self.open -= len(self._waiting)
        self._waiting.clear()
        return outcomes


def new_job_token() -> str:
    """The token naming this job's temporaries: ``PTQSEG_JOB_TOKEN`` when a parent chose one, else a fresh one."""
    return os.environ.get("PTQSEG_JOB_TOKEN") or f"job{secrets.token_hex(6)}"


def default_threads(workers: int) -> int:
    """CPU threads per worker when ``workers`` share this machine: ``max(1, cores // workers)``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


# ---- running and reporting ------------------------------------------------------------------------------------


@dataclass
class JobReport:
    """Every task's Outcome (in task order), what ran them, and the wall clock of the run in s."""

    executor: str
    outcomes: list[Outcome]
    seconds: float = 0.0
    interrupted: bool = False

    def with_status(self, *statuses: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in statuses]

    @property
    def volumes_per_minute(self) -> float:
        """Volumes segmented (not skipped) per minute of the run's wall clock."""
        written = len(self.with_status("ok", "retried"))
        return 60.0 * written / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        """``segmented N, skipped S already done, failed F`` and a line per failed or retried volume."""
        lines = [f"segmented {len(self.with_status('ok', 'retried'))}, skipped {len(self.with_status('skipped'))} "
                 f"already done, failed {len(self.with_status('failed'))}"]
        lines += [f"  failed: {o.task.name}: {o.error}" for o in self.with_status("failed")]
        lines += [f"  retried: {o.task.name}: {o.attempts} attempts (lost worker {', '.join(o.lost_workers)})"
                  for o in self.with_status("retried")]
        return lines

    def figures(self) -> dict:
        """The ``--json`` figures of a folder run: segmented records, the skipped count, failed (name, reason)."""
        return {"segmented": [{"input": o.task.name, "output": str(o.task.output), "latency_ms": o.timings_ms,
                               "total_ms": sum(o.timings_ms.values()), "warnings": o.warnings}
                              for o in self.with_status("ok", "retried")],
                "skipped": len(self.with_status("skipped")),
                "failed": [[o.task.name, o.error] for o in self.with_status("failed")]}

    def write(self, path: Path) -> None:
        """The per-volume report as JSON (with the run's totals) or CSV (one row per volume), by suffix."""
        from .files import atomic_write_text

        rows = [o.row() for o in self.outcomes]
        if path.suffix.lower() == ".csv":
            text = _csv_text(rows)
        else:
            counts = {s: len(self.with_status(s)) for s in ("ok", "retried", "skipped", "failed")}
            text = json.dumps({"executor": self.executor, "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
                               "volumes_per_minute": round(self.volumes_per_minute, 3), "counts": counts,
                               "volumes": rows}, indent=2, default=str)
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise PTQError(f"cannot write the report {path} ({exc.strerror})") from None


def _csv_text(rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def check_report_path(path: Path) -> None:
    """PTQError unless ``path`` ends in .json or .csv and can be written."""
    from .outputs import check_writable_file

    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise PTQError(f"--report {path}: use a .json or .csv file name")
    check_writable_file(path, "--report")


def run_job(tasks: list[Task], executor: Executor, progress: bool = True, report_path: Path | None = None,
            on_outcome: Callable[[Outcome], None] | None = None) -> JobReport:
    """Run every task whose output does not exist yet with ``executor``; skip the others.

    One overall progress bar (volumes, volumes/min, ETA); ``on_outcome`` is called with each Outcome as it
    arrives. On Ctrl-C (KeyboardInterrupt) the executor stops its workers, this job's temporaries are removed,
    the report of what finished is written, and the interrupt goes on.
    """
    from .progress import Counter

    order = {task: i for i, task in enumerate(tasks)}
    outcomes = {t: Outcome(t, "skipped") for t in tasks if t.output.exists()}
    pending = [t for t in tasks if t not in outcomes]
    report = JobReport(executor.label, [])
    counter = Counter("volumes", len(pending), enabled=progress, unit="vol", rate=True)
    started = time.perf_counter()
    try:
        with closing(executor.run(pending)) as finished:
            for outcome in finished:
                outcomes[outcome.task] = outcome
                _log_outcome(outcome)
                counter.step()
                if on_outcome is not None:
                    on_outcome(outcome)
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        counter.close()
        report.executor = executor.label  # an executor may say more once it runs (a Ray cluster's actors)
        report.seconds = time.perf_counter() - started
        report.outcomes = sorted(outcomes.values(), key=lambda o: order[o.task])
        _remove_job_temporaries(pending, executor.job_token)
        if report_path is not None:
            report.write(Path(report_path))
    return report


def _log_outcome(outcome: Outcome) -> None:
    for warning in outcome.warnings:
        log.warning("%s", warning)
    if outcome.status == "failed":
        log.error("%s: %s", outcome.task.name, outcome.error)


def _remove_job_temporaries(tasks: list[Task], token: str | None) -> None:
    """Remove the temporaries this job's workers left (a worker killed while writing) in the output folders."""
    from .files import remove_job_partials

    if token is None:
        return
    for folder in {t.output.parent for t in tasks}:
        if folder.is_dir():
            remove_job_partials(folder, token)
