"""The batch's output folder: one folder per finished head, written atomically, and the
bookkeeping that makes a rerun resume.

    OUT/<name>/            head.ply, metrics.json, turntable/, eval/ and done.json (last in)
    OUT/.batch/failed/     <name>.json for each head that failed for good (its typed error)
    OUT/.batch/tmp/        heads being written; left-overs of a killed driver are removed

A head's folder appears whole or not at all: its files go into a temp folder under OUT (same
filesystem), ``done.json`` last, then one rename. ``done.json`` holds the spec's fingerprint:
a rerun skips a head whose fingerprint matches and remakes one whose recipe changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, Any

from backend.errors import PortraitSplatError

from .head import HeadOutcome
from .plan import HeadSpec

DONE = "done.json"
BOOK = ".batch"


def head_dir(out: Path, name: str) -> Path:
    return out / name


def _failed_path(out: Path, name: str) -> Path:
    return out / BOOK / "failed" / f"{name}.json"


def read_done(out: Path, name: str) -> dict[str, Any] | None:
    try:
        value = json.loads((head_dir(out, name) / DONE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_failed(out: Path, name: str) -> dict[str, Any] | None:
    try:
        value = json.loads(_failed_path(out, name).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class BatchBusyError(PortraitSplatError):
    code = "batch_busy"
    hint = "Wait for the other batch to finish (or stop it), or give this one another --out."


def lock(out: Path) -> IO[str]:
    """Hold ``OUT/.batch/lock`` while this driver runs (released when the returned file is
    closed, or the process ends): two drivers on one OUT would clear each other's temp folders."""
    (out / BOOK).mkdir(parents=True, exist_ok=True)
    fh = open(out / BOOK / "lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise BatchBusyError(f"Another batch is writing to {out} right now.") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def prepare(out: Path) -> None:
    """Create OUT and clear what a killed driver left half-written (call it holding :func:`lock`)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / BOOK / "tmp", ignore_errors=True)
    (out / BOOK / "tmp").mkdir(parents=True, exist_ok=True)
    (out / BOOK / "failed").mkdir(parents=True, exist_ok=True)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def commit(out: Path, spec: HeadSpec, fingerprint: str, outcome: HeadOutcome, attempts: int) -> Path:
    """Write a finished head to ``OUT/<name>/`` in one rename (replacing an older version)."""
    tmp = out / BOOK / "tmp" / f"{spec.name}.{uuid.uuid4().hex[:8]}"
    for rel, data in outcome.files.items():
        target = (tmp / rel).resolve()
        if not target.is_relative_to(tmp.resolve()):
            raise ValueError(f"refusing to write {rel!r} outside the head's folder")
        _write(target, data)
    done = {
        "name": spec.name,
        "fingerprint": fingerprint,
        "spec": spec.to_dict(),
        "attempts": attempts,
        "seconds": outcome.seconds,
        "host": outcome.host,
        "finished": time.time(),
    }
    _write(tmp / DONE, json.dumps(done, indent=1).encode())
    final = head_dir(out, spec.name)
    if final.exists():  # an older recipe's head: move it aside, then swap in the new one
        old = out / BOOK / "tmp" / f"{spec.name}.old.{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _failed_path(out, spec.name).unlink(missing_ok=True)
    return final


def record_failure(out: Path, spec: HeadSpec, fingerprint: str, outcome: HeadOutcome, attempts: int) -> None:
    error = outcome.error or {"code": "internal_error", "message": "unknown failure", "hint": ""}
    record = {
        "name": spec.name,
        "fingerprint": fingerprint,
        "spec": spec.to_dict(),
        "error": error,
        "attempts": attempts,
        "retryable": outcome.retryable,
        "seconds": outcome.seconds,
        "host": outcome.host,
        "finished": time.time(),
    }
    path = _failed_path(out, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
