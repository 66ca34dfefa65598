"""Job records, job folders and the job queue. No sockets, no tensors.

Every job gets a folder under ``<state_dir>/jobs/<job_id>/``::

    request.json     what was asked (pipeline, preset, seed, options, ...)
    input.<ext>      the photo exactly as it was sent
    status.json      the JobRecord: state, times, error, result size
    progress.jsonl   one JSON line per progress event (a torn last line is ignored)
    result.npz       the Gaussians exactly as the pipeline returned them (head frame)
    result.ply       the same Gaussians as an INRIA 3DGS PLY (RDF frame, for viewers)
    output/          the job's output folder, made when it starts: the executor writes what the
                     pipeline renders there (turntable/frame_000.png ...), nowhere else

The folder is built under a temporary name and renamed into place, so a job either exists
completely or not at all. Every later file write is atomic too: a temporary file, fsync,
``os.replace``. After a crash, :meth:`JobStore.recover` lists finished jobs as they were and
marks jobs that were queued or running as ``interrupted``: none is silently lost.

States::

    queued -> running -> done | failed | cancelled | interrupted
    queued -> cancelled | interrupted
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from blender_addon.core.splat_arrays import SplatArrays
from blender_addon.core.splat_ply import to_ply_bytes

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED)
TERMINAL_STATES = frozenset({DONE, FAILED, CANCELLED, INTERRUPTED})

JOB_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")  # also guards every path built from an id
IMAGE_EXTENSIONS = {
    b"\xff\xd8\xff": ".jpg",
    b"\x89PNG\r\n\x1a\n": ".png",
    b"GIF8": ".gif",
    b"BM": ".bmp",
    b"II*\x00": ".tif",
    b"MM\x00*": ".tif",
}

OUTPUT_DIR = "output"

INTERRUPTED_ERROR = {
    "code": "interrupted",
    "message": "The backend stopped while this job was queued or running, so it has no result.",
    "hint": "Submit the photo again.",
}


class JobNotFound(KeyError):
    pass


def new_job_id(now: float | None = None) -> str:
    """Sortable by creation time: ``YYYYmmdd-HHMMSS-<8 hex>``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(4)


def valid_job_id(job_id: Any) -> bool:
    return isinstance(job_id, str) and JOB_ID_RE.match(job_id) is not None


# ------------------------------------------------------------------ atomic writes
def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=1, allow_nan=False).encode("utf-8"))


# ---------------------------------------------------------------------- records
@dataclass
class JobRecord:
    """What ``status.json`` holds and ``list_jobs`` returns (as a dict)."""

    job_id: str
    state: str = QUEUED
    pipeline: str = "photo"
    preset: str = "default"
    seed: int = 0
    style_prompt: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    session: str = ""  # the submitting client's session id (its PUB topic)
    image_name: str = ""
    image_file: str = ""  # file name inside the job folder
    preview_hz: float = 0.0
    preview_dtype: str = "float32"
    evaluate: bool = True  # run backend.eval on the result
    created: float = 0.0  # unix time
    started: float | None = None
    finished: float | None = None
    error: dict[str, str] | None = None  # {code, message, hint} for failed/cancelled/interrupted
    n_gaussians: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] | None = None  # the latest progress event (in memory; see progress.jsonl)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class CancelToken:
    """A cancellation request for one job: when it was asked and until when the worker may
    take to stop cooperatively before it is killed."""

    def __init__(self, grace_s: float):
        self.requested_at = time.monotonic()
        self.deadline = self.requested_at + grace_s

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.deadline


class JobQueue:
    """FIFO of queued job ids (one executor takes them one at a time)."""

    def __init__(self, job_ids: Iterable[str] = ()):
        self._ids: deque[str] = deque(job_ids)

    def push(self, job_id: str) -> int:
        """Returns the number of jobs ahead of it."""
        self._ids.append(job_id)
        return len(self._ids) - 1

    def pop(self) -> str | None:
        return self._ids.popleft() if self._ids else None

    def remove(self, job_id: str) -> bool:
        try:
            self._ids.remove(job_id)
            return True
        except ValueError:
            return False

    def position(self, job_id: str) -> int | None:
        try:
            return self._ids.index(job_id)
        except ValueError:
            return None

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._ids


