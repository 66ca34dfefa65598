"""The driver loop both runners share: plan -> skip what is finished -> run -> retry -> record.

A runner (:class:`HeadRunner`) only starts heads and says which ended; this loop decides the
rest, the same way locally and on Ray:

- a head whose ``done.json`` fingerprint matches its spec is skipped (a rerun does no work);
  so is a head that failed for good with the same fingerprint, unless ``retry_failed``;
- an outcome that is ``retryable`` (a crash, a lost worker, out of memory, a bug) runs again,
  up to ``max_attempts`` in all; a typed failure a user can act on (no face, a bad option)
  does not, and is recorded in ``OUT/.batch/failed/`` while the batch goes on;
- finished heads are committed atomically as their results arrive (:mod:`.output`);
- one overall progress bar, heads as its unit, with tqdm's ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from . import output
from .head import HeadOutcome
from .plan import HeadSpec

log = logging.getLogger("backend.batch")
DEFAULT_MAX_ATTEMPTS = 3


class HeadRunner(Protocol):
    """Starts heads and reports the ones that ended. ``slots``: heads it runs at once."""

    slots: int
    where: str  # for the log: "local, 1 worker process" / "Ray at ..."

    def submit(self, spec: HeadSpec, photo: bytes) -> Any:
        """Start one head; returns a handle :meth:`wait` gives back with its outcome."""
        ...

    def wait(self, timeout: float) -> list[tuple[Any, HeadOutcome]]:
        """Heads that ended (at least one unless ``timeout`` passed). A head whose worker
        died comes back as a ``worker_crashed`` / ``worker_lost`` outcome, never lost."""
        ...

    def close(self) -> None: ...


@dataclass
class HeadStatus:
    spec: HeadSpec
    fingerprint: str
    state: str = "pending"  # pending | done | failed
    skipped: bool = False  # finished by an earlier run
    attempts: int = 0
    error: dict[str, str] | None = None
    seconds: float = 0.0
    host: str = ""


@dataclass
class BatchReport:
    out: Path
    heads: list[HeadStatus] = field(default_factory=list)
    wall_s: float = 0.0
    ran: int = 0  # heads run (not skipped) in this run
    attempts: int = 0  # head attempts started in this run, retries included

    @property
    def done(self) -> list[HeadStatus]:
        return [h for h in self.heads if h.state == "done"]

    @property
    def failed(self) -> list[HeadStatus]:
        return [h for h in self.heads if h.state == "failed"]


def initial_status(out: Path, specs: list[HeadSpec], retry_failed: bool) -> list[HeadStatus]:
    heads = []
    for spec in specs:
        h = HeadStatus(spec, spec.fingerprint())
        done = output.read_done(out, spec.name)
        failed = output.read_failed(out, spec.name)
        if done is not None and done.get("fingerprint") == h.fingerprint:
            h.state, h.skipped = "done", True
            h.attempts, h.seconds, h.host = (
                int(done.get("attempts", 1)),
                float(done.get("seconds", 0.0)),
                done.get("host", ""),
            )
        elif (
            failed is not None
            and failed.get("fingerprint") == h.fingerprint
            and not failed.get("retryable")
            and not retry_failed
        ):
            h.state, h.skipped, h.error = "failed", True, failed.get("error")
            h.attempts, h.host = int(failed.get("attempts", 1)), failed.get("host", "")
        heads.append(h)
    return heads


def run_batch(
    specs: list[HeadSpec],
    out: Path,
    runner: HeadRunner,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_failed: bool = False,
    quiet: bool = False,
) -> BatchReport:
    t0 = time.perf_counter()
    with output.lock(out):
        output.prepare(out)
        return _run(specs, out, runner, max_attempts, retry_failed, quiet, t0)


def _run(
    specs: list[HeadSpec],
    out: Path,
    runner: HeadRunner,
    max_attempts: int,
    retry_failed: bool,
    quiet: bool,
    t0: float,
) -> BatchReport:
    report = BatchReport(out, initial_status(out, specs, retry_failed))
    todo = deque(h for h in report.heads if h.state == "pending")
    report.ran = len(todo)
    skipped = len(report.heads) - len(todo)
    if not quiet:
        print(
            f"batch: {len(report.heads)} heads, {skipped} finished before, {len(todo)} to run ({runner.where})",
            file=sys.stderr,
        )
    photos: dict[str, bytes] = {}
    in_flight: dict[Any, HeadStatus] = {}
    bar = tqdm(
        total=len(todo), unit="head", desc="batch", disable=quiet or not todo, file=sys.stderr, dynamic_ncols=True
    )
    n_done = n_failed = 0
    try:
        while todo or in_flight:
            while todo and len(in_flight) < runner.slots:
                h = todo.popleft()
                photo = photos.get(h.spec.photo)
                if photo is None:
                    try:
                        photo = photos[h.spec.photo] = Path(h.spec.photo).read_bytes()
                    except OSError as exc:
                        _finish_failed(
                            out,
                            h,
                            HeadOutcome(
                                h.spec.name,
                                False,
                                error={
                                    "code": "bad_image",
                                    "message": f"Cannot read {h.spec.photo}: {exc}",
                                    "hint": "Check the path.",
                                },
                            ),
                        )
                        n_failed += 1
                        bar.update(1)
                        continue
                h.attempts += 1
                report.attempts += 1
                in_flight[runner.submit(h.spec, photo)] = h
            if not in_flight:
                continue
            for handle, outcome in runner.wait(timeout=1.0):
                h = in_flight.pop(handle)
                if outcome.ok:
                    output.commit(out, h.spec, h.fingerprint, outcome, h.attempts)
                    h.state, h.seconds, h.host = "done", outcome.seconds, outcome.host
                    n_done += 1
                elif outcome.retryable and h.attempts < max_attempts:
                    err = outcome.error or {}
                    log.warning(
                        "%s: attempt %d failed (%s: %s); trying again",
                        h.spec.name,
                        h.attempts,
                        err.get("code"),
                        err.get("message"),
                    )
                    if not quiet:
                        bar.write(f"{h.spec.name}: attempt {h.attempts} failed [{err.get('code')}]; retrying")
                    todo.appendleft(h)
                    continue
                else:
                    _finish_failed(out, h, outcome)
                    n_failed += 1
                    if not quiet:
                        err = h.error or {}
                        bar.write(f"{h.spec.name}: failed [{err.get('code')}] {err.get('message')}")
                bar.update(1)
                bar.set_postfix_str(f"{n_done} done, {n_failed} failed", refresh=True)
    finally:
        bar.close()
    report.wall_s = round(time.perf_counter() - t0, 2)
    return report


def _finish_failed(out: Path, h: HeadStatus, outcome: HeadOutcome) -> None:
    output.record_failure(out, h.spec, h.fingerprint, outcome, h.attempts)
    h.state, h.error, h.seconds, h.host = "failed", outcome.error, outcome.seconds, outcome.host