# ------------------------------------------------------------------------ store
class JobStore:
    """Job folders under ``<state_dir>/jobs`` and their records, kept in memory too."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.root = Path(state_dir)
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, JobRecord] = {}

    def job_dir(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        return self.jobs_dir / job_id

    # ---------------------------------------------------------------- recovery
    def recover(self) -> list[JobRecord]:
        """Load every job folder. Jobs left queued or running by a crash become
        ``interrupted``; half-built folders from a crash are removed. Returns those
        interrupted now."""
        interrupted = []
        for path in sorted(self.jobs_dir.iterdir()):
            if path.name.startswith(".tmp-"):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not path.is_dir() or not valid_job_id(path.name):
                continue
            try:
                record = JobRecord.from_dict(json.loads((path / "status.json").read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("job %s: unreadable status.json (%s); marking it interrupted", path.name, exc)
                record = JobRecord(job_id=path.name, state=RUNNING)
            for stray in path.glob(".*.tmp*"):
                stray.unlink(missing_ok=True)
            record.job_id = path.name
            self.records[record.job_id] = record
            if record.state not in TERMINAL_STATES:
                self.finish(record, INTERRUPTED, error=dict(INTERRUPTED_ERROR))
                interrupted.append(record)
        return interrupted

    # ------------------------------------------------------------------ writes
    def create(self, record: JobRecord, image: bytes, request: dict[str, Any]) -> JobRecord:
        """Write the job folder (request, photo, status) under a temporary name, then
        rename it into place: the job exists completely or not at all."""
        record.job_id = record.job_id or new_job_id()
        record.created = record.created or time.time()
        record.image_file = "input" + _image_extension(image)
        final = self.job_dir(record.job_id)
        tmp = self.jobs_dir / f".tmp-{record.job_id}"
        tmp.mkdir()
        try:
            atomic_write_json(tmp / "request.json", request)
            atomic_write_bytes(tmp / record.image_file, image)
            atomic_write_json(tmp / "status.json", self._status(record))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.jobs_dir)
        self.records[record.job_id] = record
        return record

    def save(self, record: JobRecord) -> None:
        atomic_write_json(self.job_dir(record.job_id) / "status.json", self._status(record))

    def start(self, record: JobRecord) -> Path:
        """Mark the job running and make its output folder; returns that folder."""
        out = self.output_dir(record)
        out.mkdir(exist_ok=True)
        record.state, record.started = RUNNING, time.time()
        self.save(record)
        return out

    def finish(
        self,
        record: JobRecord,
        state: str,
        *,
        error: dict[str, str] | None = None,
        n_gaussians: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        if state not in TERMINAL_STATES:
            raise ValueError(f"{state!r} is not a final state")
        record.state, record.finished, record.error = state, time.time(), error
        if n_gaussians is not None:
            record.n_gaussians = n_gaussians
        if metrics is not None:
            record.metrics = metrics
        self.save(record)

    def append_progress(self, job_id: str, event: dict[str, Any]) -> None:
        """One line per event; no fsync (the log is a diagnostic, not the job's state)."""
        with open(self.job_dir(job_id) / "progress.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, allow_nan=False) + "\n")

    def write_result(self, job_id: str, splats: SplatArrays) -> None:
        """result.npz (exact arrays) and result.ply, each atomically. Call before
        :meth:`finish` so that a ``done`` job always has both."""
        d = self.job_dir(job_id)
        tmp = d / f".result.npz.tmp{os.getpid()}"
        arrays: dict[str, Any] = dict(splats.as_dict())
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / "result.npz")
        atomic_write_bytes(d / "result.ply", to_ply_bytes(splats.astype(np.float32), frame="ply"))

    def delete(self, job_id: str) -> int:
        """Remove an ended job and its folder; returns the bytes freed.

        The folder is first renamed to a ``.tmp-`` name: one atomic step after which the job
        is gone, even if removing the files is then cut short (:meth:`recover` removes what a
        crash left behind)."""
        record = self.get(job_id)
        if not record.terminal:
            raise ValueError(f"job {job_id} is {record.state}; only an ended job can be deleted")
        src = self.job_dir(job_id)
        doomed = self.jobs_dir / f".tmp-deleted-{job_id}"
        freed = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(src, doomed)
        fsync_dir(self.jobs_dir)
        del self.records[job_id]
        shutil.rmtree(doomed, ignore_errors=True)
        return freed

    # ------------------------------------------------------------------- reads
    def get(self, job_id: str) -> JobRecord:
        record = self.records.get(job_id) if valid_job_id(job_id) else None
        if record is None:
            raise JobNotFound(job_id)
        return record

    def list(self, limit: int | None = None) -> list[JobRecord]:
        """Newest first."""
        out = sorted(self.records.values(), key=lambda r: (r.created, r.job_id), reverse=True)
        return out if limit is None else out[: max(0, limit)]

    def read_result(self, job_id: str) -> tuple[SplatArrays, bytes]:
        d = self.job_dir(job_id)
        with np.load(d / "result.npz", allow_pickle=False) as data:
            splats = SplatArrays.from_dict({k: data[k] for k in data.files})
        return splats, (d / "result.ply").read_bytes()

    def output_dir(self, record: JobRecord) -> Path:
        """The job's output folder (``<job>/output``): the executor writes the pipeline's
        renders there, so everything a job leaves behind lies in its own folder."""
        return self.job_dir(record.job_id) / OUTPUT_DIR

    def image_path(self, record: JobRecord) -> Path:
        return self.job_dir(record.job_id) / record.image_file

    def _status(self, record: JobRecord) -> dict[str, Any]:
        out = record.to_dict()
        out.pop("progress", None)
        return out


def _image_extension(data: bytes) -> str:
    for magic, ext in IMAGE_EXTENSIONS.items():
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"
